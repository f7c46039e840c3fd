//! A run's totals on SQLite: a few aggregates over the attempts table.

use super::SqliteStore;
use crate::error::DbError;
use crate::storage::busy::retry_busy;
use crate::storage::{RunTotals, ShardAttempts};

impl SqliteStore {
    pub(crate) async fn run_totals(&self, since: i64, workers: u32) -> Result<RunTotals, DbError> {
        retry_busy(|| async {
            let pool = self.pool();
            let shards: Vec<(i64, i64, Option<f64>)> = sqlx::query_as(
                "SELECT video_id % ?1 AS shard, count(*), avg(CASE WHEN outcome = 'done' THEN duration_ms END) \
                 FROM attempts WHERE started_at >= ?2 GROUP BY shard ORDER BY shard",
            )
            .bind(workers)
            .bind(since)
            .fetch_all(pool)
            .await?;
            let finished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM videos WHERE status IN ('done', 'failed') AND finished_at >= ?",
            )
            .bind(since)
            .fetch_one(pool)
            .await?;
            let avg_done_ms: Option<f64> =
                sqlx::query_scalar("SELECT avg(duration_ms) FROM attempts WHERE outcome = 'done' AND started_at >= ?")
                    .bind(since)
                    .fetch_one(pool)
                    .await?;
            let warned: i64 =
                sqlx::query_scalar("SELECT count(*) FROM attempts WHERE warnings IS NOT NULL AND started_at >= ?")
                    .bind(since)
                    .fetch_one(pool)
                    .await?;
            let memory_kills: i64 =
                sqlx::query_scalar("SELECT count(*) FROM attempts WHERE outcome = 'memory' AND started_at >= ?")
                    .bind(since)
                    .fetch_one(pool)
                    .await?;
            Ok(RunTotals {
                shards: shards
                    .into_iter()
                    .map(|(shard, attempts, avg_done_ms)| ShardAttempts {
                        shard: shard as u32,
                        attempts: attempts as u64,
                        avg_done_ms,
                    })
                    .collect(),
                finished: finished as u64,
                avg_done_ms,
                warned: warned as u64,
                memory_kills: memory_kills as u64,
            })
        })
        .await
    }
}
