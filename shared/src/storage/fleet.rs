//! The supervisor's records: runs, worker slots and events (restarts, memory kills),
//! and the states and kinds they keep, as types. Written by `supervisor start`; read by
//! `supervisor status`, `stop`, `logs` and by `monitor --db`, so they work while a fleet
//! runs and after it stopped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::Store;
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

impl Store {
    /// Records a new run and its worker slots (all `starting`); returns the run id.
    pub async fn insert_run(&self, run: &FleetRun) -> Result<i64, DbError> {
        match self {
            Store::Sqlite(s) => s.insert_run(run).await,
            Store::Postgres(s) => s.insert_run(run).await,
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

    /// Sets the run's state; `stopped` also stamps its end, now.
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
