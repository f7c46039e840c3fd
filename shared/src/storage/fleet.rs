//! The supervisor's records: runs, worker slots and events (restarts, memory kills).
//! Written by `supervisor start`; read by `supervisor status`, `stop`, `logs` and by
//! `monitor --db`, so they work while a fleet runs and after it stopped.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqlitePool};

use super::now_ms;
use crate::error::DbError;
use crate::status::ShardCounts;

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

/// Records a new run and its worker slots; returns the run id.
pub async fn insert_run(pool: &SqlitePool, run: &FleetRun) -> Result<i64, DbError> {
    super::retry_busy(|| async {
        let mut tx = pool.begin().await?;
        let id = sqlx::query(
            "INSERT INTO fleet_runs (supervisor_pid, host, started_at, state, workers, base_port, bind, mem_limit_bytes, \
             mem_enforce, handler, concurrency, log_dir, control_token) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        )
        .bind(run.supervisor_pid)
        .bind(&run.host)
        .bind(run.started_at)
        .bind(&run.state)
        .bind(run.workers)
        .bind(run.base_port)
        .bind(&run.bind)
        .bind(run.mem_limit_bytes)
        .bind(&run.mem_enforce)
        .bind(&run.handler)
        .bind(run.concurrency)
        .bind(&run.log_dir)
        .bind(&run.control_token)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        for k in 0..run.workers {
            sqlx::query("INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (?, ?, ?, 'starting')")
                .bind(id)
                .bind(k)
                .bind(run.base_port + k)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    })
    .await
}

/// Writes a worker slot's current state.
pub async fn update_worker(pool: &SqlitePool, w: &FleetWorker) -> Result<(), DbError> {
    super::retry_busy(|| async {
        sqlx::query(
            "UPDATE fleet_workers SET pid = ?, state = ?, started_at = ?, restarts = ?, last_reason = ?, \
             last_restart_at = ?, rss_bytes = ?, memory_kills = ?, updated_at = ? WHERE run_id = ? AND worker_id = ?",
        )
        .bind(w.pid)
        .bind(&w.state)
        .bind(w.started_at)
        .bind(w.restarts)
        .bind(&w.last_reason)
        .bind(w.last_restart_at)
        .bind(w.rss_bytes)
        .bind(w.memory_kills)
        .bind(now_ms())
        .bind(w.run_id)
        .bind(w.worker_id)
        .execute(pool)
        .await?;
        Ok(())
    })
    .await
}

pub async fn add_event(
    pool: &SqlitePool,
    run_id: i64,
    worker_id: u32,
    kind: &str,
    reason: &str,
) -> Result<(), DbError> {
    super::retry_busy(|| async {
        sqlx::query("INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (?, ?, ?, ?, ?)")
            .bind(run_id)
            .bind(worker_id)
            .bind(now_ms())
            .bind(kind)
            .bind(reason)
            .execute(pool)
            .await?;
        Ok(())
    })
    .await
}

pub async fn set_run_state(pool: &SqlitePool, run_id: i64, state: &str, stopped: bool) -> Result<(), DbError> {
    super::retry_busy(|| async {
        sqlx::query(
            "UPDATE fleet_runs SET state = ?, stopped_at = CASE WHEN ? THEN ? ELSE stopped_at END WHERE run_id = ?",
        )
        .bind(state)
        .bind(stopped)
        .bind(now_ms())
        .bind(run_id)
        .execute(pool)
        .await?;
        Ok(())
    })
    .await
}

/// The most recent run, if any fleet was ever started on this database.
pub async fn latest_run(pool: &SqlitePool) -> Result<Option<FleetRun>, DbError> {
    Ok(sqlx::query_as("SELECT * FROM fleet_runs ORDER BY run_id DESC LIMIT 1").fetch_optional(pool).await?)
}

pub async fn run_workers(pool: &SqlitePool, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
    Ok(sqlx::query_as("SELECT * FROM fleet_workers WHERE run_id = ? ORDER BY worker_id")
        .bind(run_id)
        .fetch_all(pool)
        .await?)
}

pub async fn run_events(pool: &SqlitePool, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
    Ok(sqlx::query_as("SELECT run_id, worker_id, at, kind, reason FROM fleet_events WHERE run_id = ? ORDER BY id")
        .bind(run_id)
        .fetch_all(pool)
        .await?)
}

/// Videos by shard (`video_id % workers`) and status: the kept counts when they are kept
/// for `workers` (any layout for `workers = 1`, the totals), else one scan of the table.
pub async fn shard_progress(pool: &SqlitePool, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    let mut conn = pool.acquire().await?;
    super::counts::by_shard(&mut conn, workers).await
}

/// Videos still to do in the whole table (pending or running), from the kept counts.
pub async fn unfinished(pool: &SqlitePool) -> Result<i64, DbError> {
    let totals = shard_progress(pool, 1).await?.into_iter().next().unwrap_or_default();
    Ok((totals.pending + totals.running) as i64)
}

/// Whether the table holds any video at all (one index probe, whatever its size).
pub async fn has_videos(pool: &SqlitePool) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT EXISTS (SELECT 1 FROM videos)").fetch_one(pool).await? == 1)
}
