//! Claiming on SQLite: taking a batch of due, pending videos of one shard in one statement.
//!
//! The statement is `UPDATE ... WHERE video_id IN (SELECT ... LIMIT n) RETURNING ...`,
//! never a read followed by a write (a deferred transaction that reads and then writes
//! gets SQLITE_BUSY at once, without waiting). It reads a partial index on
//! `(video_id % N, run_after)` over pending rows only, built for this fleet's N, so a
//! claim seeks straight to its own shard's due rows instead of scanning past the other
//! shards' rows in a shared status index.
//!
//! A row may hold anything (rows also come from wrangler or another app, unchecked by
//! `import`): a source or payload above the worker's limits is never returned, only its
//! size (`octet_length` reads it from the record header), so a 50 MB source cannot
//! take the worker's memory; the runner fails such a video at once.

use std::collections::HashMap;
use std::time::Duration;

use rand::RngExt;
use sqlx::{AssertSqlSafe, Executor, Row, SqliteConnection};

use crate::config::{DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SOURCE};
use crate::error::DbError;
use crate::storage::Claimed;
use crate::storage::busy::BusyRetry;
use crate::units::human_bytes;

/// Largest batch one claim takes. Beyond a few hundred rows a bigger statement buys
/// little and holds the write lock longer.
pub const MAX_BATCH: usize = 512;

/// Claims for one shard. The SQL text carries N, K and the batch size as literals: the
/// expression index only matches a literal `video_id % N`, and SQLite re-prepares a
/// statement whose bound LIMIT changes. Batch sizes are powers of two, so a handful of
/// statements stay in the connection's statement cache.
#[derive(Debug, Clone)]
pub struct Claimer {
    workers: u32,
    worker_id: u32,
    owner: String,
    /// Largest source and payload returned, in bytes.
    max_source: u64,
    max_payload: u64,
    /// `statements[&k][i]` claims `2^i` rows of shard `k`: the worker's own shard, and
    /// the shards it helped (`--steal`), made on first use.
    statements: HashMap<u32, Vec<String>>,
}

impl Claimer {
    /// A claimer with the default row limits ([`DEFAULT_MAX_SOURCE`], [`DEFAULT_MAX_PAYLOAD`]).
    pub fn new(workers: u32, worker_id: u32, owner: impl Into<String>) -> Claimer {
        assert!(workers > 0 && worker_id < workers, "config validation guarantees 0 <= worker_id < workers");
        Claimer { workers, worker_id, owner: owner.into(), max_source: 0, max_payload: 0, statements: HashMap::new() }
            .with_limits(DEFAULT_MAX_SOURCE.bytes(), DEFAULT_MAX_PAYLOAD.bytes())
    }

    /// The same claimer, returning sources up to `max_source` bytes and payloads up to
    /// `max_payload` bytes; larger rows come back rejected.
    pub fn with_limits(mut self, max_source: u64, max_payload: u64) -> Claimer {
        self.max_source = max_source;
        self.max_payload = max_payload;
        self.statements = HashMap::from([(self.worker_id, self.statements_for(self.worker_id))]);
        self
    }

    /// The claim statements for shard `shard`, one per batch size.
    fn statements_for(&self, shard: u32) -> Vec<String> {
        let (workers, max_source, max_payload) = (self.workers, self.max_source, self.max_payload);
        (0..=MAX_BATCH.trailing_zeros())
            .map(|i| {
                format!(
                    "UPDATE videos SET status = 'running', attempts = attempts + 1, lease_owner = ?1, \
                     lease_token = ?2, lease_expires_at = ?3, started_at = ?4, finished_at = NULL, duration_ms = NULL \
                     WHERE video_id IN (SELECT video_id FROM videos INDEXED BY {index} \
                     WHERE status = 'pending' AND video_id % {workers} = {shard} AND run_after <= ?4 \
                     ORDER BY run_after, video_id LIMIT {limit}) \
                     RETURNING video_id, \
                     CASE WHEN typeof(source) = 'text' AND octet_length(source) <= {max_source} THEN source END, \
                     CASE WHEN typeof(payload) = 'text' AND octet_length(payload) <= {max_payload} THEN payload END, \
                     attempts, octet_length(source), octet_length(payload), typeof(source), typeof(payload)",
                    index = shard_index_name(workers),
                    limit = 1usize << i,
                )
            })
            .collect()
    }

    /// The lease owner this claimer writes: unique to the worker process.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn workers(&self) -> u32 {
        self.workers
    }

    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// Builds the fleet's pending-shard index if it is not there yet.
    pub async fn ensure_index(&self, conn: &mut SqliteConnection) -> Result<(), DbError> {
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS {} ON videos ((video_id % {}), run_after) WHERE status = 'pending'",
            shard_index_name(self.workers),
            self.workers
        );
        let mut busy = BusyRetry::new();
        loop {
            match conn.execute(AssertSqlSafe(sql.as_str())).await {
                Err(e) => busy.wait(e.into()).await?,
                Ok(_) => return Ok(()),
            }
        }
    }

    /// The batch one `claim(want)` asks for: `want` rounded down to a power of two, at
    /// most `MAX_BATCH`.
    pub fn batch_size(want: usize) -> usize {
        if want == 0 { 0 } else { 1 << want.min(MAX_BATCH).ilog2() }
    }

    /// Claims up to `want` due videos of shard `shard` (`batch_size(want)` of them at
    /// most), leasing them until `now + lease`. Fewer than that means nothing more is
    /// due there now.
    pub async fn claim(
        &mut self,
        conn: &mut SqliteConnection,
        shard: u32,
        want: usize,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        if want == 0 || shard >= self.workers {
            return Ok(Vec::new());
        }
        let i = (want.min(MAX_BATCH)).ilog2() as usize;
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
                // Text that is not UTF-8 fails to decode: a rejection, never a panic.
                let source = r.try_get::<Option<String>, _>(1).ok().flatten();
                let payload = r.try_get::<Option<String>, _>(2).ok().flatten();
                let source_len: i64 = r.try_get(4).unwrap_or(0);
                let payload_len: Option<i64> = r.try_get(5).unwrap_or(None);
                let kinds: (String, String) = (r.try_get(6).unwrap_or_default(), r.try_get(7).unwrap_or_default());
                let rejected = if source.is_none() {
                    Some(unusable("source", &kinds.0, source_len, self.max_source))
                } else if payload.is_none() && kinds.1 != "null" {
                    Some(unusable("payload", &kinds.1, payload_len.unwrap_or(0), self.max_payload))
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

/// Why a claimed row's `what` (of SQLite type `kind`, `bytes` long) cannot be run.
fn unusable(what: &str, kind: &str, bytes: i64, limit: u64) -> String {
    let flag = if what == "source" { "--max-source-bytes" } else { "--max-payload-bytes" };
    let why = if kind != "text" {
        format!("its {what} is a {kind} value, not text")
    } else if bytes as u64 > limit {
        format!(
            "its {what} is {}, above the limit of {} ({flag})",
            human_bytes(bytes.max(0) as u64),
            human_bytes(limit)
        )
    } else {
        format!("its {what} is not UTF-8 text")
    };
    format!("{why}; it was not run: fix the row, then `supervisor retry` it")
}

/// The pending-shard index for a fleet of `workers`.
pub fn shard_index_name(workers: u32) -> String {
    format!("videos_pending_mod{workers}")
}
