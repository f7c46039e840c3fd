//! The supervisor's bookkeeping writes (worker slots, events, the run's state), done by
//! a task of their own so that a database held up by a long lock never stalls the loop
//! that samples memory and checks health. Updates of one slot that pile up while the
//! database is busy collapse into the latest.

use super::db_watch::DbWatch;
use std::collections::BTreeMap;
use std::fmt;

use shared::storage::{EventKind, FleetRun, FleetWorker, RunState, Store};
use shared::time_fmt::timestamp_ms;
use tokio::sync::mpsc;

use super::exit_cause::ExitCause;

#[derive(Debug)]
pub enum Record {
    Worker(FleetWorker),
    Event {
        worker: u32,
        kind: EventKind,
        reason: String,
    },
    RunState {
        state: RunState,
        stopped: bool,
    },
    /// The run re-partitioned (`supervisor scale`): its new size and ids, from now. In
    /// this queue, so that the old slots' last records land before the new slots' rows.
    Layout(Box<FleetRun>),
}

/// A kill or restart of this run: recorded as an event, and listed in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub at_ms: i64,
    pub worker: u32,
    pub kind: EventKind,
    /// Its words, as the event keeps them.
    pub reason: String,
    /// Whether the memory limit ended the worker itself (not one of its handlers).
    pub worker_memory_kill: bool,
}

impl Incident {
    /// Worker `worker` ended for `cause`.
    pub fn exit(at_ms: i64, worker: u32, kind: EventKind, cause: &ExitCause) -> Incident {
        Incident { at_ms, worker, kind, reason: cause.to_string(), worker_memory_kill: cause.is_memory() }
    }

    /// The sampler killed one of worker `worker`'s handlers for `reason`.
    pub fn handler_memory_kill(at_ms: i64, worker: u32, reason: String) -> Incident {
        Incident { at_ms, worker, kind: EventKind::MemoryKill, reason, worker_memory_kill: false }
    }
}

/// The incident's line in the run summary.
impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (clock, k, reason) = (timestamp_ms(self.at_ms), self.worker, &self.reason);
        match self.kind {
            EventKind::Restart => write!(f, "{clock} worker {k}: {reason}"),
            EventKind::Errored => write!(f, "{clock} worker {k}: {reason}; marked errored"),
            EventKind::Crash | EventKind::Kill => write!(f, "{clock} worker {k}: {reason} (while stopping)"),
            EventKind::MemoryKill => write!(f, "{clock} worker {k}: handler {reason}"),
        }
    }
}

/// Writes the latest record of each worker slot. While the database is away the first
/// record is the writer's try at it (in this task, so the loop never waits on it), and
/// the rest wait: each is a latest state, and the next one written replaces it.
async fn write_workers(db: &Store, latest: BTreeMap<i64, FleetWorker>, watch: &DbWatch) {
    for w in latest.values() {
        match db.update_worker(w).await {
            Ok(()) => watch.answered(),
            Err(e) if watch.failed(&e) => return,
            Err(e) => tracing::warn!("could not record worker {}: {e}", w.worker_id),
        }
    }
}

/// Most events kept through an outage; past it, the newest are dropped.
const HELD_EVENTS: usize = 1000;

/// Starts the writer for run `run_id`; it ends when every sender is dropped, after
/// writing what it was sent.
pub fn start(db: Store, run_id: i64, watch: DbWatch) -> (mpsc::UnboundedSender<Record>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let task = tokio::spawn(async move {
        let mut batch = Vec::new();
        // Events an outage kept from being written, oldest first: tried again before the
        // next batch (a worker's record needs no such care: the loop sends it anew each
        // second).
        let mut held: Vec<Record> = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut latest: BTreeMap<i64, FleetWorker> = BTreeMap::new();
            let records: Vec<Record> = std::mem::take(&mut held).into_iter().chain(batch.drain(..)).collect();
            for record in records {
                let written = match record {
                    Record::Worker(w) => {
                        latest.insert(w.worker_id, w);
                        continue;
                    }
                    Record::Event { worker, kind, reason } if watch.is_away() => {
                        // Each try would wait out the connect limit: the heartbeat tries.
                        if held.len() < HELD_EVENTS {
                            held.push(Record::Event { worker, kind, reason });
                        }
                        continue;
                    }
                    Record::Event { worker, kind, reason } => {
                        let written = db.add_event(run_id, worker, kind, &reason).await;
                        if written.as_ref().is_err_and(|e| e.outage().is_some()) && held.len() < HELD_EVENTS {
                            held.push(Record::Event { worker, kind, reason });
                        }
                        written
                    }
                    Record::RunState { state, stopped } => db.set_run_state(run_id, state, stopped).await,
                    Record::Layout(run) => {
                        write_workers(&db, std::mem::take(&mut latest), &watch).await;
                        // Tried until it lands: the heartbeat passes a scale request on
                        // once, and a run whose record kept the old size would mislead
                        // status, takeovers and the waiting `supervisor scale`.
                        let mut tries = 0;
                        loop {
                            match db.rescaled(&run, shared::storage::now_ms()).await {
                                Err(e) if tries < 30 => {
                                    tries += 1;
                                    tracing::warn!("could not record the new layout ({e}); trying again");
                                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                                }
                                done => break done,
                            }
                        }
                    }
                };
                match written {
                    Ok(_) => watch.answered(),
                    Err(e) if watch.failed(&e) => {}
                    Err(e) => tracing::warn!("could not record the fleet's state: {e}"),
                }
            }
            write_workers(&db, latest, &watch).await;
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared::units::ByteSize;

    use super::*;

    const AT: i64 = 1_700_000_000_000;

    #[test]
    fn each_incident_reads_in_the_summary_as_before() {
        let clock = timestamp_ms(AT);
        let lines = [
            (Incident::exit(AT, 1, EventKind::Restart, &ExitCause::Code(1)), format!("{clock} worker 1: exit code 1")),
            (
                Incident::exit(AT, 0, EventKind::Errored, &ExitCause::Code(2)),
                format!("{clock} worker 0: exit code 2; marked errored"),
            ),
            (
                Incident::exit(AT, 2, EventKind::Kill, &ExitCause::GraceOver),
                format!("{clock} worker 2: did not stop within the grace period (while stopping)"),
            ),
            (
                Incident::handler_memory_kill(AT, 3, "killed by the memory limit".into()),
                format!("{clock} worker 3: handler killed by the memory limit"),
            ),
        ];
        for (incident, line) in lines {
            assert_eq!(incident.to_string(), line);
        }
    }

    #[test]
    fn only_the_memory_limit_ending_the_worker_counts_as_a_worker_memory_kill() {
        let limit = ByteSize(250 << 20);
        assert!(Incident::exit(AT, 0, EventKind::Restart, &ExitCause::KernelOom { limit }).worker_memory_kill);
        let sampled = ExitCause::SampledOverLimit { tree: 300 << 20, limit };
        assert!(Incident::exit(AT, 0, EventKind::Kill, &sampled).worker_memory_kill);
        let silent = ExitCause::Unhealthy { silent_for: Duration::from_secs(11) };
        assert!(!Incident::exit(AT, 0, EventKind::Restart, &silent).worker_memory_kill);
        assert!(!Incident::handler_memory_kill(AT, 0, "memory limit".into()).worker_memory_kill);
    }
}
