//! The supervisor's records: runs, worker slots and events (restarts, memory kills).
//! Written by `supervisor start`; read by `supervisor status`, `stop`, `logs` and by
//! `monitor --db`, so they work while a fleet runs and after it stopped.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::Store;
use crate::error::DbError;

/// One `supervisor start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct FleetRun {
    pub run_id: i64,
    pub supervisor_pid: i64,
    pub host: Option<String>,
    pub started_at: i64,
    pub stopped_at: Option<i64>,
    pub state: String,
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
    pub state: String,
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
    pub kind: String,
    pub reason: String,
}

impl Store {
    /// Records a new run and its worker slots (all `starting`); returns the run id.
    pub async fn insert_run(&self, run: &FleetRun) -> Result<i64, DbError> {
        match self {
            Store::Sqlite(s) => s.insert_run(run).await,
        }
    }

    /// Writes a worker slot's current state.
    pub async fn update_worker(&self, w: &FleetWorker) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.update_worker(w).await,
        }
    }

    /// Records a restart, kill or memory kill of worker `worker_id`, now.
    pub async fn add_event(&self, run_id: i64, worker_id: u32, kind: &str, reason: &str) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.add_event(run_id, worker_id, kind, reason).await,
        }
    }

    /// Sets the run's state; `stopped` also stamps its end, now.
    pub async fn set_run_state(&self, run_id: i64, state: &str, stopped: bool) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.set_run_state(run_id, state, stopped).await,
        }
    }

    /// The most recent run, if any fleet was ever started on this database.
    pub async fn latest_run(&self) -> Result<Option<FleetRun>, DbError> {
        match self {
            Store::Sqlite(s) => s.latest_run().await,
        }
    }

    /// The worker slots of run `run_id`, by worker id.
    pub async fn run_workers(&self, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
        match self {
            Store::Sqlite(s) => s.run_workers(run_id).await,
        }
    }

    /// The events of run `run_id`, oldest first.
    pub async fn run_events(&self, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
        match self {
            Store::Sqlite(s) => s.run_events(run_id).await,
        }
    }
}
