//! The supervisor's records: runs, worker slots and events (restarts, memory kills),
//! and the states and kinds they keep, as types. Written by `supervisor start`; read by
//! `supervisor status`, `stop`, `logs` and by `monitor --db`, so they work while a fleet
//! runs and after it stopped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{Store, now_ms};
use crate::error::DbError;

/// A word kept in the records that this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {word:?}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
}

/// An enum kept in the records as a word: the word is its `Display`, its JSON and what
/// the table holds, defined once here.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident ($what:literal) { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            /// The word kept in the records.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| UnknownWord { what: $what, word: s.into() })
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownWord;
            fn try_from(s: String) -> Result<Self, UnknownWord> {
                s.parse()
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct FleetRun {
    pub run_id: i64,
    pub supervisor_pid: i64,
    pub host: Option<String>,
    pub started_at: i64,
    pub stopped_at: Option<i64>,
    #[sqlx(try_from = "String")]
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
    #[sqlx(default)]
    pub worker_ids: Option<String>,
    /// When its supervisor last said it is alive.
    #[sqlx(default)]
    pub heartbeat_at: Option<i64>,
    /// When `supervisor stop` asked it to stop.
    #[sqlx(default)]
    pub stop_requested_at: Option<i64>,
    /// Where other hosts reach its workers (`--advertise`), if not at `bind`.
    #[sqlx(default)]
    pub advertise: Option<String>,
}

impl FleetRun {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct FleetWorker {
    pub run_id: i64,
    pub worker_id: i64,
    pub pid: Option<i64>,
    pub port: i64,
    #[sqlx(try_from = "String")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct FleetEvent {
    pub run_id: i64,
    pub worker_id: i64,
    pub at: i64,
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    pub reason: String,
}

/// How a starting run decides, given the live runs and the database's clock: the runs
/// it takes over, or why it must not start ([`Store::begin_run`]).
pub type Decide<'a, E> = dyn Fn(&[FleetRun], i64) -> Result<Vec<i64>, E> + 'a;

/// A run recorded by [`Store::begin_run`]: its id, and the live runs it took over.
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

/// What a heartbeat's write returned: a stop asked, the run still live, a scale asked
/// (size and ids).
pub(crate) type Beaten = (bool, bool, Option<i64>, Option<String>);

/// `supervisor scale`'s request to one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleAsk {
    pub run_id: i64,
    pub workers: u32,
    /// The worker ids the run should run ("0-3"); None: all of them.
    pub ids: Option<String>,
}

/// One layout a run ran: from `at`, `workers` shards, its ids `worker_ids` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
pub struct Layout {
    pub at: i64,
    pub workers: i64,
    pub worker_ids: Option<String>,
}

impl Store {
    /// Records a new run and its worker slots (those of `run.ids()`, all `starting`);
    /// returns the run id.
    pub async fn insert_run(&self, run: &FleetRun) -> Result<i64, DbError> {
        let begun = self.begin_run(run, |_, _| Ok::<_, std::convert::Infallible>(Vec::new())).await?;
        Ok(begun.unwrap_or_else(|never| match never {}).run_id)
    }

    /// Records a new run unless a live one forbids it, atomically: under the database's
    /// write lock (SQLite) or an advisory lock (PostgreSQL), `decide` sees every live run
    /// (running or stopping) and the database's clock in ms (heartbeats are stamped by
    /// it, so hosts' clocks never disagree about their age), and says which runs it takes
    /// over (marked `crashed`) or why the new run must not start. Two supervisors
    /// starting at once never both pass. Returns the new run and the runs it took over,
    /// or `decide`'s refusal (and then nothing is written).
    pub async fn begin_run<E>(
        &self,
        run: &FleetRun,
        decide: impl Fn(&[FleetRun], i64) -> Result<Vec<i64>, E>,
    ) -> Result<Result<Begun, E>, DbError> {
        match self {
            Store::Sqlite(s) => s.begin_run(run, &decide).await,
            Store::Postgres(s) => s.begin_run(run, &decide).await,
        }
    }

    /// Runs whose supervisor was last seen driving them (running or stopping), oldest
    /// first: with `--worker-ids`, several hosts' runs at once.
    pub async fn live_runs(&self) -> Result<Vec<FleetRun>, DbError> {
        match self {
            Store::Sqlite(s) => s.live_runs().await,
            Store::Postgres(s) => s.live_runs().await,
        }
    }

    /// Stamps run `run_id` alive now, by the database's clock; returns what it must do.
    pub async fn heartbeat(&self, run_id: i64) -> Result<RunOrder, DbError> {
        let (stop, live, scale_to, scale_ids) = match self {
            Store::Sqlite(s) => s.heartbeat(run_id).await?,
            Store::Postgres(s) => s.heartbeat(run_id).await?,
        };
        Ok(match (stop, live, scale_to) {
            (_, false, _) => RunOrder::TakenOver,
            (true, true, _) => RunOrder::Stop,
            (false, true, Some(n)) if n > 0 => RunOrder::Rescale { workers: n as u32, ids: scale_ids },
            (false, true, _) => RunOrder::CarryOn,
        })
    }

    /// Asks each run of `asks` to change to its new layout (each supervisor sees it at
    /// its next heartbeat), all in one transaction.
    pub async fn request_scale(&self, asks: &[ScaleAsk]) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.request_scale(asks).await,
            Store::Postgres(s) => s.request_scale(asks).await,
        }
    }

    /// Records that `run` runs its new layout (`workers`, `worker_ids`) from `now`: the
    /// run record, fresh slot rows for its ids, and a layout row, in one transaction.
    /// Clears the scale request.
    pub async fn rescaled(&self, run: &FleetRun, now: i64) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.rescaled(run, now).await,
            Store::Postgres(s) => s.rescaled(run, now).await,
        }
    }

    /// The layouts run `run_id` ran, oldest first (runs recorded before migration 0008
    /// have none).
    pub async fn layouts(&self, run_id: i64) -> Result<Vec<Layout>, DbError> {
        match self {
            Store::Sqlite(s) => s.layouts(run_id).await,
            Store::Postgres(s) => s.layouts(run_id).await,
        }
    }

    /// The database's clock in ms, which heartbeats are stamped by: what their age is
    /// judged against on any host.
    pub async fn clock(&self) -> Result<i64, DbError> {
        match self {
            Store::Sqlite(_) => Ok(now_ms()),
            Store::Postgres(s) => s.clock().await,
        }
    }

    /// Asks the supervisors of `run_ids` to stop (each sees it at its next heartbeat).
    pub async fn request_stop(&self, run_ids: &[i64], now: i64) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.request_stop(run_ids, now).await,
            Store::Postgres(s) => s.request_stop(run_ids, now).await,
        }
    }

    /// Writes a worker slot's current state.
    pub async fn update_worker(&self, w: &FleetWorker) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.update_worker(w).await,
            Store::Postgres(s) => s.update_worker(w).await,
        }
    }

    /// Records a restart, kill or memory kill of worker `worker_id`, now.
    pub async fn add_event(&self, run_id: i64, worker_id: u32, kind: EventKind, reason: &str) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.add_event(run_id, worker_id, kind, reason).await,
            Store::Postgres(s) => s.add_event(run_id, worker_id, kind, reason).await,
        }
    }

    /// Sets the run's state while it is live; `stopped` also stamps its end, now. A run
    /// that has ended, or that another supervisor took over (marked `crashed`), keeps
    /// the state it has: its own supervisor, late, must not bring it back to life.
    pub async fn set_run_state(&self, run_id: i64, state: RunState, stopped: bool) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.set_run_state(run_id, state, stopped).await,
            Store::Postgres(s) => s.set_run_state(run_id, state, stopped).await,
        }
    }

    /// The most recent run, if any fleet was ever started on this database.
    pub async fn latest_run(&self) -> Result<Option<FleetRun>, DbError> {
        match self {
            Store::Sqlite(s) => s.latest_run().await,
            Store::Postgres(s) => s.latest_run().await,
        }
    }

    /// The worker slots of run `run_id`, by worker id.
    pub async fn run_workers(&self, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
        match self {
            Store::Sqlite(s) => s.run_workers(run_id).await,
            Store::Postgres(s) => s.run_workers(run_id).await,
        }
    }

    /// The events of run `run_id`, oldest first.
    pub async fn run_events(&self, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
        match self {
            Store::Sqlite(s) => s.run_events(run_id).await,
            Store::Postgres(s) => s.run_events(run_id).await,
        }
    }
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
        assert_eq!(slots, words(&["starting", "not-ready", "running", "backoff", "errored", "stopped"]));
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
        assert_eq!(err.to_string(), "unknown run state \"sleeping\"");
    }
}
