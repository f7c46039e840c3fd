//! Leases: renewing the ones a live worker holds, taking back the ones whose worker
//! stopped renewing, and handing back the ones a stopping (or dead) worker held.

use sqlx::{Row, SqliteConnection};

use crate::error::DbError;
use crate::status::{Outcome, VideoStatus};

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

/// Takes back the videos of shard `worker_id` whose lease lapsed before `now`, except
/// those `own` holds: a live worker whose renewal was held up (a long lock held by
/// someone else) must not take back the jobs it is still running. The lapsed attempt
/// counts: the video goes back to pending (due at once) or, if that was its last
/// attempt, to failed. Returns each video taken back with its new status.
pub async fn reclaim_expired(
    conn: &mut SqliteConnection,
    workers: u32,
    worker_id: u32,
    own: &str,
    now: i64,
    max_attempts: u32,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows = sqlx::query(
        "UPDATE videos SET \
           status = CASE WHEN attempts >= ?3 THEN 'failed' ELSE 'pending' END, \
           last_outcome = 'expired', \
           last_error = 'lease expired: ' || COALESCE(lease_owner, '?') || ' stopped renewing it', \
           finished_at = ?1, duration_ms = ?1 - started_at, run_after = ?1, \
           lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE status = 'running' AND lease_expires_at < ?1 AND video_id % ?4 = ?2 AND lease_owner <> ?5 \
         RETURNING video_id, status",
    )
    .bind(now)
    .bind(worker_id)
    .bind(max_attempts)
    .bind(workers)
    .bind(own)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), parse_status(r.get(1)))).collect())
}

/// Hands back every video `owner` holds (see `release_matching`).
pub async fn release_owner(
    conn: &mut SqliteConnection,
    owner: &str,
    now: i64,
    outcome: Outcome,
    error: &str,
    max_attempts: u32,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    // Owner names hold no LIKE wildcards, so the name is its own pattern.
    release_matching(conn, owner, now, outcome, error, max_attempts).await
}

/// Hands back every running video whose owner matches `owner_like` (a LIKE pattern such
/// as `worker-1/4242:%`, the owner names of one process).
///
/// `Outcome::Released` (a worker stopping on request) gives the attempt back: the video
/// is pending again with its attempt count as before the claim. Any other outcome (the
/// supervisor cleaning up after a worker that died) counts the attempt and fails the
/// video if it was its last.
pub async fn release_matching(
    conn: &mut SqliteConnection,
    owner_like: &str,
    now: i64,
    outcome: Outcome,
    error: &str,
    max_attempts: u32,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let rows = sqlx::query(
        "UPDATE videos SET \
           status = CASE WHEN ?5 AND attempts >= ?6 THEN 'failed' ELSE 'pending' END, \
           attempts = CASE WHEN ?5 THEN attempts ELSE attempts - 1 END, \
           last_outcome = ?3, last_error = ?4, \
           finished_at = ?1, duration_ms = ?1 - started_at, run_after = ?1, \
           lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE status = 'running' AND lease_owner LIKE ?2 \
         RETURNING video_id, status",
    )
    .bind(now)
    .bind(owner_like)
    .bind(outcome.as_str())
    .bind(error)
    .bind(outcome != Outcome::Released)
    .bind(max_attempts)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), parse_status(r.get(1)))).collect())
}

/// The LIKE pattern matching every lease owner name of worker `worker_id` running as
/// process `pid` (see the worker's runner for the name).
pub fn owner_pattern(worker_id: u32, pid: u32) -> String {
    format!("worker-{worker_id}/{pid}:%")
}

/// The lease owner name of a worker process; `nonce` tells apart two processes that
/// got the same pid.
pub fn owner_name(worker_id: u32, pid: u32, nonce: u32) -> String {
    format!("worker-{worker_id}/{pid}:{nonce:x}")
}

pub(crate) fn parse_status(s: &str) -> VideoStatus {
    s.parse().unwrap_or(VideoStatus::Pending)
}
