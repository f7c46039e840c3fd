//! A run's totals on PostgreSQL: a few aggregates over the attempts table.

use super::PgStore;
use crate::error::DbError;
use crate::storage::busy::retry_busy;
use crate::storage::{RunTotals, ShardAttempts};

impl PgStore {
    pub(crate) async fn run_totals(&self, since: i64, workers: u32) -> Result<RunTotals, DbError> {
        retry_busy(|| async {
            let pool = self.pool();
            let shards: Vec<(i64, i64, Option<f64>)> = sqlx::query_as(
                "SELECT video_id % $1 AS shard, count(*), avg(CASE WHEN outcome = 'done' THEN duration_ms END)::FLOAT8 \
                 FROM attempts WHERE started_at >= $2 GROUP BY shard ORDER BY shard",
            )
            .bind(i64::from(workers))
            .bind(since)
            .fetch_all(pool)
            .await?;
            let (finished, avg_done_ms, warned, memory_kills): (i64, Option<f64>, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM videos WHERE status IN ('done', 'failed') AND finished_at >= $1), \
                        avg(duration_ms) FILTER (WHERE outcome = 'done')::FLOAT8, \
                        count(*) FILTER (WHERE warnings IS NOT NULL), \
                        count(*) FILTER (WHERE outcome = 'memory') \
                 FROM attempts WHERE started_at >= $1",
            )
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
