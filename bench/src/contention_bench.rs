//! Many workers on one SQLite file: does throughput hold once the write lock is the
//! bottleneck? Fleets of growing size run the same short jobs (`--sleep 20ms
//! --concurrency 4`), each on a fresh copy of the same imported database; each run is
//! timed from spawn to exit, with the CPU the fleet used (supervisor and workers).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use shared::storage::DbLocation;

use crate::pacing_bench::fleet_command;
use crate::postgres_bench::{Running, check_done, children_cpu, import, write_csv};
use crate::{bin, free_port_run, median};

pub(crate) struct Options {
    pub videos: i64,
    pub workers: Vec<u32>,
    pub job: String,
    pub concurrency: u32,
}

/// One fleet's run: seconds and CPU seconds.
struct Measured {
    secs: f64,
    cpu: f64,
}

pub(crate) async fn bench_contention(dir: &Path, runs: usize, opts: &Options) -> anyhow::Result<String> {
    let supervisor = bin("supervisor")?;
    let worker = bin("worker")?;
    let csv = dir.join("videos.csv");
    write_csv(&csv, opts.videos)?;
    let seed = dir.join("seed.db");
    import(&supervisor, dir, &csv, &DbLocation::Sqlite(seed.clone()))?;
    let mut rows = Vec::new();
    for &n in &opts.workers {
        let mut measured = Vec::new();
        for run in 0..runs {
            eprintln!("run {}/{runs}: {n} workers over {} videos", run + 1, opts.videos);
            let db = dir.join(format!("fleet-{n}-{run}.db"));
            std::fs::copy(&seed, &db)?;
            let m = fleet_run(dir, &supervisor, &worker, &db, n, opts).await?;
            check_done(&DbLocation::Sqlite(db.clone()), opts.videos).await?;
            for suffix in ["", "-wal", "-shm", "-writers"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            measured.push(m);
        }
        let secs = median(measured.iter().map(|m| m.secs).collect());
        let cpu = median(measured.iter().map(|m| m.cpu).collect());
        rows.push((n, opts.videos as f64 / secs, cpu * 1000.0 / opts.videos as f64, secs));
    }
    let best = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let first_cpu = rows.first().map_or(0.0, |r| r.2);
    let mut out = format!(
        "{} videos of `--sleep {} --concurrency {}` on one SQLite file (WAL), a fresh copy of the same imported \
         database for every run; `supervisor start --workers N --mem-limit 250M --exit-when-done`, timed from spawn \
         to exit; CPU is the supervisor's and its workers' (`getrusage(RUSAGE_CHILDREN)`). Median of {runs} run(s). \
         The goal: the largest fleet keeps at least 0.9 of the best rate, at most 1.5 times the smallest fleet's CPU \
         per video.\n\n\
         | workers | videos/s | of the best | CPU per video | of the smallest fleet's | wall |\n|---|---|---|---|---|---|\n",
        opts.videos, opts.job, opts.concurrency
    );
    for &(n, rate, cpu, secs) in &rows {
        out.push_str(&format!(
            "| {n} | {rate:.0} | {:.2} | {cpu:.2} ms | {:.2} | {secs:.1} s |\n",
            rate / best,
            cpu / first_cpu
        ));
    }
    if let (Some(last), true) = (rows.last(), rows.len() > 1) {
        let met = last.1 / best >= 0.9 && last.2 / first_cpu <= 1.5;
        out.push_str(&format!(
            "\nAt {} workers: {:.2} of the best rate, {:.2} times the CPU per video of {} workers: goal {}.\n",
            last.0,
            last.1 / best,
            last.2 / first_cpu,
            rows[0].0,
            if met { "met" } else { "NOT met" }
        ));
    }
    Ok(out)
}

async fn fleet_run(
    dir: &Path,
    supervisor: &Path,
    worker: &Path,
    db: &Path,
    workers: u32,
    opts: &Options,
) -> anyhow::Result<Measured> {
    let logs = dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let base = free_port_run(workers as u16)?;
    let mut cmd = fleet_command(supervisor, dir);
    cmd.arg("start")
        .args(["--workers", &workers.to_string(), "--mem-limit", "250M", "--sleep", &opts.job])
        .args(["--concurrency", &opts.concurrency.to_string(), "--exit-when-done", "--base-port", &base.to_string()])
        .arg("--db")
        .arg(db)
        .arg("--log-dir")
        .arg(&logs)
        .env("FLEET_WORKER_BIN", worker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("supervisor.err"))?);
    let cpu_before = children_cpu();
    let secs = Running::to_end(&mut cmd, Duration::from_secs(600), &dir.join("supervisor.err")).await?;
    Ok(Measured { secs, cpu: children_cpu() - cpu_before })
}
