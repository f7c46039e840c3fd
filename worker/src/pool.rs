//! Running jobs: one task owns every job in flight and polls them together.
//!
//! Handlers only wait (on a child process, a socket or a timer), so one task can drive
//! thousands of them. Batches go in and come out: a claimed batch is one message in,
//! and every job that has ended by the time the pool looks is one message out. At tens
//! of thousands of videos a second, a task and a wake-up per job cost more than SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use shared::storage::{Claimed, now_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handler::{Handler, Job, JobResult};

/// A job that ended, on its way to the database.
#[derive(Debug)]
pub struct Ended {
    pub claimed: Claimed,
    pub result: JobResult,
    pub duration: Duration,
    pub finished_at: i64,
}

/// The runner's side of the pool.
pub struct Pool {
    submit: mpsc::UnboundedSender<Vec<Claimed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pool {
    /// Starts the pool. Ended jobs arrive on `ended`; `kill` stops every job in flight
    /// (they end as `JobResult::Cancelled`); `drain` hands back the jobs that are only
    /// waiting to start their work (see `Handler::run`).
    pub fn start(
        handler: Arc<Handler>,
        worker_id: u32,
        timeout: Option<Duration>,
        kill: CancellationToken,
        drain: CancellationToken,
        ended: mpsc::UnboundedSender<Vec<Ended>>,
    ) -> Pool {
        let (submit, jobs) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(handler, worker_id, timeout, Stops { kill, drain }, jobs, ended));
        Pool { submit, task }
    }

    pub fn submit(&self, batch: Vec<Claimed>) {
        // The pool task only ends after `close`, so the send cannot fail before it.
        let _ = self.submit.send(batch);
    }

    /// Stops taking jobs and waits until every job in flight has ended.
    pub async fn close(self) {
        drop(self.submit);
        let _ = self.task.await;
    }
}

/// The two ways the runner ends jobs early.
#[derive(Clone)]
struct Stops {
    kill: CancellationToken,
    drain: CancellationToken,
}

async fn drive(
    handler: Arc<Handler>,
    worker_id: u32,
    timeout: Option<Duration>,
    stops: Stops,
    mut jobs: mpsc::UnboundedReceiver<Vec<Claimed>>,
    ended: mpsc::UnboundedSender<Vec<Ended>>,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            batch = jobs.recv(), if open => match batch {
                Some(batch) => {
                    for claimed in batch {
                        running.push(run_one(handler.clone(), claimed, worker_id, timeout, stops.clone()));
                    }
                }
                None => open = false,
            },
            Some(first) = running.next(), if !running.is_empty() => {
                let mut out = vec![first];
                // Take whatever else has ended too, without waiting.
                while let Some(Some(e)) = running.next().now_or_never() {
                    out.push(e);
                }
                // The runner outlives the pool; a failed send means it is gone.
                let _ = ended.send(out);
            }
        }
    }
}

async fn run_one(
    handler: Arc<Handler>,
    claimed: Claimed,
    worker_id: u32,
    timeout: Option<Duration>,
    stops: Stops,
) -> Ended {
    let job = Job::new(&claimed, worker_id);
    let started = Instant::now();
    let result = match handler.run(&job, timeout, &stops.kill, &stops.drain).await {
        // The worker is leaving and killed the handler itself ("killed by signal
        // SIGKILL"): not the handler's failure, and not an attempt to count.
        JobResult::Failure { .. } if crate::handler::leaving() => JobResult::Cancelled,
        result => result,
    };
    Ended { claimed, result, duration: started.elapsed(), finished_at: now_ms() }
}
