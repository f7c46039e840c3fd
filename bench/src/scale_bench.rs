//! `fleet-bench scale`: what a big table costs. `supervisor status` at 100k and 10M
//! videos (kept shard counts, and counting the table as before them), the claim rate at
//! both sizes, and what the counting triggers cost a claim + finish and an insert,
//! measured against the same database with the three triggers dropped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::bail;
use shared::storage::{self, FleetRun, RunState, Store, testing};

use crate::{bin, cpu_time, make_db, median, raw_floor};

/// Workers of the fleet run recorded for `status`.
const WORKERS: u32 = 4;

pub struct Sizes {
    pub small: i64,
    pub large: i64,
    /// Videos claimed and finished per claim-rate run.
    pub claimed: i64,
    /// Rows of the insert measurement.
    pub insert_rows: i64,
    /// Videos of the raw-floor measurement.
    pub floor: i64,
}

pub async fn bench_scale(dir: &Path, runs: usize, s: &Sizes) -> anyhow::Result<String> {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };

    eprintln!("building a table of {} videos", s.large);
    let start = Instant::now();
    let large = make_db(dir, s.large).await?;
    let build_secs = start.elapsed().as_secs_f64();
    let recount_secs = record_run(&large).await?;
    let small = make_db(dir, s.small).await?;
    record_run(&small).await?;

    eprintln!("supervisor status");
    let status_small = status_ms(&small, runs)?;
    let status_large = status_ms(&large, runs)?;
    forget_layout(&large).await?;
    let status_large_scan = status_ms(&large, runs)?;
    record_run(&large).await?;

    eprintln!("claim rate at {} and {} videos", s.small, s.large);
    let (mut rate_small, mut rate_large, mut rate_small_bare, mut rate_large_bare) = (vec![], vec![], vec![], vec![]);
    let large_bare = dir.join("bench-large-bare.db");
    copy_db(&large, &large_bare)?;
    drop_triggers(&large_bare).await?;
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        rate_large.push(raw_floor(&large, s.claimed).await?);
        rate_large_bare.push(raw_floor(&large_bare, s.claimed).await?);
        let small = make_db(dir, s.small).await?;
        rate_small.push(raw_floor(&small, s.claimed.min(s.small)).await?);
        let small = make_db(dir, s.small).await?;
        drop_triggers(&small).await?;
        rate_small_bare.push(raw_floor(&small, s.claimed.min(s.small)).await?);
    }
    let (rate_small, rate_large) = (median(rate_small), median(rate_large));
    let (rate_small_bare, rate_large_bare) = (median(rate_small_bare), median(rate_large_bare));
    let ratio = rate_large / rate_small;
    let ratio_bare = rate_large_bare / rate_small_bare;

    eprintln!("raw floor and insert, with and without the counting triggers");
    let (mut floor, mut floor_bare, mut ins, mut ins_bare) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        for bare in [false, true] {
            let path = make_db(dir, s.floor).await?;
            if bare {
                drop_triggers(&path).await?;
            }
            let cpu = cpu_time(std::process::id()).unwrap_or(0.0);
            let rate = raw_floor(&path, s.floor).await?;
            let cpu_us = (cpu_time(std::process::id()).unwrap_or(0.0) - cpu) * 1e6 / s.floor as f64;
            let path = make_db(dir, 0).await?;
            if bare {
                drop_triggers(&path).await?;
            }
            let insert = insert_rows(&path, s.insert_rows).await?;
            if bare {
                floor_bare.push((rate, cpu_us));
                ins_bare.push(insert);
            } else {
                floor.push((rate, cpu_us));
                ins.push(insert);
            }
        }
    }
    let pick = |v: &[(f64, f64)]| (median(v.iter().map(|p| p.0).collect()), median(v.iter().map(|p| p.1).collect()));
    let (floor, floor_cpu) = pick(&floor);
    let (floor_bare, floor_bare_cpu) = pick(&floor_bare);
    let (ins_wall, ins_cpu) = pick(&ins);
    let (ins_bare_wall, ins_bare_cpu) = pick(&ins_bare);
    let per_row = |secs: f64| secs * 1e6 / s.insert_rows as f64;

    Ok(format!(
        "| measurement | result | goal |\n|---|---|---|\n\
         | building the {large} table: one `INSERT ... WITH RECURSIVE`, counting triggers on | {build_secs:.1} s | |\n\
         | recount for a new layout (`ensure_count_layout`, {WORKERS} shards), {large} videos | {recount_secs:.2} s | once per layout change |\n\
         | `supervisor status`, a {WORKERS}-worker run recorded, {small} videos | {status_small:.0} ms | |\n\
         | `supervisor status`, a {WORKERS}-worker run recorded, {large} videos | {status_large:.0} ms | < 300 ms: {} |\n\
         | same, no layout recorded, so it counts the table (what status did before) | {status_large_scan:.0} ms | |\n\
         | claim + finish in batches of 512, {claimed_small} videos of a {small} table | {rate_small:.0} videos/s | |\n\
         | claim + finish in batches of 512, {claimed} videos of a {large} table | {rate_large:.0} videos/s (ratio {ratio:.2}) | ratio >= 0.80: {} |\n\
         | same two, counting triggers dropped (before) | {rate_small_bare:.0} and {rate_large_bare:.0} videos/s (ratio {ratio_bare:.2}) | |\n\
         | raw floor ({floor_n} videos), counting triggers on | {floor:.0} videos/s, {floor_cpu:.1} µs CPU/video | |\n\
         | raw floor ({floor_n} videos), counting triggers dropped (before) | {floor_bare:.0} videos/s, {floor_bare_cpu:.1} µs CPU/video | |\n\
         | multi-row INSERT of {rows} rows (500 per statement, one transaction), counting triggers on | {ins_wall:.2} s, {:.2} µs CPU/row | |\n\
         | same, counting triggers dropped (before) | {ins_bare_wall:.2} s, {:.2} µs CPU/row | |\n\
         | what the insert trigger adds per row | {:.2} µs CPU ({:+.0}% of the insert) | |\n",
        verdict(status_large < 300.0),
        verdict(ratio >= 0.8),
        per_row(ins_cpu),
        per_row(ins_bare_cpu),
        per_row(ins_cpu - ins_bare_cpu),
        100.0 * (ins_cpu - ins_bare_cpu) / ins_bare_cpu,
        small = s.small,
        large = s.large,
        claimed = s.claimed,
        claimed_small = s.claimed.min(s.small),
        floor_n = s.floor,
        rows = s.insert_rows,
    ))
}

/// Records a stopped run of `WORKERS` workers, as `supervisor start` leaves it, and makes
/// the counts kept for it; returns how long the recount took.
async fn record_run(path: &Path) -> anyhow::Result<f64> {
    let db = Store::open(path, 1).await?;
    let run = FleetRun {
        supervisor_pid: i32::MAX as i64,
        stopped_at: Some(storage::now_ms()),
        state: RunState::Stopped,
        handler: "--sleep 0".into(),
        ..FleetRun::example(WORKERS as i64, 3001)
    };
    if db.latest_run().await?.is_none() {
        db.insert_run(&run).await?;
    }
    let start = Instant::now();
    db.ensure_count_layout(WORKERS).await?;
    let secs = start.elapsed().as_secs_f64();
    db.close().await;
    Ok(secs)
}

/// Drops the recorded layout, so readers count the table as they did before kept counts.
async fn forget_layout(path: &Path) -> anyhow::Result<()> {
    let db = Store::open(path, 1).await?;
    testing::forget_count_layout(&db).await?;
    db.close().await;
    Ok(())
}

async fn drop_triggers(path: &Path) -> anyhow::Result<()> {
    let db = Store::open(path, 1).await?;
    testing::drop_count_triggers(&db).await?;
    db.close().await;
    Ok(())
}

fn copy_db(from: &Path, to: &Path) -> anyhow::Result<()> {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
    std::fs::copy(from, to)?;
    Ok(())
}

/// Median wall time of `supervisor status` (the release binary), in milliseconds.
fn status_ms(path: &Path, runs: usize) -> anyhow::Result<f64> {
    let supervisor = bin("supervisor")?;
    let mut times = Vec::new();
    for _ in 0..runs.max(3) {
        let start = Instant::now();
        let out = Command::new(&supervisor).arg("status").arg("--db").arg(path).stdin(Stdio::null()).output()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            bail!("supervisor status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(median(times))
}

/// Inserts `rows` new videos, 500 per multi-row `INSERT`, in one transaction: wall time
/// and this process's CPU time, in seconds.
async fn insert_rows(path: &Path, rows: i64) -> anyhow::Result<(f64, f64)> {
    const PER_STATEMENT: usize = 500;
    let db = Store::open(path, 1).await?;
    let cpu = cpu_time(std::process::id()).unwrap_or(0.0);
    let start = Instant::now();
    testing::insert_numbered(&db, rows, PER_STATEMENT).await?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_time(std::process::id()).unwrap_or(0.0) - cpu;
    db.close().await;
    Ok((wall, cpu))
}
