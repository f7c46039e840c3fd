//! Counting videos by status. A full scan: used at start, on periodic resyncs and by
//! the admin commands, never per HTTP request.

use sqlx::{Row, SqliteConnection};

use super::lease::parse_status;
use crate::error::DbError;
use crate::status::ShardCounts;

/// Videos of shard `worker_id` (of `workers`) by status.
pub async fn shard_counts(conn: &mut SqliteConnection, workers: u32, worker_id: u32) -> Result<ShardCounts, DbError> {
    let rows = sqlx::query("SELECT status, count(*) FROM videos WHERE video_id % ?1 = ?2 GROUP BY status")
        .bind(workers)
        .bind(worker_id)
        .fetch_all(conn)
        .await?;
    let mut counts = ShardCounts::default();
    for r in rows {
        *counts.get_mut(parse_status(r.get(0))) = r.get::<i64, _>(1) as u64;
    }
    Ok(counts)
}
