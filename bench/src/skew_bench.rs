//! `fleet-bench skew`: a skewed workload (half the shards' videos take 8 times as long)
//! under each `--steal` mode, against the ideal makespan: all the job time the run
//! recorded over all the fleet's slots. The elastic-fleet issue's goal: `--steal idle`
//! within 1.3 times the ideal, where static shards take up to 2 times.
//!
//! Each run is the real `supervisor start --exit-when-done` on a fresh SQLite file,
//! with `--exec 'sleep {source}'`, each video's source its duration in seconds. The
//! makespan is read from the history (the first attempt's start to the last one's end),
//! so the supervisor's own start and stop are not in it; the wall time from spawn to
//! exit is reported beside it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use shared::storage::{DbLocation, NewVideo, Store, testing};

use crate::pacing_bench::fleet_command;
use crate::postgres_bench::{Running, check_done};
use crate::{bin, free_port_run, median};

/// The goal for `--steal idle`, as a multiple of the ideal makespan.
const GOAL: f64 = 1.3;

/// What `fleet-bench skew` runs.
pub struct Options {
    pub workers: u32,
    pub concurrency: u32,
    pub videos: i64,
    /// A short video's duration; a long one takes `factor` times as long.
    pub short: Duration,
    pub factor: u32,
    /// The `--steal` modes, one row each.
    pub modes: Vec<String>,
}

struct Measured {
    makespan: f64,
    ideal: f64,
    wall: f64,
    /// Videos run by a worker other than their shard's.
    helped: usize,
}

pub async fn bench_skew(dir: &Path, runs: usize, opts: &Options) -> anyhow::Result<String> {
    let supervisor = bin("supervisor")?;
    let worker = bin("worker")?;
    let mut results: Vec<(String, Vec<Measured>)> = opts.modes.iter().map(|m| (m.clone(), Vec::new())).collect();
    for run in 1..=runs {
        for (mode, measured) in results.iter_mut() {
            eprintln!("run {run}/{runs}: --steal {mode}");
            let m = one_run(dir, &supervisor, &worker, opts, mode).await?;
            eprintln!(
                "  makespan {:.2} s, ideal {:.2} s ({:.2}x), wall {:.2} s, {} videos run by another shard's worker",
                m.makespan,
                m.ideal,
                m.makespan / m.ideal,
                m.wall,
                m.helped
            );
            measured.push(m);
        }
    }
    Ok(report(runs, opts, &results))
}

/// The duration of video `id`: long in the first half of the shards.
fn duration_of(id: i64, opts: &Options) -> Duration {
    let shard = (id % i64::from(opts.workers)) as u32;
    if shard < opts.workers / 2 { opts.short * opts.factor } else { opts.short }
}

async fn one_run(dir: &Path, supervisor: &Path, worker: &Path, opts: &Options, mode: &str) -> anyhow::Result<Measured> {
    let path = dir.join(format!("skew-{mode}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = Store::open(&path, 1).await?;
    let videos: Vec<NewVideo> = (1..=opts.videos)
        .map(|id| NewVideo {
            video_id: id,
            source: format!("{:.3}", duration_of(id, opts).as_secs_f64()),
            payload: None,
        })
        .collect();
    testing::insert_videos(&store, &videos).await?;
    store.close().await;

    let base = free_port_run(opts.workers as u16)?;
    let mut cmd = fleet_command(supervisor, dir);
    cmd.arg("start")
        .args(["--workers", &opts.workers.to_string(), "--mem-limit", "250M", "--exec", "sleep {source}"])
        .args(["--concurrency", &opts.concurrency.to_string(), "--steal", mode, "--exit-when-done"])
        .args(["--base-port", &base.to_string(), "--log-dir"])
        .arg(dir.join("logs"))
        .arg("--db")
        .arg(&path)
        .env("FLEET_WORKER_BIN", worker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("supervisor.err"))?);
    let wall = Running::to_end(&mut cmd, Duration::from_secs(600), &dir.join("supervisor.err")).await?;
    let location = DbLocation::Sqlite(path.clone());
    check_done(&location, opts.videos).await?;

    let store = Store::open_read_only(&location).await?;
    let attempts = testing::attempts(&store).await?;
    store.close().await;
    let spans: Vec<(i64, i64)> = attempts.iter().filter_map(|a| a.started_at.zip(a.finished_at)).collect();
    let first = spans.iter().map(|s| s.0).min().context("no attempts")?;
    let last = spans.iter().map(|s| s.1).max().context("no attempts")?;
    let work: i64 = spans.iter().map(|(a, b)| b - a).sum();
    let slots = f64::from(opts.workers * opts.concurrency);
    let helped = attempts
        .iter()
        .filter(|a| {
            let by = a.worker.as_deref().and_then(shared::storage::owner_of).map(|o| o.0);
            by.is_some_and(|k| i64::from(k) != a.video_id % i64::from(opts.workers))
        })
        .count();
    Ok(Measured { makespan: (last - first) as f64 / 1000.0, ideal: work as f64 / 1000.0 / slots, wall, helped })
}

fn report(runs: usize, opts: &Options, results: &[(String, Vec<Measured>)]) -> String {
    let long = opts.short * opts.factor;
    let per_shard = opts.videos as f64 / f64::from(opts.workers);
    let mut out = format!(
        "{} videos over {} shards, {} workers × `--concurrency {}` ({} slots), `--exec 'sleep {{source}}'`: the \
         videos of shards 0..{} sleep {} ms, the others {} ms ({}× skew). Each run: a fresh SQLite file, the \
         release `supervisor start --workers {} --mem-limit 250M --exec 'sleep {{source}}' --concurrency {} \
         --steal MODE --exit-when-done`, then every video checked done with one done attempt. Makespan: the first \
         attempt's start to the last one's end, from the history; ideal: the job time the history recorded (the \
         sleeps plus starting each `sleep` process) over all slots; the goal is `--steal idle` within {GOAL}× \
         the ideal. Wall: spawn to exit of the supervisor. Median of {runs} run(s).\n\n\
         Static shards (`off`) wait for the slow half: about {:.0} long videos per shard run {} at a time. \
         `orphaned` is the same here (no worker is gone), and is shown to say so.\n\n\
         | `--steal` | makespan | ideal | makespan / ideal | wall | videos run by another shard's worker |\n\
         |---|---|---|---|---|---|\n",
        opts.videos,
        opts.workers,
        opts.workers,
        opts.concurrency,
        opts.workers * opts.concurrency,
        opts.workers / 2,
        long.as_millis(),
        opts.short.as_millis(),
        opts.factor,
        opts.workers,
        opts.concurrency,
        per_shard,
        opts.concurrency,
    );
    for (mode, ms) in results {
        let ratio = median(ms.iter().map(|m| m.makespan / m.ideal).collect());
        let judged = if mode == "idle" {
            format!("**{ratio:.2}** (goal <= {GOAL}: {})", if ratio <= GOAL { "met" } else { "NOT met" })
        } else {
            format!("{ratio:.2}")
        };
        out.push_str(&format!(
            "| `{mode}` | {:.2} s | {:.2} s | {judged} | {:.2} s | {:.0} |\n",
            median(ms.iter().map(|m| m.makespan).collect()),
            median(ms.iter().map(|m| m.ideal).collect()),
            median(ms.iter().map(|m| m.wall).collect()),
            median(ms.iter().map(|m| m.helped as f64).collect()),
        ));
    }
    out.push_str("\nEach run:\n\n");
    for (mode, ms) in results {
        for (i, m) in ms.iter().enumerate() {
            out.push_str(&format!(
                "- run {}, `--steal {mode}`: makespan {:.2} s, ideal {:.2} s ({:.2}×), wall {:.2} s, {} helped\n",
                i + 1,
                m.makespan,
                m.ideal,
                m.makespan / m.ideal,
                m.wall,
                m.helped
            ));
        }
    }
    out
}
