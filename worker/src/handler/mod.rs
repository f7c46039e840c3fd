//! Handlers: what runs one video. Exactly one is configured per worker.

mod exec;
mod http;
mod pacer;
mod sleep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared::config::{HandlerArgs, JobArgs};
use shared::status::Outcome;
use shared::storage::Claimed;
use tokio_util::sync::CancellationToken;

use crate::memory::MemoryKills;

pub use exec::{ExecHandler, STDERR_TAIL, STDOUT_LIMIT};
pub use http::HttpHandler;
pub use pacer::{PaceReport, Pacer, work_share};
pub use sleep::SleepHandler;

/// One video as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    pub attempt: u32,
    pub worker_id: u32,
}

impl Job {
    pub fn new(c: &Claimed, worker_id: u32) -> Job {
        Job {
            video_id: c.video_id,
            source: c.source.clone(),
            payload: c.payload.clone(),
            attempt: c.attempt,
            worker_id,
        }
    }
}

/// How a handler run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    /// Success: `output` is the result to store; `warnings` what the handler said on the
    /// side (an exec handler's stderr tail), None when it said nothing.
    Success { output: String, warnings: Option<String> },
    /// A failed attempt: it is retried while attempts are left.
    Failure { outcome: Outcome, error: String },
    /// The worker stopped the job (shutdown past its grace, a second signal, or the
    /// worker leaving because its supervisor died). The video is handed back without
    /// counting the attempt; nothing about it is written.
    Cancelled,
}

impl JobResult {
    /// Success from a handler with no side channel for warnings.
    pub fn success(output: impl Into<String>) -> JobResult {
        JobResult::Success { output: output.into(), warnings: None }
    }

    pub fn error(msg: impl Into<String>) -> JobResult {
        JobResult::Failure { outcome: Outcome::Error, error: msg.into() }
    }
}

/// Set, never cleared, once the worker is going away without draining (its supervisor
/// died): from then on the worker itself ends jobs, and no ending is a handler's failure.
static LEAVING: AtomicBool = AtomicBool::new(false);

/// Marks the worker as leaving, then kills every running handler's process group. The
/// mark comes first: a job that sees its handler die of our SIGKILL must already see it,
/// so that it reports `Cancelled` (see `crate::pool`), never a failed attempt.
pub fn abandon_all() {
    LEAVING.store(true, Ordering::SeqCst);
    exec::kill_live_groups();
}

/// Whether the worker is leaving (`abandon_all` ran): jobs ending now were ended by it.
pub fn leaving() -> bool {
    LEAVING.load(Ordering::SeqCst)
}

/// The configured handler.
#[derive(Debug)]
pub enum Handler {
    Exec(ExecHandler),
    Http(HttpHandler),
    Sleep(SleepHandler),
}

impl Handler {
    /// Builds the handler the flags ask for, or says what is wrong with them.
    pub fn from_args(h: &HandlerArgs, job: &JobArgs, memory: Arc<MemoryKills>) -> Result<Handler, String> {
        match (&h.exec, &h.http, &h.sleep) {
            (Some(cmd), _, _) => Ok(Handler::Exec(ExecHandler::new(cmd, memory)?)),
            (_, Some(url), _) => {
                let pacer = Arc::new(Pacer::new(job.rate, job.min_delay));
                Ok(Handler::Http(HttpHandler::new(url, h.ca_cert.as_deref(), pacer)?))
            }
            (_, _, Some(range)) => Ok(Handler::Sleep(SleepHandler::new(*range))),
            _ => Err("choose a handler: --exec CMD, --http URL or --sleep DURATION".into()),
        }
    }

    /// The pacer of an HTTP handler, whose pace `/status` and `/metrics` report.
    pub fn pacer(&self) -> Option<Arc<Pacer>> {
        match self {
            Handler::Http(h) => Some(h.pacer().clone()),
            _ => None,
        }
    }

    /// Runs one video, giving up after `timeout` and when `cancel` fires. When `drain`
    /// fires, a job still waiting to start its work hands its video back (`Cancelled`):
    /// only the http handler waits before its work (for the pacer, or a Retry-After);
    /// the others start at once, and a drain lets started work finish.
    pub async fn run(
        &self,
        job: &Job,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        drain: &CancellationToken,
    ) -> JobResult {
        // The exec and http futures are large (I/O state, buffers) and are boxed, so
        // that every job's future stays small: the pool moves one per video.
        match self {
            // The exec handler enforces the timeout itself: it must kill a process group.
            Handler::Exec(h) => Box::pin(h.run(job, timeout, cancel)).await,
            Handler::Http(h) => Box::pin(with_timeout(h.run(job, cancel, drain), timeout)).await,
            Handler::Sleep(h) => with_timeout(h.run(cancel), timeout).await,
        }
    }
}

async fn with_timeout(fut: impl Future<Output = JobResult>, timeout: Option<Duration>) -> JobResult {
    match timeout {
        None => fut.await,
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => JobResult::Failure {
                outcome: Outcome::Timeout,
                error: format!("timed out after {}", shared::units::format_duration(t)),
            },
        },
    }
}
