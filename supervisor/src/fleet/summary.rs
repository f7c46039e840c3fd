//! The batch summary printed at the end of `--exit-when-done`, in the spirit of the
//! seeds' batch report. Every number is read from the database, but for the run's
//! restarts and kills, which the fleet kept as it recorded them (their events keep only
//! words, so a worker's memory kill is told by its cause here, not by its text).

use std::time::Duration;

use shared::storage::Db;
use shared::storage::fleet::{self, FleetRun};

use super::RunEnd;
use super::records::Incident;
use crate::cli::StartArgs;

pub async fn build(
    db: &Db,
    run: &FleetRun,
    args: &StartArgs,
    took: Duration,
    history: &[Incident],
    end: RunEnd,
) -> anyhow::Result<String> {
    let pool = db.pool();
    let shards = fleet::shard_progress(pool, args.workers).await?;
    let (done, failed, total) = shards.iter().fold((0, 0, 0), |(d, f, t), c| (d + c.done, f + c.failed, t + c.total()));
    // This run's attempts: those that started after it began.
    let per_worker: Vec<(i64, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT video_id % ?1 AS shard, count(*), sum(outcome = 'done'), avg(CASE WHEN outcome = 'done' THEN duration_ms END) \
         FROM attempts WHERE started_at >= ?2 GROUP BY shard ORDER BY shard",
    )
    .bind(args.workers)
    .bind(run.started_at)
    .fetch_all(pool)
    .await?;
    let finished_this_run: i64 =
        sqlx::query_scalar("SELECT count(*) FROM videos WHERE status IN ('done', 'failed') AND finished_at >= ?")
            .bind(run.started_at)
            .fetch_one(pool)
            .await?;
    let avg_ms: Option<f64> =
        sqlx::query_scalar("SELECT avg(duration_ms) FROM attempts WHERE outcome = 'done' AND started_at >= ?")
            .bind(run.started_at)
            .fetch_one(pool)
            .await?;
    // Only done attempts carry warnings (an exec handler's stderr on success).
    let warned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM attempts WHERE warnings IS NOT NULL AND started_at >= ?")
            .bind(run.started_at)
            .fetch_one(pool)
            .await?;
    let attempts: i64 = per_worker.iter().map(|w| w.1).sum();
    let secs = took.as_secs_f64().max(0.001);
    // Handlers killed for memory fail their attempt with outcome 'memory' (whoever
    // killed them: the kernel in a cgroup, or our sampler); workers killed for memory
    // are restarts (or kills on the way out) whose cause says so.
    let handler_kills: i64 =
        sqlx::query_scalar("SELECT count(*) FROM attempts WHERE outcome = 'memory' AND started_at >= ?")
            .bind(run.started_at)
            .fetch_one(pool)
            .await?;
    let worker_kills = history.iter().filter(|i| i.worker_memory_kill).count() as i64;
    let memory_kills = handler_kills + worker_kills;

    let mut out = String::new();
    out.push_str("== shardfleet run summary ==\n");
    out.push_str(&format!(
        "mode: batch (--exit-when-done) · workers: {} · concurrency: {} per worker · handler: {}\n",
        args.workers, args.job.concurrency, run.handler
    ));
    out.push_str(&format!(
        "memory limit: {} per worker, enforced by {}\n",
        args.mem_limit,
        crate::status::enforce_words(&run.mem_enforce)
    ));
    out.push_str(&format!("total time: {:.1}s\n", secs));
    out.push_str(&format!("videos: {done} done, {failed} failed, {total} in all\n"));
    out.push_str(&format!(
        "this run: {finished_this_run} videos finished in {attempts} attempts · {:.1} videos/s · average {} per video\n",
        finished_this_run as f64 / secs,
        avg_ms.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into()),
    ));
    if warned > 0 {
        out.push_str(&format!(
            "warnings: {warned} videos succeeded with warnings on stderr; `supervisor export --warnings` lists them\n"
        ));
    }
    out.push_str("per worker:\n");
    for (k, c) in shards.iter().enumerate() {
        let row = per_worker.iter().find(|w| w.0 == k as i64);
        let (att, avg) = row.map(|w| (w.1, w.3)).unwrap_or((0, None));
        out.push_str(&format!(
            "  worker {k}: {} done, {} failed, {att} attempts this run, average {}\n",
            c.done,
            c.failed,
            avg.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into())
        ));
    }
    if history.is_empty() {
        out.push_str("restarts: none\n");
    } else {
        out.push_str(&format!("restarts and kills ({}):\n", history.len()));
        for h in history {
            out.push_str(&format!("  {h}\n"));
        }
    }
    out.push_str(&format!("memory-limit kills: {memory_kills} ({handler_kills} handlers, {worker_kills} workers)\n"));
    out.push_str(&match end {
        RunEnd::AllDone => "result: every video is done (exit 0)".to_string(),
        RunEnd::SomeFailed => {
            format!("result: {failed} videos failed (exit 3); `supervisor export --status failed` lists them")
        }
        RunEnd::WorkersErrored => "result: work is left that only errored workers could do (exit 4)".to_string(),
        RunEnd::Stopped => "result: stopped before the work was done".to_string(),
    });
    Ok(out)
}
