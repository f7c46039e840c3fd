#!/bin/sh
# A sample handler for shardfleet: "analyses" one video.
#
#   supervisor start ... --exec 'examples/analyse.sh {video_id} {source}'
#
# Arguments arrive as separate words (no shell parses the video's data); the payload
# JSON arrives on stdin. Whatever this prints on stdout becomes the video's result;
# exit 0 means success, anything else a failed attempt (stderr is kept as the error).
set -eu
video_id=$1
source=$2
payload=$(cat)

# Pretend to work for 50-250 ms.
sleep "$(printf '0.%02d' $(( (video_id * 37) % 20 + 5 )))"

# Every 25th video fails on its first attempt, to show retries at work.
if [ $(( video_id % 25 )) -eq 0 ] && [ "${ATTEMPT:-1}" -eq 1 ]; then
    echo "transient: could not fetch $source" >&2
    exit 75
fi

chars=$(printf %s "$payload" | wc -c | tr -d ' ')
checksum=$(printf %s "$source" | cksum | cut -d' ' -f1)
printf '{"video_id":%s,"payload_bytes":%s,"source_checksum":%s,"worker":%s}\n' \
    "$video_id" "$chars" "$checksum" "${WORKER_ID:-0}"
