//! The supervisor's records, as types: a run, its worker slots, its events and layouts,
//! and the words they keep (run states, slot states, event kinds). `storage::fleet`
//! reads and writes them; `supervisor status`, `stop`, `scale` and the monitor read
//! them.

use serde::{Deserialize, Serialize};

pub use crate::words::UnknownWord;
use crate::words::words;

words! {
    /// Where a run is in its life.
    RunState("run state") {
        Running => "running",
        /// Its workers are finishing or handing back what they hold.
        Stopping => "stopping",
        /// Stopped on request (or a batch stopped before the work was done).
        Stopped => "stopped",
        /// A batch run whose every video is done.
        Done => "done",
        /// A batch run that ended with failed videos.
        Failed => "failed",
        /// A batch run that ended with work only errored workers could do.
        Errored => "errored",
        /// Its supervisor died without stopping; a later start recovered it.
        Crashed => "crashed",
        /// It ended because the database file is damaged.
        Damaged => "damaged",
    }
}

impl RunState {
    /// Whether the run's supervisor was (last seen) driving it.
    pub fn is_live(self) -> bool {
        matches!(self, RunState::Running | RunState::Stopping)
    }
}

words! {
    /// A worker slot's state, as its record shows it.
    SlotStatus("worker slot state") {
        Starting => "starting",
        /// Started longer ago than `--ready-timeout` and still not answering `/health`.
        NotReady => "not-ready",
        Running => "running",
        /// Waiting to restart after a crash.
        Backoff => "backoff",
        /// Crashed too often; resting for the cooldown.
        Errored => "errored",
        Stopped => "stopped",
        /// Drained on request (`POST /drain`): exited 0, and not started again until
        /// resumed.
        Drained => "drained",
    }
}

words! {
    /// What happened to a worker, as the run's events list it.
    EventKind("event kind") {
        /// It ended unexpectedly and restarts after a backoff.
        Restart => "restart",
        /// It crashed too often and rests for the cooldown.
        Errored => "errored",
        /// It crashed while the fleet was stopping.
        Crash => "crash",
        /// The supervisor killed it while the fleet was stopping.
        Kill => "kill",
        /// The sampler killed one of its handlers; the worker carried on.
        MemoryKill => "memory_kill",
    }
}

/// One `supervisor start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRun {
    pub run_id: i64,
    pub supervisor_pid: i64,
    pub host: Option<String>,
    pub started_at: i64,
    pub stopped_at: Option<i64>,
    pub state: RunState,
    pub workers: i64,
    pub base_port: i64,
    pub bind: String,
    pub mem_limit_bytes: Option<i64>,
    pub mem_enforce: String,
    pub handler: String,
    pub concurrency: i64,
    pub log_dir: Option<String>,
    #[serde(skip)]
    pub control_token: Option<String>,
    /// The worker ids this run starts (`--worker-ids`); None: all of them. Read with
    /// [`FleetRun::ids`]. (Absent in databases from before migration 0005.)
    pub worker_ids: Option<String>,
    /// When its supervisor last said it is alive.
    pub heartbeat_at: Option<i64>,
    /// When `supervisor stop` asked it to stop.
    pub stop_requested_at: Option<i64>,
    /// Where other hosts reach its workers (`--advertise`), if not at `bind`.
    pub advertise: Option<String>,
}

impl FleetRun {
    /// A running run of `workers` slots from `base_port`, bound to 127.0.0.1, with no
    /// limits, token or host: what tests and benchmarks record and then change a field
    /// or two of.
    #[cfg(feature = "testing")]
    pub fn example(workers: i64, base_port: i64) -> FleetRun {
        FleetRun {
            run_id: 0,
            supervisor_pid: 1,
            host: None,
            started_at: crate::storage::now_ms(),
            stopped_at: None,
            state: RunState::Running,
            workers,
            base_port,
            bind: "127.0.0.1".into(),
            mem_limit_bytes: None,
            mem_enforce: "none".into(),
            handler: "sleep".into(),
            concurrency: 1,
            log_dir: None,
            control_token: None,
            worker_ids: None,
            heartbeat_at: None,
            stop_requested_at: None,
            advertise: None,
        }
    }

    /// The worker ids this run starts.
    pub fn ids(&self) -> crate::ids::WorkerIds {
        self.worker_ids
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| crate::ids::WorkerIds::all(self.workers.max(0) as u32))
    }

    /// The address this run's workers are reached at: `--advertise`, else the bind
    /// address; a wildcard bind is reached on loopback from the run's own host and at
    /// the run's host name from any other.
    pub fn reach(&self) -> String {
        let wildcard = matches!(self.bind.as_str(), "0.0.0.0" | "::");
        match &self.advertise {
            Some(host) => host.clone(),
            None if wildcard && !crate::host::is_this_host(self.host.as_deref()) => {
                self.host.clone().unwrap_or_else(|| "127.0.0.1".into())
            }
            None if self.bind == "::" => "::1".into(),
            None if wildcard => "127.0.0.1".into(),
            None => self.bind.clone(),
        }
    }
}

/// One worker slot of a run, as the supervisor last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetWorker {
    pub run_id: i64,
    pub worker_id: i64,
    pub pid: Option<i64>,
    pub port: i64,
    pub state: SlotStatus,
    pub started_at: Option<i64>,
    pub restarts: i64,
    pub last_reason: Option<String>,
    pub last_restart_at: Option<i64>,
    pub rss_bytes: Option<i64>,
    pub memory_kills: i64,
    pub updated_at: Option<i64>,
}

/// A restart, memory-limit kill or state change of a worker slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub run_id: i64,
    pub worker_id: i64,
    pub at: i64,
    pub kind: EventKind,
    pub reason: String,
}

/// A run recorded by `Store::begin_run`: its id, and the live runs it took over.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    pub run_id: i64,
    pub taken: Vec<FleetRun>,
}

/// What a heartbeat learned about its own run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOrder {
    /// Nothing: carry on.
    CarryOn,
    /// `supervisor stop` asked it to stop.
    Stop,
    /// Another supervisor found its heartbeat stale and took its ids over: its workers
    /// must stop before the new ones start the same shards twice.
    TakenOver,
    /// `supervisor scale` asked it to run `workers` shards, the ids `ids` of them (None:
    /// all).
    Rescale { workers: u32, ids: Option<String> },
}

/// `supervisor scale`'s request to one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleAsk {
    pub run_id: i64,
    pub workers: u32,
    /// The worker ids the run should run ("0-3"); None: all of them.
    pub ids: Option<String>,
}

/// One layout a run ran: from `at`, `workers` shards, its ids `worker_ids` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub at: i64,
    pub workers: i64,
    pub worker_ids: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_words_are_those_earlier_builds_wrote() {
        let words = |all: &[&str]| all.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let runs: Vec<String> = RunState::ALL.iter().map(ToString::to_string).collect();
        let expected = ["running", "stopping", "stopped", "done", "failed", "errored", "crashed", "damaged"];
        assert_eq!(runs, words(&expected));
        let slots: Vec<String> = SlotStatus::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(slots, words(&["starting", "not-ready", "running", "backoff", "errored", "stopped", "drained"]));
        let kinds: Vec<String> = EventKind::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(kinds, words(&["restart", "errored", "crash", "kill", "memory_kill"]));
    }

    #[test]
    fn a_word_reads_back_as_its_variant_in_text_and_json_and_an_unknown_one_is_named() {
        for &k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(serde_json::from_str::<SlotStatus>("\"not-ready\"").unwrap(), SlotStatus::NotReady);
        let err = "sleeping".parse::<RunState>().unwrap_err();
        let known = "running, stopping, stopped, done, failed, errored, crashed, damaged";
        assert_eq!(err.to_string(), format!("unknown run state \"sleeping\" (expected {known})"));
    }
}
