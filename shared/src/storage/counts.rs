//! Videos by shard and status, for `supervisor status`, the monitor, the done check and
//! the run summary: kept counts, so a reader reads a few rows instead of the table
//! (`sqlite/counts.rs` says how they are kept).

use super::Store;
use crate::error::DbError;
use crate::status::ShardCounts;

impl Store {
    /// Videos by shard (`video_id % workers`) and status, `workers` entries: the kept
    /// counts when they are kept for `workers` (or `workers` is 1: the totals, whatever
    /// the layout), else one scan of the table.
    pub async fn shard_progress(&self, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
        match self {
            Store::Sqlite(s) => s.shard_progress(workers).await,
            Store::Postgres(s) => s.shard_progress(workers).await,
        }
    }

    /// Every video by status, from the kept counts.
    pub async fn totals(&self) -> Result<ShardCounts, DbError> {
        Ok(self.shard_progress(1).await?.into_iter().next().unwrap_or_default())
    }

    /// Makes the counts kept for `workers` shards, recounting the table once if another
    /// layout (or none) is recorded. Returns whether it recounted. `supervisor start`
    /// calls it before starting its workers; a worker's shard session does too, so a
    /// worker run alone keeps its own counts.
    pub async fn ensure_count_layout(&self, workers: u32) -> Result<bool, DbError> {
        match self {
            Store::Sqlite(s) => s.ensure_count_layout(workers).await,
            Store::Postgres(s) => s.ensure_count_layout(workers).await,
        }
    }

    /// Whether there is any video at all (cheap, whatever the table's size).
    pub async fn has_videos(&self) -> Result<bool, DbError> {
        match self {
            Store::Sqlite(s) => s.has_videos().await,
            Store::Postgres(s) => s.has_videos().await,
        }
    }
}
