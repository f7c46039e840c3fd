//! The supervisor's records on SQLite: runs, worker slots and events.

use sqlx::{Connection, SqliteConnection};

use super::SqliteStore;
use crate::error::DbError;
use crate::storage::busy::retry_busy;
use crate::storage::fleet::{Beaten, Begun, Decide, Layout, ScaleAsk};
use crate::storage::{EventKind, FleetEvent, FleetRun, FleetWorker, RunState, SlotStatus, now_ms};

const LIVE_RUNS: &str = "SELECT * FROM fleet_runs WHERE state IN ('running', 'stopping') ORDER BY run_id";

impl SqliteStore {
    pub(crate) async fn begin_run<E>(
        &self,
        run: &FleetRun,
        decide: &Decide<'_, E>,
    ) -> Result<Result<Begun, E>, DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let live: Vec<FleetRun> = sqlx::query_as(LIVE_RUNS).fetch_all(&mut *tx).await?;
            // One file, one host: this host's clock is the database's.
            let now = now_ms();
            let taken = match decide(&live, now) {
                Ok(taken) => taken,
                Err(refusal) => return Ok(Err(refusal)),
            };
            for &run_id in &taken {
                sqlx::query("UPDATE fleet_runs SET state = 'crashed', stopped_at = ? WHERE run_id = ?")
                    .bind(now)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
            }
            let id = insert(&mut tx, run, now).await?;
            tx.commit().await?;
            let taken = live.into_iter().filter(|r| taken.contains(&r.run_id)).collect();
            Ok(Ok(Begun { run_id: id, taken }))
        })
        .await
    }

    pub(crate) async fn live_runs(&self) -> Result<Vec<FleetRun>, DbError> {
        retry_busy(|| async { Ok(sqlx::query_as(LIVE_RUNS).fetch_all(self.pool()).await?) }).await
    }

    /// Whether a stop was requested, whether the run is still live, and a scale asked.
    pub(crate) async fn heartbeat(&self, run_id: i64) -> Result<Beaten, DbError> {
        retry_busy(|| async {
            let answer: Option<Beaten> = sqlx::query_as(
                "UPDATE fleet_runs SET heartbeat_at = ? WHERE run_id = ? \
                 RETURNING stop_requested_at IS NOT NULL, state IN ('running', 'stopping'), scale_to, scale_ids",
            )
            .bind(now_ms())
            .bind(run_id)
            .fetch_optional(self.pool())
            .await?;
            Ok(answer.unwrap_or((false, false, None, None)))
        })
        .await
    }

    pub(crate) async fn request_scale(&self, asks: &[ScaleAsk]) -> Result<(), DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for ask in asks {
                sqlx::query("UPDATE fleet_runs SET scale_to = ?, scale_ids = ? WHERE run_id = ?")
                    .bind(i64::from(ask.workers))
                    .bind(&ask.ids)
                    .bind(ask.run_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn rescaled(&self, run: &FleetRun, now: i64) -> Result<(), DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("UPDATE fleet_runs SET workers = ?, worker_ids = ? WHERE run_id = ?")
                .bind(run.workers)
                .bind(&run.worker_ids)
                .bind(run.run_id)
                .execute(&mut *tx)
                .await?;
            // Only the request this layout answers: a newer one stays for the heartbeat.
            sqlx::query(
                "UPDATE fleet_runs SET scale_to = NULL, scale_ids = NULL \
                 WHERE run_id = ? AND scale_to = ? AND scale_ids IS ?",
            )
            .bind(run.run_id)
            .bind(run.workers)
            .bind(&run.worker_ids)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM fleet_workers WHERE run_id = ?").bind(run.run_id).execute(&mut *tx).await?;
            insert_slots_and_layout(&mut tx, run, run.run_id, now).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn layouts(&self, run_id: i64) -> Result<Vec<Layout>, DbError> {
        retry_busy(|| async {
            Ok(sqlx::query_as("SELECT at, workers, worker_ids FROM fleet_layouts WHERE run_id = ? ORDER BY layout_id")
                .bind(run_id)
                .fetch_all(self.pool())
                .await?)
        })
        .await
    }

    pub(crate) async fn request_stop(&self, run_ids: &[i64], now: i64) -> Result<(), DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for &id in run_ids {
                sqlx::query(
                    "UPDATE fleet_runs SET stop_requested_at = coalesce(stop_requested_at, ?) WHERE run_id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Inserts the run and its workers' rows, in the caller's transaction.
async fn insert(conn: &mut SqliteConnection, run: &FleetRun, now: i64) -> Result<i64, DbError> {
    let id = sqlx::query(
        "INSERT INTO fleet_runs (supervisor_pid, host, started_at, state, workers, base_port, bind, mem_limit_bytes, \
         mem_enforce, handler, concurrency, log_dir, control_token, worker_ids, heartbeat_at, advertise) \
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )
    .bind(run.supervisor_pid)
    .bind(&run.host)
    .bind(run.started_at)
    .bind(run.state.as_str())
    .bind(run.workers)
    .bind(run.base_port)
    .bind(&run.bind)
    .bind(run.mem_limit_bytes)
    .bind(&run.mem_enforce)
    .bind(&run.handler)
    .bind(run.concurrency)
    .bind(&run.log_dir)
    .bind(&run.control_token)
    .bind(&run.worker_ids)
    .bind(now)
    .bind(&run.advertise)
    .execute(&mut *conn)
    .await?
    .last_insert_rowid();
    insert_slots_and_layout(conn, run, id, now).await?;
    Ok(id)
}

/// The rows of run `id`'s worker slots (all `starting`) and of its layout from `now`, in
/// the caller's transaction.
async fn insert_slots_and_layout(
    conn: &mut SqliteConnection,
    run: &FleetRun,
    id: i64,
    now: i64,
) -> Result<(), DbError> {
    for k in run.ids().iter() {
        sqlx::query("INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(k)
            .bind(run.base_port + i64::from(k))
            .bind(SlotStatus::Starting.as_str())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT INTO fleet_layouts (run_id, at, workers, worker_ids) VALUES (?, ?, ?, ?)")
        .bind(id)
        .bind(now)
        .bind(run.workers)
        .bind(&run.worker_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// Writes a worker slot's current state.
    pub(crate) async fn update_worker(&self, w: &FleetWorker) -> Result<(), DbError> {
        retry_busy(|| async {
            sqlx::query(
                "UPDATE fleet_workers SET pid = ?, state = ?, started_at = ?, restarts = ?, last_reason = ?, \
                 last_restart_at = ?, rss_bytes = ?, memory_kills = ?, updated_at = ? WHERE run_id = ? AND worker_id = ?",
            )
            .bind(w.pid)
            .bind(w.state.as_str())
            .bind(w.started_at)
            .bind(w.restarts)
            .bind(&w.last_reason)
            .bind(w.last_restart_at)
            .bind(w.rss_bytes)
            .bind(w.memory_kills)
            .bind(now_ms())
            .bind(w.run_id)
            .bind(w.worker_id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn add_event(
        &self,
        run_id: i64,
        worker_id: u32,
        kind: EventKind,
        reason: &str,
    ) -> Result<(), DbError> {
        retry_busy(|| async {
            sqlx::query("INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (?, ?, ?, ?, ?)")
                .bind(run_id)
                .bind(worker_id)
                .bind(now_ms())
                .bind(kind.as_str())
                .bind(reason)
                .execute(self.pool())
                .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn set_run_state(&self, run_id: i64, state: RunState, stopped: bool) -> Result<(), DbError> {
        retry_busy(|| async {
            sqlx::query(
                "UPDATE fleet_runs SET state = ?, stopped_at = CASE WHEN ? THEN ? ELSE stopped_at END \
                 WHERE run_id = ? AND state IN ('running', 'stopping')",
            )
            .bind(state.as_str())
            .bind(stopped)
            .bind(now_ms())
            .bind(run_id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    /// The most recent run, if any fleet was ever started on this database.
    pub(crate) async fn latest_run(&self) -> Result<Option<FleetRun>, DbError> {
        Ok(sqlx::query_as("SELECT * FROM fleet_runs ORDER BY run_id DESC LIMIT 1").fetch_optional(self.pool()).await?)
    }

    pub(crate) async fn run_workers(&self, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
        Ok(sqlx::query_as("SELECT * FROM fleet_workers WHERE run_id = ? ORDER BY worker_id")
            .bind(run_id)
            .fetch_all(self.pool())
            .await?)
    }

    pub(crate) async fn run_events(&self, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
        Ok(sqlx::query_as("SELECT run_id, worker_id, at, kind, reason FROM fleet_events WHERE run_id = ? ORDER BY id")
            .bind(run_id)
            .fetch_all(self.pool())
            .await?)
    }
}
