//! Claiming: a batch of due, pending videos of one shard, taken in one statement
//! (`UPDATE ... WHERE video_id IN (SELECT ... LIMIT n) RETURNING ...`), leased to the
//! claiming worker under a fresh token that its finish is fenced on. The statement's
//! text is the backend's (`Sql::claim`, with why it has that shape); what it returns is
//! read here, once.
//!
//! A row may hold anything (rows also come from wrangler or another app, unchecked by
//! `import`): a source or payload above the worker's limits is never returned, only its
//! size, so a 50 MB source cannot take the worker's memory; the runner fails such a
//! video at once.

use std::borrow::Cow;
use std::time::Duration;

use rand::RngExt;

use super::busy::retrying;
use super::conn::{Backend, Conn, ConnExt, args};
use crate::error::DbError;
use crate::units::human_bytes;

/// A video this worker now holds a lease on.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    /// The attempt this claim starts, from 1.
    pub attempt: u32,
    /// The token of this claim; finishing is fenced on it.
    pub token: i64,
    /// Why this video cannot run (its source or payload is above the limits, and was
    /// not read): it is to be failed at once.
    pub rejected: Option<String>,
}

/// Largest batch one claim takes. Beyond a few hundred rows a bigger statement buys
/// little and holds the write lock longer.
pub const MAX_BATCH: usize = 512;

/// The batch one claim asks for: `want` rounded down to a power of two, at most
/// [`MAX_BATCH`]. Batch sizes are powers of two, and N, K and the size are literals in
/// the text (a partial index on `video_id % N` only matches a literal N), so a handful
/// of statements stay in the connection's statement cache.
pub(crate) fn batch_size(want: usize) -> usize {
    if want == 0 { 0 } else { 1 << want.min(MAX_BATCH).ilog2() }
}

/// Claims for one worker: its shard, its lease owner name and its row limits.
#[derive(Debug, Clone)]
pub(crate) struct Claimer {
    pub workers: u32,
    pub worker_id: u32,
    pub owner: String,
    backend: Backend,
    /// Largest source and payload returned, in bytes.
    max_source: u64,
    max_payload: u64,
    /// `own[i]` claims `2^i` rows of the worker's own shard; a helped shard's
    /// statements are made when used (`--steal` rounds are rare).
    own: Vec<String>,
}

impl Claimer {
    pub fn new(
        backend: Backend,
        workers: u32,
        worker_id: u32,
        owner: String,
        max_source: u64,
        max_payload: u64,
    ) -> Claimer {
        let mut c = Claimer { workers, worker_id, owner, backend, max_source, max_payload, own: Vec::new() };
        c.own = (0..=MAX_BATCH.trailing_zeros()).map(|i| c.text(worker_id, 1 << i)).collect();
        c
    }

    fn text(&self, shard: u32, limit: usize) -> String {
        (self.backend.sql().claim)(self.workers, shard, limit, self.max_source, self.max_payload)
    }

    fn statement(&self, shard: u32, limit: usize) -> Cow<'_, str> {
        if shard == self.worker_id {
            Cow::Borrowed(&self.own[limit.ilog2() as usize])
        } else {
            Cow::Owned(self.text(shard, limit))
        }
    }

    /// Builds the fleet's pending-shard index if it is not there yet, under the
    /// backend's lock, so two workers starting together build it once. On a large
    /// table it holds off writes to `videos` while it runs (once per fleet size).
    pub async fn ensure_index(&self, conn: &mut dyn Conn) -> Result<(), DbError> {
        let sql = self.backend.sql();
        let name = shard_index_name(self.workers);
        if conn.scalar(sql.index_exists, args![name.as_str()]).await?.int() == Some(1) {
            return Ok(());
        }
        let create = (sql.shard_index)(&name, self.workers);
        retrying!(conn, |c| {
            let mut tx = c.begin_under(super::conn::Begin::Write, sql.index_lock).await?;
            // Another worker may have built it while this one waited for the lock.
            if tx.scalar(sql.index_exists, args![name.as_str()]).await?.int() != Some(1) {
                tx.execute(&create, &[]).await?;
            }
            tx.commit().await
        })?;
        if !sql.analyze.is_empty() {
            // Statistics for the index's expression, for the planner's choice of the
            // index's order over a sort. Only a cost if it fails, so ignored.
            let _ = conn.execute(sql.analyze, &[]).await;
        }
        Ok(())
    }

    /// Claims `batch_size(want)` due videos of shard `shard` at most, leasing them until
    /// `now + lease`. Fewer than that means nothing more is due there now.
    pub async fn claim(
        &self,
        conn: &mut dyn Conn,
        shard: u32,
        want: usize,
        now: i64,
        lease: Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        let want = batch_size(want);
        if want == 0 || shard >= self.workers {
            return Ok(Vec::new());
        }
        let token: i64 = rand::rng().random_range(1..i64::MAX);
        let expires = now + lease.as_millis() as i64;
        let text = self.statement(shard, want);
        let rows = conn.fetch(&text, args![self.owner.as_str(), token, expires, now]).await?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let source = r.vals[1].take_text();
                let payload = r.vals[2].take_text();
                let (source_kind, payload_kind) = (r.text(6), r.text(7));
                let rejected = if source.is_none() {
                    Some(unusable("source", &source_kind, r.int(4), self.max_source))
                } else if payload.is_none() && payload_kind != "null" {
                    Some(unusable("payload", &payload_kind, r.int(5), self.max_payload))
                } else {
                    None
                };
                Claimed {
                    video_id: r.int(0),
                    source: source.unwrap_or_default(),
                    payload,
                    attempt: r.int(3) as u32,
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
pub(crate) fn shard_index_name(workers: u32) -> String {
    format!("videos_pending_mod{workers}")
}

/// The text of the claim statement for a batch of `want`, as a session `worker_id` of
/// `workers` runs it on PostgreSQL: for tests that `EXPLAIN` it (`storage::testing`).
#[cfg(feature = "testing")]
pub(crate) fn postgres_claim_statement(workers: u32, worker_id: u32, want: usize) -> String {
    let spec = super::ShardSpec::new(workers, worker_id);
    let claimer = Claimer::new(Backend::Postgres, workers, worker_id, String::new(), spec.max_source, spec.max_payload);
    claimer.statement(worker_id, batch_size(want.max(1))).into_owned()
}
