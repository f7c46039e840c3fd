//! Counting videos by shard and status on PostgreSQL, from the counts the triggers keep
//! (`video_counts`, for one recorded layout), as on SQLite: see `sqlite/counts.rs` for
//! why counts are kept per layout.

use sqlx::{Acquire, PgConnection};

use super::PgStore;
use crate::error::DbError;
use crate::status::{ShardCounts, VideoStatus};
use crate::storage::busy::{BusyRetry, retry_busy};

impl PgStore {
    pub(crate) async fn shard_progress(&self, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
        retry_busy(|| async { by_shard(&mut *self.pool().acquire().await?, workers).await }).await
    }

    pub(crate) async fn ensure_count_layout(&self, workers: u32) -> Result<bool, DbError> {
        assert!(workers > 0, "config validation guarantees workers > 0");
        let mut conn = self.pool().acquire().await?;
        if kept_layout(&mut conn).await? == Some(workers) {
            return Ok(false);
        }
        let mut busy = BusyRetry::new();
        loop {
            match recount(&mut conn, workers).await {
                Err(e) => busy.wait(e).await?,
                Ok(recounted) => {
                    if recounted {
                        tracing::info!(workers, "counted the videos by shard for this layout");
                    }
                    return Ok(recounted);
                }
            }
        }
    }

    pub(crate) async fn has_videos(&self) -> Result<bool, DbError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM videos)").fetch_one(self.pool()).await?)
    }
}

/// A kept count as read: layout, then shard, status and videos (absent when the layout
/// has no rows yet).
type KeptRow = (i64, Option<i64>, Option<String>, Option<i64>);

/// Counts by shard and status.
type Counted = Vec<(i64, VideoStatus, u64)>;

/// The kept counts (of `only_shard`, or of every shard) with their layout, read in one
/// statement so the two cannot disagree.
async fn kept(conn: &mut PgConnection, only_shard: Option<u32>) -> Result<Option<(u32, Counted)>, DbError> {
    let rows: Vec<KeptRow> = sqlx::query_as(
        "SELECT l.workers, c.shard, c.status, c.videos FROM video_counts_layout l \
         LEFT JOIN video_counts c ON $1::BIGINT IS NULL OR c.shard = $1",
    )
    .bind(only_shard.map(i64::from))
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let workers = first.0 as u32;
    let rows = rows
        .into_iter()
        .filter_map(|(_, shard, status, n)| Some((shard?, status?.parse().ok()?, n?.max(0) as u64)))
        .collect();
    Ok(Some((workers, rows)))
}

fn sum(rows: &[(i64, VideoStatus, u64)], shard: Option<i64>) -> ShardCounts {
    let mut c = ShardCounts::default();
    for &(s, status, n) in rows {
        if shard.is_none_or(|k| k == s) {
            *c.get_mut(status) += n;
        }
    }
    c
}

pub async fn shard_counts(conn: &mut PgConnection, workers: u32, worker_id: u32) -> Result<ShardCounts, DbError> {
    if let Some((layout, rows)) = kept(conn, Some(worker_id)).await?
        && layout == workers
    {
        return Ok(sum(&rows, Some(worker_id.into())));
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM videos WHERE video_id % $1 = $2 GROUP BY status")
            .bind(i64::from(workers))
            .bind(i64::from(worker_id))
            .fetch_all(conn)
            .await?;
    let mut counts = ShardCounts::default();
    for (status, n) in rows {
        if let Ok(s) = status.parse() {
            *counts.get_mut(s) = n as u64;
        }
    }
    Ok(counts)
}

pub(crate) async fn by_shard(conn: &mut PgConnection, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    if let Some((layout, rows)) = kept(conn, None).await? {
        if layout == workers {
            return Ok((0..workers).map(|k| sum(&rows, Some(k.into()))).collect());
        }
        if workers == 1 {
            return Ok(vec![sum(&rows, None)]);
        }
    }
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT video_id % $1, status, count(*) FROM videos GROUP BY 1, 2")
            .bind(i64::from(workers))
            .fetch_all(conn)
            .await?;
    let mut shards = vec![ShardCounts::default(); workers as usize];
    for (shard, status, n) in rows {
        if let (Some(c), Ok(s)) = (shards.get_mut(shard as usize), status.parse()) {
            *c.get_mut(s) = n as u64;
        }
    }
    Ok(shards)
}

async fn kept_layout(conn: &mut PgConnection) -> Result<Option<u32>, DbError> {
    let layout: Option<i64> =
        sqlx::query_scalar("SELECT workers FROM video_counts_layout").fetch_optional(&mut *conn).await?;
    Ok(layout.map(|n| n as u32))
}

/// Recounts for `workers` shards. The SHARE ROW EXCLUSIVE lock on `videos` waits for
/// writers in flight and holds off new ones until the counts are in, so the recount is
/// exact; it conflicts with itself, so two starters never both recount.
async fn recount(conn: &mut PgConnection, workers: u32) -> Result<bool, DbError> {
    let mut tx = conn.begin().await?;
    sqlx::query("LOCK TABLE videos IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    if kept_layout(&mut tx).await? == Some(workers) {
        return Ok(false);
    }
    sqlx::query("DELETE FROM video_counts").execute(&mut *tx).await?;
    sqlx::query("UPDATE video_counts_layout SET workers = $1").bind(i64::from(workers)).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO video_counts (shard, status, videos) \
         SELECT k, s.status, coalesce(c.n, 0) \
         FROM generate_series(0, $1 - 1) AS k \
         CROSS JOIN (VALUES ('pending'), ('running'), ('done'), ('failed')) AS s(status) \
         LEFT JOIN (SELECT video_id % $1 AS shard, status, count(*) AS n FROM videos GROUP BY 1, 2) c \
                ON c.shard = k AND c.status = s.status",
    )
    .bind(i64::from(workers))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
