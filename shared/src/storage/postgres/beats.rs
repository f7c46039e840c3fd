//! Worker heartbeats on PostgreSQL (`worker_beats`, see `storage::beats`).

use sqlx::PgConnection;

use crate::error::DbError;
use crate::storage::beats::Beat;

/// Writes worker `worker_id`'s beat in a fleet of `workers`.
pub async fn beat(
    conn: &mut PgConnection,
    workers: u32,
    worker_id: u32,
    owner: &str,
    now: i64,
    lease_ms: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO worker_beats (workers, worker_id, owner, beat_at, lease_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workers, worker_id) DO UPDATE SET owner = excluded.owner, beat_at = excluded.beat_at, \
         lease_ms = excluded.lease_ms",
    )
    .bind(i64::from(workers))
    .bind(i64::from(worker_id))
    .bind(owner)
    .bind(now)
    .bind(lease_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every beat of a fleet of `workers`, by worker id.
pub async fn beats(conn: &mut PgConnection, workers: u32) -> Result<Vec<Beat>, DbError> {
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT worker_id, owner, beat_at, lease_ms FROM worker_beats WHERE workers = $1 ORDER BY worker_id",
    )
    .bind(i64::from(workers))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(worker_id, owner, beat_at, lease_ms)| Beat { worker_id: worker_id as u32, owner, beat_at, lease_ms })
        .collect())
}
