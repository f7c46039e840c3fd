//! The numbers of a run's summary (`--exit-when-done`) that only the attempts can tell:
//! attempts per shard, videos finished, average time, warnings and handlers killed for
//! memory, counting the attempts that started since the run began.

use super::Store;
use super::busy::run;
use super::conn::args;
use crate::error::DbError;

/// A run's attempts, from its start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunTotals {
    /// Shards that made attempts, by shard.
    pub shards: Vec<ShardAttempts>,
    /// Videos that ended done or failed since the run began.
    pub finished: u64,
    /// The average time of a successful attempt, in milliseconds.
    pub avg_done_ms: Option<f64>,
    /// Videos that succeeded with warnings (only done attempts carry them).
    pub warned: u64,
    /// Handlers killed for memory (outcome `memory`, whoever killed them).
    pub memory_kills: u64,
}

/// One shard's attempts of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardAttempts {
    pub shard: u32,
    pub attempts: u64,
    /// The average time of its successful attempts, in milliseconds.
    pub avg_done_ms: Option<f64>,
}

impl RunTotals {
    /// Attempts of every shard.
    pub fn attempts(&self) -> u64 {
        self.shards.iter().map(|s| s.attempts).sum()
    }

    /// Shard `k`'s attempts, if it made any.
    pub fn shard(&self, k: u32) -> Option<&ShardAttempts> {
        self.shards.iter().find(|s| s.shard == k)
    }
}

impl Store {
    /// The attempts that started at or after `since` (the run's start, Unix ms), shards
    /// taken as `video_id % workers`.
    pub async fn run_totals(&self, since: i64, workers: u32) -> Result<RunTotals, DbError> {
        run!(self, |c| {
            // DOUBLE PRECISION: PostgreSQL's avg of integers is NUMERIC; SQLite reads the
            // name as REAL.
            let shards = c
                .fetch(
                    "SELECT video_id % $1 AS shard, count(*), \
                     CAST(avg(duration_ms) FILTER (WHERE outcome = 'done') AS DOUBLE PRECISION) \
                     FROM attempts WHERE started_at >= $2 GROUP BY 1 ORDER BY 1",
                    args![workers, since],
                )
                .await?;
            let totals = c
                .fetch(
                    "SELECT (SELECT count(*) FROM videos WHERE status IN ('done', 'failed') AND finished_at >= $1), \
                     CAST(avg(duration_ms) FILTER (WHERE outcome = 'done') AS DOUBLE PRECISION), \
                     count(*) FILTER (WHERE warnings IS NOT NULL), \
                     count(*) FILTER (WHERE outcome = 'memory') \
                     FROM attempts WHERE started_at >= $1",
                    args![since],
                )
                .await?;
            let Some(t) = totals.first() else { return Ok(RunTotals::default()) };
            Ok(RunTotals {
                shards: shards
                    .iter()
                    .map(|r| ShardAttempts {
                        shard: r.int(0) as u32,
                        attempts: r.int(1) as u64,
                        avg_done_ms: r.real(2),
                    })
                    .collect(),
                finished: t.int(0) as u64,
                avg_done_ms: t.real(1),
                warned: t.int(2) as u64,
                memory_kills: t.int(3) as u64,
            })
        })
    }
}
