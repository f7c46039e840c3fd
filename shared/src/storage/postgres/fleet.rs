//! The supervisor's records on PostgreSQL: runs, worker slots and events.

use sqlx::Acquire;

use super::PgStore;
use crate::error::DbError;
use crate::storage::busy::retry_busy;
use crate::storage::{EventKind, FleetEvent, FleetRun, FleetWorker, RunState, SlotStatus, now_ms};

impl PgStore {
    pub(crate) async fn insert_run(&self, run: &FleetRun) -> Result<i64, DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO fleet_runs (supervisor_pid, host, started_at, state, workers, base_port, bind, \
                 mem_limit_bytes, mem_enforce, handler, concurrency, log_dir, control_token) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING run_id",
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
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO fleet_workers (run_id, worker_id, port, state) \
                 SELECT $1, k, $2 + k, $3 FROM generate_series(0, $4 - 1) AS k",
            )
            .bind(id)
            .bind(run.base_port)
            .bind(SlotStatus::Starting.as_str())
            .bind(run.workers)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
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
                 WHERE run_id = $4",
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
