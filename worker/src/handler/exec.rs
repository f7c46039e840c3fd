//! `--exec CMD`: runs a program per video, in its own process group.
//!
//! The command line is split into words once, at start; placeholders are replaced inside
//! each word, so a source like `x; rm -rf /` is one argument and no shell ever parses
//! it. The process group lets a timeout or shutdown kill everything the handler started,
//! grandchildren included.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use shared::process::kill_group;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Job, JobResult};
use crate::memory::MemoryKills;
use shared::status::Outcome;
use shared::units::format_duration;

/// Most a handler may write to stdout; its stdout becomes the stored result.
pub const STDOUT_LIMIT: usize = 1 << 20;
/// How much of stderr's end is kept: in the error of a failed attempt, and as the
/// warnings of a successful one. 2 KiB holds the last twenty-odd lines of a tool's
/// diagnostics (ffmpeg's "File ended prematurely" and what led to it), while a handler
/// that chats on every video adds at most that much to its row and to each attempt's.
pub const STDERR_TAIL: usize = 2048;

#[derive(Debug)]
pub struct ExecHandler {
    words: Vec<String>,
    memory: Arc<MemoryKills>,
}

impl ExecHandler {
    pub fn new(cmd: &str, memory: Arc<MemoryKills>) -> Result<ExecHandler, String> {
        let words = shell_words::split(cmd).map_err(|e| format!("--exec {cmd:?} cannot be split into words: {e}"))?;
        if words.is_empty() {
            return Err("--exec needs a command".into());
        }
        Ok(ExecHandler { words, memory })
    }

    /// The argv for one job, placeholders replaced.
    pub fn argv(&self, job: &Job) -> Vec<String> {
        self.words
            .iter()
            .map(|w| {
                w.replace("{video_id}", &job.video_id.to_string())
                    .replace("{attempt}", &job.attempt.to_string())
                    .replace("{worker_id}", &job.worker_id.to_string())
                    // Last, so a source containing "{attempt}" stays literal.
                    .replace("{source}", &job.source)
            })
            .collect()
    }

    pub async fn run(&self, job: &Job, timeout: Option<Duration>, cancel: &CancellationToken) -> JobResult {
        let argv = self.argv(job);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("VIDEO_ID", job.video_id.to_string())
            .env("VIDEO_SOURCE", &job.source)
            .env("ATTEMPT", job.attempt.to_string())
            .env("WORKER_ID", job.worker_id.to_string())
            // The control token is the supervisor's and the worker's, not the handler's.
            .env_remove("FLEET_CONTROL_TOKEN")
            // systemd's notify socket and watchdog are the worker's: a handler that spoke
            // to them would speak for the worker (`crate::notify`).
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // No parent-death signal here: any pre-exec hook makes the standard library fork
        // instead of posix_spawn, which cost 45% of `--exec /bin/true` throughput. When the
        // supervisor dies the worker ends its handlers itself (`crate::orphan`); a handler
        // outliving a SIGKILLed worker is killed by the supervisor (its cgroup, or the
        // process groups it last sampled), or by systemd/Kubernetes.
        let oom_before = self.memory.oom_count();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return JobResult::error(format!("cannot start {:?}: {e}", argv[0])),
        };
        // From here on, whatever happens to this task, the group dies with it.
        let _group = child.id().map(GroupGuard::new);

        let payload = job.payload.clone().unwrap_or_default();
        let mut stdin = child.stdin.take();
        let feed = async move {
            if let Some(s) = stdin.as_mut() {
                // A handler that does not read stdin closes it: not an error.
                let _ = s.write_all(payload.as_bytes()).await;
            }
            drop(stdin);
        };
        let stdout = read_capped(child.stdout.take(), STDOUT_LIMIT);
        let stderr = read_tail(child.stderr.take(), STDERR_TAIL);
        let pgid = child.id();
        let run = async {
            let readers = async { tokio::join!(feed, stdout, stderr) };
            let exited = async {
                let status = child.wait().await;
                // Stray background processes die with the handler; that also closes
                // the pipes they inherited, so the readers reach EOF.
                if let Some(pgid) = pgid {
                    kill_group(pgid);
                }
                status
            };
            let ((_, out, err), status) = tokio::join!(readers, exited);
            (status, out, err)
        };

        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let (status, out, err) = tokio::select! {
            r = run => r,
            _ = deadline => {
                let t = timeout.unwrap_or_default();
                return JobResult::Failure { outcome: Outcome::Timeout, error: format!("timed out after {}; killed its process group", format_duration(t)) };
            }
            _ = cancel.cancelled() => return JobResult::Cancelled,
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => return JobResult::error(format!("waiting for the handler failed: {e}")),
        };
        let stderr_tail = tail_text(&err);
        let (stdout, overflow) = out;
        if status.success() {
            if overflow {
                return JobResult::error(format!("handler wrote more than {} bytes to stdout", STDOUT_LIMIT));
            }
            return JobResult::Success {
                output: String::from_utf8_lossy(&stdout).trim_end().to_string(),
                warnings: Some(stderr_tail).filter(|t| !t.is_empty()),
            };
        }
        // Killed by SIGKILL, or a shell wrapper reporting its child's SIGKILL as 137: if the
        // supervisor announced a memory kill of this group, or the cgroup saw an OOM kill
        // while it ran, it was the memory limit. Other failures keep their own error even
        // when another job of this worker was OOM-killed meanwhile.
        let sigkilled = status.signal() == Some(Signal::SIGKILL as i32) || status.code() == Some(128 + 9);
        if sigkilled && let Some(reason) = pgid.and_then(|g| self.memory.explain(g, oom_before)) {
            return JobResult::Failure { outcome: Outcome::Memory, error: reason };
        }
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (_, Some(sig)) => format!("killed by signal {}", Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?")),
            _ => "ended abnormally".to_string(),
        };
        let error = if stderr_tail.is_empty() { how } else { format!("{how}: {stderr_tail}") };
        JobResult::error(error)
    }
}

/// Process groups of the handlers running now, so that a worker whose supervisor died
/// can end them before it exits (see `crate::orphan`).
static LIVE_GROUPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every handler's process group that is running now, and any started later.
/// `super::abandon_all` marks the worker as leaving first; a group registered after
/// this ran sees that mark under the same lock and is killed at once.
pub(super) fn kill_live_groups() {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    for &g in groups.iter() {
        kill_group(g);
    }
}

/// Kills a handler's whole process group when dropped: on success (stray background
/// processes), on timeout, on cancellation, and if the job task is aborted.
struct GroupGuard(u32);

impl GroupGuard {
    fn new(pgid: u32) -> GroupGuard {
        let mut groups = LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        groups.push(pgid);
        // Started while the worker was already leaving: `kill_live_groups` may have
        // run before we took the lock, so end it here.
        if super::leaving() {
            kill_group(pgid);
        }
        GroupGuard(pgid)
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
        LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|&g| g != self.0);
    }
}

/// Reads up to `limit` bytes; returns them and whether more was written. Keeps draining
/// past the limit so the handler does not block on a full pipe.
async fn read_capped(r: Option<impl AsyncRead + Unpin>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut r) = r else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut overflow = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.len() + n > limit {
                    overflow = true;
                    let room = limit - out.len();
                    out.extend_from_slice(&buf[..room]);
                } else {
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    (out, overflow)
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(r: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut tail = Vec::with_capacity(2 * keep);
    let mut buf = vec![0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                // Cut back only once it holds twice the tail, so a handler that writes
                // megabytes costs one copy of `keep` bytes per `keep` bytes written.
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    tail.drain(..tail.len().saturating_sub(keep));
    tail
}

/// A stderr tail as text, trimmed. Its first bytes may be the end of a character the
/// cut went through: they are dropped rather than shown as a replacement character.
fn tail_text(bytes: &[u8]) -> String {
    let torn = bytes.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count();
    String::from_utf8_lossy(&bytes[torn..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Arc<MemoryKills> {
        Arc::new(MemoryKills::detect(None))
    }

    fn job(source: &str) -> Job {
        Job { video_id: 7, source: source.into(), payload: None, attempt: 2, worker_id: 1 }
    }

    #[test]
    fn placeholders_are_replaced_inside_words_and_sources_stay_one_word() {
        let h = ExecHandler::new("echo v={video_id} '{source}' a{attempt}w{worker_id}", memory()).unwrap();
        assert_eq!(h.argv(&job("x; rm -rf /")), ["echo", "v=7", "x; rm -rf /", "a2w1"]);
        assert_eq!(h.argv(&job("{attempt}")), ["echo", "v=7", "{attempt}", "a2w1"]);
    }

    #[tokio::test]
    async fn a_long_stderr_keeps_its_last_bytes_and_a_torn_character_is_dropped() {
        // Two bytes each, then an odd number of bytes: the cut lands inside an é.
        let mut written = "é".repeat(STDERR_TAIL);
        written.push_str("\nFile ended prematurely");
        let tail = read_tail(Some(written.as_bytes()), STDERR_TAIL).await;
        assert_eq!(tail.len(), STDERR_TAIL);
        assert_eq!(tail[..], written.as_bytes()[written.len() - STDERR_TAIL..]);
        let text = tail_text(&tail);
        assert!(text.ends_with("é\nFile ended prematurely"), "{text}");
        assert!(!text.contains('\u{FFFD}'), "the cut went through an é; its half is dropped");
        assert_eq!(text.len(), STDERR_TAIL - 1, "only the torn byte is gone");
    }

    #[test]
    fn whitespace_only_stderr_is_no_warning() {
        assert_eq!(tail_text(b" \n\t\n"), "");
        assert_eq!(tail_text(b"  warn: odd frame\n"), "warn: odd frame");
    }

    #[test]
    fn an_unbalanced_quote_is_a_clear_error() {
        let e = ExecHandler::new("echo 'oops", memory()).unwrap_err();
        assert!(e.contains("cannot be split"), "{e}");
    }
}
