//! The supervisor's records on PostgreSQL: runs, worker slots and events.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::PgStore;
use crate::error::DbError;
use crate::storage::busy::retry_busy;
use crate::storage::fleet::{Beaten, Begun, Decide, Layout, ScaleAsk};
use crate::storage::{EventKind, FleetEvent, FleetRun, FleetWorker, RunState, SlotStatus, now_ms};

const LIVE_RUNS: &str = "SELECT * FROM fleet_runs WHERE state IN ('running', 'stopping') ORDER BY run_id";

/// The database's clock in ms: every host's heartbeat is stamped and judged by it, so
/// clocks that disagree between hosts never make a live run look dead.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The advisory lock a starting supervisor holds while it decides ("RUNS" in a number).
const BEGIN_RUN_LOCK: i64 = 0x5346_5255_4e53;

impl PgStore {
    pub(crate) async fn begin_run<E>(
        &self,
        run: &FleetRun,
        decide: &Decide<'_, E>,
    ) -> Result<Result<Begun, E>, DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            // READ COMMITTED whatever the server's default: the live runs must be read
            // after the lock is granted, not from a snapshot taken while waiting for it.
            let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
            // Row locks cannot stop a second supervisor inserting beside the first, so
            // every start takes one lock for the decision; heartbeats do not need it.
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(BEGIN_RUN_LOCK).execute(&mut *tx).await?;
            let live: Vec<FleetRun> = sqlx::query_as(LIVE_RUNS).fetch_all(&mut *tx).await?;
            let now: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {DB_NOW}"))).fetch_one(&mut *tx).await?;
            let taken = match decide(&live, now) {
                Ok(taken) => taken,
                Err(refusal) => return Ok(Err(refusal)),
            };
            sqlx::query("UPDATE fleet_runs SET state = 'crashed', stopped_at = $1 WHERE run_id = ANY($2)")
                .bind(now)
                .bind(&taken)
                .execute(&mut *tx)
                .await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO fleet_runs (supervisor_pid, host, started_at, state, workers, base_port, bind, \
                 mem_limit_bytes, mem_enforce, handler, concurrency, log_dir, control_token, worker_ids, heartbeat_at, \
                 advertise) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING run_id",
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
            .fetch_one(&mut *tx)
            .await?;
            insert_slots_and_layout(&mut tx, run, id, now).await?;
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
            let answer: Option<Beaten> = sqlx::query_as(AssertSqlSafe(format!(
                "UPDATE fleet_runs SET heartbeat_at = {DB_NOW} WHERE run_id = $1 \
                 RETURNING stop_requested_at IS NOT NULL, state IN ('running', 'stopping'), scale_to, scale_ids"
            )))
            .bind(run_id)
            .fetch_optional(self.pool())
            .await?;
            Ok(answer.unwrap_or((false, false, None, None)))
        })
        .await
    }

    pub(crate) async fn request_scale(&self, asks: &[ScaleAsk]) -> Result<(), DbError> {
        retry_busy(|| async {
            let mut tx = self.pool().begin().await?;
            for ask in asks {
                sqlx::query("UPDATE fleet_runs SET scale_to = $1, scale_ids = $2 WHERE run_id = $3")
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
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE fleet_runs SET workers = $1, worker_ids = $2 WHERE run_id = $3")
                .bind(run.workers)
                .bind(&run.worker_ids)
                .bind(run.run_id)
                .execute(&mut *tx)
                .await?;
            // Only the request this layout answers: a newer one stays for the heartbeat.
            sqlx::query(
                "UPDATE fleet_runs SET scale_to = NULL, scale_ids = NULL \
                 WHERE run_id = $1 AND scale_to = $2 AND scale_ids IS NOT DISTINCT FROM $3",
            )
            .bind(run.run_id)
            .bind(run.workers)
            .bind(&run.worker_ids)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM fleet_workers WHERE run_id = $1").bind(run.run_id).execute(&mut *tx).await?;
            insert_slots_and_layout(&mut tx, run, run.run_id, now).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn layouts(&self, run_id: i64) -> Result<Vec<Layout>, DbError> {
        retry_busy(|| async {
            Ok(sqlx::query_as("SELECT at, workers, worker_ids FROM fleet_layouts WHERE run_id = $1 ORDER BY layout_id")
                .bind(run_id)
                .fetch_all(self.pool())
                .await?)
        })
        .await
    }

    pub(crate) async fn clock(&self) -> Result<i64, DbError> {
        retry_busy(|| async {
            Ok(sqlx::query_scalar(AssertSqlSafe(format!("SELECT {DB_NOW}"))).fetch_one(self.pool()).await?)
        })
        .await
    }

    pub(crate) async fn request_stop(&self, run_ids: &[i64], now: i64) -> Result<(), DbError> {
        retry_busy(|| async {
            sqlx::query(
                "UPDATE fleet_runs SET stop_requested_at = coalesce(stop_requested_at, $1) WHERE run_id = ANY($2)",
            )
            .bind(now)
            .bind(run_ids)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn update_worker(&self, w: &FleetWorker) -> Result<(), DbError> {
        retry_busy(|| async {
            sqlx::query(
                "UPDATE fleet_workers SET pid = $1, state = $2, started_at = $3, restarts = $4, last_reason = $5, \
                 last_restart_at = $6, rss_bytes = $7, memory_kills = $8, updated_at = $9 \
                 WHERE run_id = $10 AND worker_id = $11",
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
            sqlx::query("INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES ($1, $2, $3, $4, $5)")
                .bind(run_id)
                .bind(i64::from(worker_id))
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
                "UPDATE fleet_runs SET state = $1, stopped_at = CASE WHEN $2 THEN $3 ELSE stopped_at END \
                 WHERE run_id = $4 AND state IN ('running', 'stopping')",
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

    pub(crate) async fn latest_run(&self) -> Result<Option<FleetRun>, DbError> {
        Ok(sqlx::query_as("SELECT * FROM fleet_runs ORDER BY run_id DESC LIMIT 1").fetch_optional(self.pool()).await?)
    }

    pub(crate) async fn run_workers(&self, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
        Ok(sqlx::query_as("SELECT * FROM fleet_workers WHERE run_id = $1 ORDER BY worker_id")
            .bind(run_id)
            .fetch_all(self.pool())
            .await?)
    }

    pub(crate) async fn run_events(&self, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
        Ok(sqlx::query_as("SELECT run_id, worker_id, at, kind, reason FROM fleet_events WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(self.pool())
            .await?)
    }
}

/// The rows of run `id`'s worker slots (all `starting`) and of its layout from `now`, in
/// the caller's transaction.
async fn insert_slots_and_layout(conn: &mut PgConnection, run: &FleetRun, id: i64, now: i64) -> Result<(), DbError> {
    let ids: Vec<i64> = run.ids().iter().map(i64::from).collect();
    sqlx::query(
        "INSERT INTO fleet_workers (run_id, worker_id, port, state) SELECT $1, k, $2 + k, $3 FROM unnest($4) AS k",
    )
    .bind(id)
    .bind(run.base_port)
    .bind(SlotStatus::Starting.as_str())
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO fleet_layouts (run_id, at, workers, worker_ids) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(now)
        .bind(run.workers)
        .bind(&run.worker_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
