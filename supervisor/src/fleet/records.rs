//! The supervisor's bookkeeping writes (worker slots, events, the run's state), done by
//! a task of their own so that a database held up by a long lock never stalls the loop
//! that samples memory and checks health. Updates of one slot that pile up while the
//! database is busy collapse into the latest.

use std::collections::BTreeMap;

use shared::db::Db;
use shared::db::fleet::{self, FleetWorker};
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum Record {
    Worker(FleetWorker),
    Event { worker: u32, kind: EventKind, reason: String },
    RunState { state: &'static str, stopped: bool },
}

/// What happened to a worker, as the run's events list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It ended unexpectedly and restarts after a backoff.
    Restart,
    /// It crashed too often and rests for the cooldown.
    Errored,
    /// It crashed while the fleet was stopping.
    Crash,
    /// The supervisor killed it while the fleet was stopping.
    Kill,
    /// The sampler killed one of its handlers; the worker carried on.
    MemoryKill,
}

impl EventKind {
    /// The name kept in the events table and shown by `supervisor status`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Restart => "restart",
            EventKind::Errored => "errored",
            EventKind::Crash => "crash",
            EventKind::Kill => "kill",
            EventKind::MemoryKill => "memory_kill",
        }
    }
}

/// Starts the writer for run `run_id`; it ends when every sender is dropped, after
/// writing what it was sent.
pub fn start(db: Db, run_id: i64) -> (mpsc::UnboundedSender<Record>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let task = tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut latest: BTreeMap<i64, FleetWorker> = BTreeMap::new();
            for record in batch.drain(..) {
                let written = match record {
                    Record::Worker(w) => {
                        latest.insert(w.worker_id, w);
                        Ok(())
                    }
                    Record::Event { worker, kind, reason } => {
                        fleet::add_event(db.pool(), run_id, worker, kind.name(), &reason).await
                    }
                    Record::RunState { state, stopped } => {
                        fleet::set_run_state(db.pool(), run_id, state, stopped).await
                    }
                };
                if let Err(e) = written {
                    tracing::warn!("could not record the fleet's state: {e}");
                }
            }
            for w in latest.values() {
                if let Err(e) = fleet::update_worker(db.pool(), w).await {
                    tracing::warn!("could not record worker {}: {e}", w.worker_id);
                }
            }
        }
    });
    (tx, task)
}
