//! Claiming on PostgreSQL: a batch of due, pending videos of one shard in one statement.
//!
//! ```sql
//! WITH due AS MATERIALIZED (SELECT video_id FROM videos
//!       WHERE status = 'pending' AND video_id % 4 = 1 AND run_after <= $4
//!       ORDER BY run_after, video_id LIMIT 64 FOR UPDATE SKIP LOCKED)
//! UPDATE videos v SET status = 'running', ...
//! FROM due WHERE v.video_id = due.video_id AND v.status = 'pending'
//! RETURNING ...
//! ```
//!
//! The CTE is MATERIALIZED, run once. As a subquery in `FROM` the planner may put it on
//! the inner side of a nested loop and run it again for each outer row; each rerun
//! skips the rows this statement already updated and locks new ones, so `LIMIT 1`
//! claimed a whole shard (seen in this crate's tests).
//!
//! `SKIP LOCKED` passes over rows another transaction holds (a supervisor handing back,
//! a stealing worker), so claims never queue behind each other. The outer `status =
//! 'pending'` is checked again on the row as locked: under READ COMMITTED the subquery's
//! snapshot may be older than the lock. N and K are literals in the text: the partial
//! index `videos_pending_mod{N}` on `(video_id % N, run_after, video_id) WHERE status =
//! 'pending'` is only used for a literal `video_id % N` (a bound N defeats it, checked
//! on PostgreSQL 15). Large sources and payloads are not returned, only their size, as
//! on SQLite.

use std::collections::HashMap;
use std::time::Duration;

use rand::RngExt;
use sqlx::{Acquire, AssertSqlSafe, PgConnection, Row};

use crate::error::DbError;
use crate::storage::Claimed;
use crate::units::human_bytes;

/// Largest batch one claim takes.
pub const MAX_BATCH: usize = 512;

/// The advisory lock key for building a shard index, so two workers starting together
/// do not race to create the same index.
const INDEX_LOCK: i64 = 0x5346_494e_4445_5800;

#[derive(Debug, Clone)]
pub struct Claimer {
    workers: u32,
    worker_id: u32,
    owner: String,
    max_source: u64,
    max_payload: u64,
    /// `statements[&k][i]` claims `2^i` rows of shard `k`: the worker's own shard, and
    /// the shards it helped (`--steal`), made on first use.
    statements: HashMap<u32, Vec<String>>,
}

impl Claimer {
    pub fn new(workers: u32, worker_id: u32, owner: String, max_source: u64, max_payload: u64) -> Claimer {
        let mut claimer = Claimer { workers, worker_id, owner, max_source, max_payload, statements: HashMap::new() };
        claimer.statements.insert(worker_id, claimer.statements_for(worker_id));
        claimer
    }

    /// The claim statements for shard `shard`, one per batch size.
    fn statements_for(&self, shard: u32) -> Vec<String> {
        let (workers, max_source, max_payload) = (self.workers, self.max_source, self.max_payload);
        (0..=MAX_BATCH.trailing_zeros())
            .map(|i| {
                format!(
                    "WITH due AS MATERIALIZED (SELECT video_id FROM videos \
                           WHERE status = 'pending' AND video_id % {workers} = {shard} AND run_after <= $4 \
                           ORDER BY run_after, video_id LIMIT {limit} FOR UPDATE SKIP LOCKED) \
                     UPDATE videos v SET status = 'running', attempts = v.attempts + 1, lease_owner = $1, \
                     lease_token = $2, lease_expires_at = $3, started_at = $4, finished_at = NULL, duration_ms = NULL \
                     FROM due WHERE v.video_id = due.video_id AND v.status = 'pending' \
                     RETURNING v.video_id, \
                     CASE WHEN octet_length(v.source) <= {max_source} THEN v.source END, \
                     CASE WHEN octet_length(v.payload) <= {max_payload} THEN v.payload END, \
                     v.attempts, octet_length(v.source)::BIGINT, octet_length(v.payload)::BIGINT",
                    limit = 1usize << i,
                )
            })
            .collect()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn workers(&self) -> u32 {
        self.workers
    }

    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// Builds the fleet's pending-shard index if it is not there yet. Building it on a
    /// large table holds off writes to `videos` while it runs (once per fleet size).
    pub async fn ensure_index(&self, conn: &mut PgConnection) -> Result<(), DbError> {
        let name = shard_index_name(self.workers);
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&name).fetch_one(&mut *conn).await?;
        if exists {
            return Ok(());
        }
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INDEX_LOCK).execute(&mut *tx).await?;
        // Another worker may have built it while this one waited for the lock.
        let built: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&name).fetch_one(&mut *tx).await?;
        if built {
            tx.commit().await?;
            return Ok(());
        }
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS {name} ON videos ((video_id % {}), run_after, video_id) WHERE status = 'pending'",
            self.workers
        );
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        tx.commit().await?;
        // Statistics for the index's expression: without them the planner takes
        // `video_id % N = K` for 0.5% of the rows and prefers a bitmap scan and a sort
        // of the whole shard to the index's order. Only a cost if it fails, so ignored.
        let _ = sqlx::query("ANALYZE videos").execute(&mut *conn).await;
        Ok(())
    }

    /// Claims `2^floor(log2(want))` due videos of shard `shard` at most (`want` capped
    /// at MAX_BATCH), leased until `now + lease`. Fewer means nothing more is due there
    /// now.
    pub async fn claim(
        &mut self,
        conn: &mut PgConnection,
        shard: u32,
        want: usize,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        if want == 0 || shard >= self.workers {
            return Ok(Vec::new());
        }
        let i = want.min(MAX_BATCH).ilog2() as usize;
        let token: i64 = rand::rng().random_range(1..i64::MAX);
        if !self.statements.contains_key(&shard) {
            let made = self.statements_for(shard);
            self.statements.insert(shard, made);
        }
        let rows = sqlx::query(AssertSqlSafe(self.statements[&shard][i].as_str()))
            .bind(&self.owner)
            .bind(token)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let source: Option<String> = r.get(1);
                let payload: Option<String> = r.get(2);
                let source_len: i64 = r.get(4);
                let payload_len: Option<i64> = r.get(5);
                let rejected = if source.is_none() {
                    Some(too_large("source", source_len, self.max_source))
                } else if payload.is_none() && payload_len.is_some() {
                    Some(too_large("payload", payload_len.unwrap_or(0), self.max_payload))
                } else {
                    None
                };
                Claimed {
                    video_id: r.get(0),
                    source: source.unwrap_or_default(),
                    payload,
                    attempt: r.get::<i64, _>(3) as u32,
                    token,
                    rejected,
                }
            })
            .collect())
    }
}

/// Why a claimed row's `what` (`bytes` long) cannot be run. PostgreSQL's text is always
/// valid text, so size is the only reason.
fn too_large(what: &str, bytes: i64, limit: u64) -> String {
    let flag = if what == "source" { "--max-source-bytes" } else { "--max-payload-bytes" };
    format!(
        "its {what} is {}, above the limit of {} ({flag}); it was not run: fix the row, then `supervisor retry` it",
        human_bytes(bytes.max(0) as u64),
        human_bytes(limit)
    )
}

/// The pending-shard index for a fleet of `workers`.
pub fn shard_index_name(workers: u32) -> String {
    format!("videos_pending_mod{workers}")
}

/// The text of the claim statement for a batch of `want`, as a session `worker_id` of
/// `workers` runs it: for tests that `EXPLAIN` it (`storage::testing`).
#[cfg(feature = "testing")]
pub fn claim_statement(workers: u32, worker_id: u32, want: usize) -> String {
    let spec = crate::storage::ShardSpec::new(workers, worker_id);
    let claimer = Claimer::new(workers, worker_id, String::new(), spec.max_source, spec.max_payload);
    claimer.statements[&worker_id][want.clamp(1, MAX_BATCH).ilog2() as usize].clone()
}
