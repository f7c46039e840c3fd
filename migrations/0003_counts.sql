-- shardfleet schema, version 3: videos counted by shard and status, kept exact by
-- triggers, so `supervisor status`, the monitor and the done check read a few rows
-- instead of counting the whole table. See shared/src/db/counts.rs.

-- The shard layout the counts are kept for: shard = video_id % workers. One row at most.
CREATE TABLE IF NOT EXISTS video_counts_layout (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    workers INTEGER NOT NULL CHECK (workers > 0)
);

-- Videos per (shard, status) under that layout. The triggers below find a row by its
-- rowid, slot = shard * 4 + the status's place in (pending, running, done, failed): a
-- rowid seek in a tiny table costs a third less than a seek on a (shard, status) key,
-- and this runs for every row every claim and finish writes. Readers use the columns.
CREATE TABLE IF NOT EXISTS video_counts (
    slot   INTEGER PRIMARY KEY,
    shard  INTEGER NOT NULL,
    status TEXT    NOT NULL,
    videos INTEGER NOT NULL
);

-- Every write to `videos`, from the fleet or from anyone else (wrangler d1 execute, an
-- app), moves the counts in the same statement. With no layout recorded the slot is
-- NULL and nothing is counted. Not seen: a row INSERT OR REPLACE replaces (SQLite fires
-- no delete trigger for it unless recursive_triggers is on), and negative video ids,
-- which belong to no shard.
CREATE TRIGGER IF NOT EXISTS video_counts_insert
AFTER INSERT ON videos
BEGIN
    UPDATE video_counts SET videos = videos + 1
    WHERE slot = (NEW.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE NEW.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 ELSE 3 END;
END;

CREATE TRIGGER IF NOT EXISTS video_counts_update
AFTER UPDATE OF status, video_id ON videos
WHEN OLD.status <> NEW.status OR OLD.video_id <> NEW.video_id
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE slot = (OLD.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE OLD.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 ELSE 3 END;
    UPDATE video_counts SET videos = videos + 1
    WHERE slot = (NEW.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE NEW.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 ELSE 3 END;
END;

CREATE TRIGGER IF NOT EXISTS video_counts_delete
AFTER DELETE ON videos
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE slot = (OLD.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE OLD.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 ELSE 3 END;
END;

-- Start with layout 1 (totals), counted now, so that totals are kept before any fleet
-- ran; a fleet of N workers recounts for N once, when it starts.
INSERT INTO video_counts_layout (id, workers) VALUES (1, 1);
INSERT INTO video_counts (slot, shard, status, videos)
VALUES (0, 0, 'pending', 0), (1, 0, 'running', 0), (2, 0, 'done', 0), (3, 0, 'failed', 0);
UPDATE video_counts SET videos = c.n
FROM (SELECT status, count(*) AS n FROM videos GROUP BY status) AS c
WHERE video_counts.status = c.status;
