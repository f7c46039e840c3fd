//! Leases on SQLite: renewing the ones a live worker holds, taking back the ones whose
//! worker stopped renewing, and handing back the ones a stopping (or dead) worker held.
//!
//! Taking back and handing back read the claims concerned, let the retry policy decide
//! what becomes of each (`crate::retry`), and write those decisions in one statement per
//! chunk, fenced like a finish: a row changes only while it is still running under the
//! same claim token (and, for a lapsed lease, still lapsed), so a worker that finished or
//! renewed in between keeps what it did.

use std::sync::OnceLock;

use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use super::SqliteStore;
use super::finish::{CHUNK_SIZES, chunk_size};
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, VideoStatus};
use crate::storage::busy::retry_busy;
use crate::storage::lease::{Held, Settle, owner_pattern};

/// Extends every lease `owner` holds to `expires_at`. One statement however many videos
/// the worker runs; returns how many it renewed.
pub async fn renew_owner(conn: &mut SqliteConnection, owner: &str, expires_at: i64) -> Result<u64, DbError> {
    let r = sqlx::query(
        "UPDATE videos SET lease_expires_at = ?1 WHERE status = 'running' AND lease_owner = ?2 AND lease_expires_at < ?1",
    )
    .bind(expires_at)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

const HELD_COLUMNS: &str = "SELECT video_id, lease_token, attempts, lease_owner, started_at FROM videos";

/// Rows written by other tools may hold anything: what does not decode reads as absent
/// rather than panicking (the write is fenced on what was read, so nothing is lost).
fn held(rows: Vec<sqlx::sqlite::SqliteRow>) -> Vec<Held> {
    rows.into_iter()
        .map(|r| Held {
            video_id: r.get(0),
            token: r.try_get(1).ok().flatten(),
            attempts: r.try_get(2).unwrap_or(0),
            owner: r.try_get(3).ok().flatten(),
            started_at: r.try_get(4).ok().flatten(),
        })
        .collect()
}

/// Takes back the videos of shard `worker_id` whose lease lapsed before `now`, except
/// those `own` holds: a live worker whose renewal was held up (a long lock held by
/// someone else) must not take back the jobs it is still running. Their worker is gone,
/// so `policy` decides as for a lost worker. Returns each video taken back with its new
/// status.
pub async fn reclaim_expired(
    conn: &mut SqliteConnection,
    workers: u32,
    worker_id: u32,
    own: &str,
    now: i64,
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{HELD_COLUMNS} WHERE status = 'running' AND lease_expires_at < ?1 AND video_id % ?2 = ?3 \
         AND lease_owner <> ?4"
    )))
    .bind(now)
    .bind(workers)
    .bind(worker_id)
    .bind(own)
    .fetch_all(&mut *conn)
    .await?;
    let settles: Vec<Settle> = held(rows)
        .into_iter()
        .map(|h| {
            let error = format!("lease expired: {} stopped renewing it", h.owner.as_deref().unwrap_or("?"));
            Settle::of(&h, policy, Ending::WorkerGone, Outcome::Expired, error, now, Some(now))
        })
        .collect();
    settle(conn, &settles).await
}

/// Hands back every running video whose owner matches `owner_like` (a LIKE pattern such
/// as `worker-1/4242:%`, the owner names of one process; an owner name is its own
/// pattern), recording `outcome` and `error`. `ending` says why: a worker stopping on
/// request hands back its attempts, a dead one's count; `policy` decides the rest.
pub async fn release_matching(
    conn: &mut SqliteConnection,
    owner_like: &str,
    now: i64,
    (ending, outcome): (Ending, Outcome),
    error: &str,
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows = sqlx::query(AssertSqlSafe(format!("{HELD_COLUMNS} WHERE status = 'running' AND lease_owner LIKE ?1")))
        .bind(owner_like)
        .fetch_all(&mut *conn)
        .await?;
    let settles: Vec<Settle> =
        held(rows).iter().map(|h| Settle::of(h, policy, ending, outcome, error.to_string(), now, None)).collect();
    settle(conn, &settles).await
}

/// Parameters a row of the settling statement.
const SETTLE_PARAMS: usize = 10;

fn settle_statement(rows: usize) -> &'static str {
    static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = STATEMENTS.get_or_init(|| {
        CHUNK_SIZES
            .iter()
            .map(|&n| {
                let row = format!("({})", ["?"; SETTLE_PARAMS].join(","));
                let values = vec![row; n].join(",");
                format!(
                    "UPDATE videos SET \
                       status = j.column3, attempts = attempts - j.column4, last_outcome = j.column5, \
                       last_error = j.column6, run_after = j.column7, finished_at = j.column8, \
                       duration_ms = j.column9, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
                     FROM (VALUES {values}) AS j \
                     WHERE videos.video_id = j.column1 AND videos.status = 'running' \
                       AND videos.lease_token IS j.column2 \
                       AND (j.column10 IS NULL OR videos.lease_expires_at < j.column10) \
                     RETURNING videos.video_id, videos.status"
                )
            })
            .collect()
    });
    let i = CHUNK_SIZES.iter().position(|&n| n == rows).expect("rows is one of CHUNK_SIZES");
    &all[i]
}

/// Writes settled claims; returns each video whose write took effect, with its status.
async fn settle(conn: &mut SqliteConnection, rows: &[Settle]) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let mut settled = Vec::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let size = chunk_size(rest.len());
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        let mut q = sqlx::query(AssertSqlSafe(settle_statement(size)));
        for s in chunk {
            q = q
                .bind(s.video_id)
                .bind(s.token)
                .bind(s.status.as_str())
                .bind(s.give_back)
                .bind(s.outcome.as_str())
                .bind(s.error.as_str())
                .bind(s.run_after)
                .bind(s.finished_at)
                .bind(s.duration_ms)
                .bind(s.lapsed_before);
        }
        for _ in 0..(size - chunk.len()) * SETTLE_PARAMS {
            q = q.bind(None::<i64>);
        }
        for r in q.fetch_all(&mut *conn).await? {
            settled.push((r.get(0), parse_status(r.get(1))));
        }
        rest = tail;
    }
    Ok(settled)
}

impl SqliteStore {
    pub(crate) async fn release_process(
        &self,
        worker_id: u32,
        pid: u32,
        outcome: Outcome,
        error: &str,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        let pattern = owner_pattern(worker_id, pid);
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            release_matching(&mut conn, &pattern, now, (Ending::WorkerGone, outcome), error, policy).await
        })
        .await
    }
}

pub(crate) fn parse_status(s: &str) -> VideoStatus {
    s.parse().unwrap_or(VideoStatus::Pending)
}
