//! Leases on PostgreSQL: renewing, taking back lapsed ones and handing back a stopping
//! or dead worker's. As on SQLite, the claims concerned are read, the retry policy
//! decides what becomes of each, and the decisions are written in one statement, fenced:
//! a row changes only while it is still running under the same claim token (and, for a
//! lapsed lease, still lapsed), so a worker that finished or renewed in between keeps
//! what it did.

use sqlx::{PgConnection, Row};

use super::PgStore;
use super::finish::storable;
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, VideoStatus};
use crate::storage::busy::retry_busy;
use crate::storage::lease::{Held, Settle, owner_pattern};

pub async fn renew_owner(conn: &mut PgConnection, owner: &str, expires_at: i64) -> Result<u64, DbError> {
    let r = sqlx::query(
        "UPDATE videos SET lease_expires_at = $1 WHERE status = 'running' AND lease_owner = $2 AND lease_expires_at < $1",
    )
    .bind(expires_at)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

const HELD_COLUMNS: &str = "SELECT video_id, lease_token, attempts, lease_owner, started_at FROM videos";

fn held(rows: Vec<sqlx::postgres::PgRow>) -> Vec<Held> {
    rows.into_iter()
        .map(|r| Held {
            video_id: r.get(0),
            token: r.get(1),
            attempts: r.get(2),
            owner: r.get(3),
            started_at: r.get(4),
        })
        .collect()
}

/// Takes back shard `worker_id`'s videos whose lease lapsed before `now`, except those
/// `own` holds. The shard's modulus is a bound value here: the sweep reads the small
/// running index, not the pending one.
pub async fn reclaim_expired(
    conn: &mut PgConnection,
    workers: u32,
    worker_id: u32,
    own: &str,
    now: i64,
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{HELD_COLUMNS} WHERE status = 'running' AND lease_expires_at < $1 AND video_id % $2 = $3 AND lease_owner <> $4"
    )))
    .bind(now)
    .bind(i64::from(workers))
    .bind(i64::from(worker_id))
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

/// Hands back every running video whose owner matches the LIKE pattern `owner_like`.
pub async fn release_matching(
    conn: &mut PgConnection,
    owner_like: &str,
    now: i64,
    (ending, outcome): (Ending, Outcome),
    error: &str,
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(format!("{HELD_COLUMNS} WHERE status = 'running' AND lease_owner LIKE $1")))
            .bind(owner_like)
            .fetch_all(&mut *conn)
            .await?;
    let settles: Vec<Settle> =
        held(rows).iter().map(|h| Settle::of(h, policy, ending, outcome, error.to_string(), now, None)).collect();
    settle(conn, &settles).await
}

const SETTLE: &str = "UPDATE videos v SET \
       status = j.status, attempts = v.attempts - j.give_back, last_outcome = j.outcome, last_error = j.error, \
       run_after = j.run_after, finished_at = j.finished_at, duration_ms = j.duration_ms, \
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
     FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], \
                 $8::BIGINT[], $9::BIGINT[], $10::BIGINT[]) \
          AS j(video_id, token, status, give_back, outcome, error, run_after, finished_at, duration_ms, lapsed_before) \
     WHERE v.video_id = j.video_id AND v.status = 'running' AND v.lease_token IS NOT DISTINCT FROM j.token \
       AND (j.lapsed_before IS NULL OR v.lease_expires_at < j.lapsed_before) \
     RETURNING v.video_id, v.status";

async fn settle(conn: &mut PgConnection, rows: &[Settle]) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let settled: Vec<(i64, String)> = sqlx::query_as(SETTLE)
        .bind(rows.iter().map(|s| s.video_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.token).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.status.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.give_back).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| storable(&s.error).into_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.run_after).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.finished_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.duration_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|s| s.lapsed_before).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    Ok(settled.into_iter().map(|(id, status)| (id, status.parse().unwrap_or(VideoStatus::Pending))).collect())
}

impl PgStore {
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
