//! The workers' output: every line a worker prints goes, timestamped, to its own log
//! file and to the supervisor's stdout as one merged stream prefixed `[worker-K]` (with
//! `--log-format json`, as one JSON object per line instead). One task owns both, so
//! lines never interleave mid-line.

use std::io::Write;
use std::path::PathBuf;

use shared::logging::{LogFormat, plain_line};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tracing_appender::non_blocking::NonBlocking;

use crate::logs::{LogFile, log_path};

/// One line a worker printed.
#[derive(Debug)]
pub struct LogLine {
    pub worker: u32,
    pub text: String,
    /// From its stderr: a line that is not JSON there is an error of the worker's.
    pub stderr: bool,
}

/// Opens the log files and starts the task that writes them.
/// `out` is the supervisor's non-blocking stdout: a reader that stops reading costs
/// lines on the console (the log files keep them), never a stalled fleet.
pub fn start(
    dir: PathBuf,
    ids: &shared::ids::WorkerIds,
    max_bytes: u64,
    keep: u32,
    format: LogFormat,
    mut out: NonBlocking,
) -> anyhow::Result<(mpsc::UnboundedSender<LogLine>, tokio::task::JoinHandle<()>)> {
    // This supervisor's workers' files only (`--worker-ids`): another host's ids log there.
    let mut files = std::collections::BTreeMap::new();
    for k in ids.iter() {
        let path = log_path(&dir, k);
        let file = LogFile::open(path.clone(), max_bytes, keep)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        // The file, and whether a write to it has failed (said once).
        files.insert(k, (file, false));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
    let task = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let ts = shared::time_fmt::timestamp_ms(shared::storage::now_ms());
            let k = line.worker;
            // A worker id this run did not start with (`supervisor scale` added it).
            if let std::collections::btree_map::Entry::Vacant(slot) = files.entry(k) {
                match LogFile::open(log_path(&dir, k), max_bytes, keep) {
                    Ok(file) => {
                        slot.insert((file, false));
                    }
                    Err(e) => tracing::error!("cannot open worker {k}'s log file: {e}"),
                }
            }
            if let Some((file, failed)) = files.get_mut(&k)
                && let Err(e) = file.write_line(&format!("{ts} {}\n", line.text))
                && !*failed
            {
                *failed = true;
                tracing::error!("cannot write worker {k}'s log file: {e}");
            }
            // One write per line: the merged stream stays line-atomic.
            let _ = out.write_all(console_line(format, &ts, &line).as_bytes());
        }
    });
    Ok((tx, task))
}

/// A worker's line as the merged console stream shows it: prefixed for text; for JSON,
/// as the worker wrote it when it is a JSON object (it names its worker), else wrapped
/// in one (a worker's own fatal error, a handler's stray output).
fn console_line(format: LogFormat, ts: &str, line: &LogLine) -> String {
    match format {
        LogFormat::Text => format!("{ts} [worker-{}] {}\n", line.worker, line.text),
        LogFormat::Json
            if line.text.starts_with('{')
                && serde_json::from_str::<serde_json::Value>(&line.text).is_ok_and(|v| v.is_object()) =>
        {
            format!("{}\n", line.text)
        }
        LogFormat::Json => {
            let level = if line.stderr { "ERROR" } else { "INFO" };
            format!("{}\n", plain_line(format, level, Some(line.worker), &line.text))
        }
    }
}

/// Forwards a worker's stdout and stderr, line by line, until they close.
pub fn forward(
    worker: u32,
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    tx: mpsc::UnboundedSender<LogLine>,
) {
    if let Some(s) = stdout {
        tokio::spawn(pump(worker, s, false, tx.clone()));
    }
    if let Some(s) = stderr {
        tokio::spawn(pump(worker, s, true, tx));
    }
}

async fn pump(worker: u32, stream: impl AsyncRead + Unpin, stderr: bool, tx: mpsc::UnboundedSender<LogLine>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        if tx.send(LogLine { worker, text, stderr }).is_err() {
            return;
        }
    }
}
