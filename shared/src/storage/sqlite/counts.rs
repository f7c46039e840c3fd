//! Counting videos by shard and status on SQLite, without counting the table.
//!
//! `video_counts` (migration 0003) holds the number of videos per `(shard, status)` for
//! one recorded layout, `shard = video_id % workers`, and triggers on `videos` keep it
//! exact in the same statement as every insert, status change, id change and delete,
//! whoever writes (the fleet, `wrangler d1 execute`, an app). A reader asking for the
//! recorded layout, or for totals under any layout, reads a handful of rows; a reader
//! asking for another layout, or a database this build has not migrated (`status` opens
//! read-only), falls back to a full count, as before.
//!
//! Why counts per layout rather than per status only, or per `video_id % M` for a fixed
//! large M: the fleet asks for one N at a time (status, the monitor, each worker's
//! resync), per-status totals alone cannot answer per shard, and a fixed M would make
//! every read sum thousands of rows and still miss N that do not divide M. A layout
//! change (a fleet started with another N) costs one full count, once, in one write
//! transaction (`ensure_count_layout`). The migration records layout 1, so totals are
//! kept from the start, before any fleet ran.
//!
//! Cost: each row whose status (or id) a statement changes fires one trigger that updates
//! two rows of a `4 N`-row table, found by rowid (`slot = shard * 4 + status`; a rowid
//! seek measured a third cheaper than a `(shard, status)` key, and cheaper than an
//! upsert); an insert or delete updates one. See docs/BENCHMARKS.md, section scale, for
//! what that costs a claim, a finish and an insert.

use sqlx::{Connection, Executor, Row, SqliteConnection};

use super::SqliteStore;
use super::lease::parse_status;
use crate::error::DbError;
use crate::status::{ShardCounts, VideoStatus};
use crate::storage::busy::{BusyRetry, retry_busy};

impl SqliteStore {
    pub(crate) async fn shard_progress(&self, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
        retry_busy(|| async { by_shard(&mut *self.pool().acquire().await?, workers).await }).await
    }

    pub(crate) async fn ensure_count_layout(&self, workers: u32) -> Result<bool, DbError> {
        ensure_count_layout(&mut *self.pool().acquire().await?, workers).await
    }

    /// One index probe, whatever the table's size.
    pub(crate) async fn has_videos(&self) -> Result<bool, DbError> {
        retry_busy(|| async {
            let any: i64 = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM videos)").fetch_one(self.pool()).await?;
            Ok(any == 1)
        })
        .await
    }
}

/// The counts as the table holds them: the layout they are kept for and one entry per
/// `(shard, status)` row.
struct Kept {
    workers: u32,
    rows: Vec<(i64, VideoStatus, u64)>,
}

impl Kept {
    fn shard(&self, shard: i64) -> ShardCounts {
        let mut c = ShardCounts::default();
        for &(s, status, n) in &self.rows {
            if s == shard {
                *c.get_mut(status) += n;
            }
        }
        c
    }

    fn total(&self) -> ShardCounts {
        let mut c = ShardCounts::default();
        for &(_, status, n) in &self.rows {
            *c.get_mut(status) += n;
        }
        c
    }
}

/// Reads the kept counts (of `only_shard`, or of every shard) with their layout, in one
/// statement so the two cannot disagree. `None` when the table is missing (a database
/// opened read-only that this build has not migrated) or records no layout.
async fn kept(conn: &mut SqliteConnection, only_shard: Option<u32>) -> Result<Option<Kept>, DbError> {
    let exists: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'video_counts_layout'")
            .fetch_one(&mut *conn)
            .await?;
    if exists == 0 {
        return Ok(None);
    }
    let rows = match only_shard {
        Some(k) => {
            sqlx::query(
                "SELECT l.workers, c.shard, c.status, c.videos FROM video_counts_layout l \
                 LEFT JOIN video_counts c ON c.shard = ?1",
            )
            .bind(k)
            .fetch_all(&mut *conn)
            .await?
        }
        None => sqlx::query(
            "SELECT l.workers, c.shard, c.status, c.videos FROM video_counts_layout l LEFT JOIN video_counts c ON 1",
        )
        .fetch_all(&mut *conn)
        .await?,
    };
    let Some(first) = rows.first() else { return Ok(None) };
    let workers = first.get::<i64, _>(0) as u32;
    let rows = rows
        .iter()
        .filter_map(|r| {
            let shard: Option<i64> = r.get(1);
            let status: Option<String> = r.get(2);
            let n: Option<i64> = r.get(3);
            Some((shard?, status?.parse().ok()?, n?.max(0) as u64))
        })
        .collect();
    Ok(Some(Kept { workers, rows }))
}

/// Videos of shard `worker_id` (of `workers`) by status: the kept counts when they are
/// kept for `workers`, otherwise a count of the shard's rows.
pub async fn shard_counts(conn: &mut SqliteConnection, workers: u32, worker_id: u32) -> Result<ShardCounts, DbError> {
    if let Some(kept) = kept(conn, Some(worker_id)).await?
        && kept.workers == workers
    {
        return Ok(kept.shard(worker_id.into()));
    }
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

/// Videos by shard (`video_id % workers`) and status, `workers` entries. Kept counts when
/// they are kept for `workers` (or `workers` is 1: totals, whatever the layout);
/// otherwise one scan of the table.
pub(crate) async fn by_shard(conn: &mut SqliteConnection, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    if let Some(kept) = kept(conn, None).await? {
        if kept.workers == workers {
            return Ok((0..workers).map(|k| kept.shard(k.into())).collect());
        }
        if workers == 1 {
            return Ok(vec![kept.total()]);
        }
    }
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT video_id % ?1, status, count(*) FROM videos GROUP BY 1, 2")
            .bind(workers)
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

/// Makes the counts kept for `workers` shards: if another layout (or none) is recorded,
/// recounts the table in one write transaction. Returns whether it recounted.
///
/// `supervisor start` calls it before starting its workers and a worker calls it when it
/// starts, so a worker run alone (systemd, Kubernetes) keeps its own counts too. The
/// layout is checked again under the write lock, so two starters never both recount.
/// A recount reads every row (about 4 s at 10 million videos on a slow machine).
pub async fn ensure_count_layout(conn: &mut SqliteConnection, workers: u32) -> Result<bool, DbError> {
    assert!(workers > 0, "config validation guarantees workers > 0");
    if kept_layout(conn).await? == Some(workers) {
        return Ok(false);
    }
    let mut busy = BusyRetry::new();
    loop {
        match recount(conn, workers).await {
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

async fn kept_layout(conn: &mut SqliteConnection) -> Result<Option<u32>, DbError> {
    let layout: Option<i64> =
        sqlx::query_scalar("SELECT workers FROM video_counts_layout").fetch_optional(&mut *conn).await?;
    Ok(layout.map(|n| n as u32))
}

async fn recount(conn: &mut SqliteConnection, workers: u32) -> Result<bool, DbError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    if kept_layout(&mut tx).await? == Some(workers) {
        return Ok(false);
    }
    tx.execute("DELETE FROM video_counts").await?;
    sqlx::query("INSERT OR REPLACE INTO video_counts_layout (id, workers) VALUES (1, ?1)")
        .bind(workers)
        .execute(&mut *tx)
        .await?;
    // Every slot of the layout exists (the triggers only update), numbered as the
    // triggers number them: shard * 4 + the status's place.
    sqlx::query(
        "INSERT INTO video_counts (slot, shard, status, videos) \
         WITH RECURSIVE shards(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM shards WHERE k + 1 < ?1) \
         SELECT k * 4 + s.column1, k, s.column2, 0 FROM shards, \
         (VALUES (0, 'pending'), (1, 'running'), (2, 'done'), (3, 'failed')) AS s",
    )
    .bind(workers)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE video_counts SET videos = c.n \
         FROM (SELECT video_id % ?1 AS shard, status, count(*) AS n FROM videos GROUP BY 1, 2) AS c \
         WHERE video_counts.shard = c.shard AND video_counts.status = c.status",
    )
    .bind(workers)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
