//! The batch summary printed at the end of `--exit-when-done`, in the spirit of the
//! seeds' batch report. Every number is read from the database, but for the run's
//! restarts and kills, which the fleet kept as it recorded them (their events keep only
//! words, so a worker's memory kill is told by its cause here, not by its text).

use std::time::Duration;

use shared::storage::{FleetRun, Store};

use super::config::{FleetConfig, Layout};
use super::end::RunEnd;
use super::records::Incident;
use crate::memory_mode::MemoryMode;

/// The summary of `run`, which ended as `end` after `took`, in `layout`.
pub async fn build(
    db: &Store,
    run: &FleetRun,
    config: &FleetConfig,
    layout: &Layout,
    took: Duration,
    history: &[Incident],
    end: RunEnd,
) -> anyhow::Result<String> {
    // With --worker-ids the summary is of this supervisor's shards; the attempts of the
    // run's time span are the whole fleet's (other hosts' included), and said so.
    let ids = run.ids();
    let partial = run.worker_ids.is_some();
    let shards = db.shard_progress(layout.workers).await?;
    let own = || shards.iter().enumerate().filter(|(k, _)| ids.contains(*k as u32));
    let (done, failed, total) = own().fold((0, 0, 0), |(d, f, t), (_, c)| (d + c.done, f + c.failed, t + c.total()));
    // This run's attempts: those that started after it began.
    let this_run = db.run_totals(run.started_at, layout.workers).await?;
    let (finished_this_run, attempts, warned) = (this_run.finished, this_run.attempts(), this_run.warned);
    let secs = took.as_secs_f64().max(0.001);
    // Handlers killed for memory fail their attempt with outcome 'memory' (whoever
    // killed them: the kernel in a cgroup, or our sampler); workers killed for memory
    // are restarts (or kills on the way out) whose cause says so.
    let handler_kills = this_run.memory_kills;
    let worker_kills = history.iter().filter(|i| i.worker_memory_kill).count() as u64;
    let memory_kills = handler_kills + worker_kills;

    let mut out = String::new();
    out.push_str("== shardfleet run summary ==\n");
    let workers = if partial { format!("{ids} of {}", layout.workers) } else { layout.workers.to_string() };
    out.push_str(&format!(
        "mode: batch (--exit-when-done) · workers: {workers} · concurrency: {} per worker · handler: {}\n",
        config.job.concurrency, run.handler
    ));
    out.push_str(&format!(
        "memory limit: {} per worker, enforced by {}\n",
        config.mem_limit,
        MemoryMode::enforced_by_word(&run.mem_enforce)
    ));
    out.push_str(&format!("total time: {:.1}s\n", secs));
    let of = if partial { format!(" (shards {ids})") } else { String::new() };
    out.push_str(&format!("videos{of}: {done} done, {failed} failed, {total} in all\n"));
    let span = if partial { "the whole fleet since this run began" } else { "this run" };
    out.push_str(&format!(
        "{span}: {finished_this_run} videos finished in {attempts} attempts · {:.1} videos/s · average {} per video\n",
        finished_this_run as f64 / secs,
        this_run.avg_done_ms.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into()),
    ));
    if warned > 0 {
        out.push_str(&format!(
            "warnings: {warned} videos succeeded with warnings on stderr; `supervisor export --warnings` lists them\n"
        ));
    }
    out.push_str("per worker:\n");
    for (k, c) in own() {
        let (att, avg) = this_run.shard(k as u32).map(|s| (s.attempts, s.avg_done_ms)).unwrap_or((0, None));
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
        RunEnd::AllDone if partial => format!("result: every video of shards {ids} is done (exit 0)"),
        RunEnd::AllDone => "result: every video is done (exit 0)".to_string(),
        RunEnd::SomeFailed => {
            format!("result: {failed} videos failed (exit 3); `supervisor export --status failed` lists them")
        }
        RunEnd::WorkersErrored => "result: work is left that only errored workers could do (exit 4)".to_string(),
        RunEnd::Stopped => "result: stopped before the work was done".to_string(),
    });
    Ok(out)
}
