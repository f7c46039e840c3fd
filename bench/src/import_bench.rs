//! `fleet-bench import`: wall time and peak memory of the real `supervisor import` on a
//! large generated CSV file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use shared::storage::Store;

use crate::{bin, median, mib, peak_rss};

/// One import: how long it took and the highest VmHWM seen while it ran.
struct ImportRun {
    secs: f64,
    peak_rss: u64,
}

/// Writes `lines` rows `i,https://videos.example/i.mp4,{"n":i}` (ids 1..=lines) with a
/// header; returns the file's size.
fn write_csv(path: &Path, lines: u64) -> anyhow::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(b"video_id,source,payload\n")?;
    for i in 1..=lines {
        writeln!(out, "{i},https://videos.example/{i}.mp4,\"{{\"\"n\"\":{i}}}\"")?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Imports `csv` into a new database with `supervisor` and checks that every row arrived.
async fn import_once(supervisor: &Path, csv: &Path, db: &Path, lines: u64) -> anyhow::Result<ImportRun> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let start = Instant::now();
    let mut child = Command::new(supervisor)
        .arg("import")
        .arg(csv)
        .arg("--db")
        .arg(db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", supervisor.display()))?;
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss(child.id()) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
        bail!("supervisor import failed ({status}): {err}");
    }
    let check = Store::open(db, 1).await?;
    let n = check.count_videos().await?;
    check.close().await;
    if n as u64 != lines {
        bail!("the import left {n} videos, expected {lines}");
    }
    Ok(ImportRun { secs, peak_rss: peak })
}

/// Largest peak RSS of any child waited for so far (the kernel's ru_maxrss).
fn children_max_rss() -> u64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map(|u| u.max_rss() as u64 * 1024).unwrap_or(0)
}

/// `lines` rows imported `runs` times by this build's supervisor, and once by
/// `baseline` if given.
pub async fn bench_import(dir: &Path, runs: usize, lines: u64, baseline: Option<PathBuf>) -> anyhow::Result<String> {
    let csv = dir.join("videos.csv");
    let db = dir.join("import.db");
    let size = write_csv(&csv, lines)?;
    let supervisor = bin("supervisor")?;
    let mut secs = Vec::new();
    let mut polled = 0;
    for _ in 0..runs.max(1) {
        let run = import_once(&supervisor, &csv, &db, lines).await?;
        eprintln!("import of {lines} lines: {:.1} s, peak RSS {}", run.secs, mib(run.peak_rss));
        secs.push(run.secs);
        polled = polled.max(run.peak_rss);
    }
    // Every child so far was an import of this build: the kernel's figure is exact.
    let peak = children_max_rss().max(polled);
    let wall = median(secs);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut body = format!(
        "| measurement | result | goal |\n|---|---|---|\n\
         | `supervisor import` of {lines} CSV lines ({}, `video_id,source,payload`), new database: wall time | \
         {wall:.1} s ({:.0} lines/s) | <= 60 s: {} |\n\
         | same: peak RSS (ru_maxrss of the child, largest of the runs) | {} | <= 128 MiB: {} |\n",
        mib(size),
        lines as f64 / wall,
        met(wall <= 60.0),
        mib(peak),
        met(peak <= 128 << 20),
    );
    if let Some(old) = baseline {
        let run = import_once(&old, &csv, &db, lines).await?;
        eprintln!("baseline import of {lines} lines: {:.1} s, peak RSS {}", run.secs, mib(run.peak_rss));
        body.push_str(&format!(
            "| baseline `{}`, same file, one run: wall time, peak RSS (VmHWM polled every 5 ms) | {:.1} s, {} | |\n",
            old.display(),
            run.secs,
            mib(run.peak_rss),
        ));
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let _ = std::fs::remove_file(&csv);
    Ok(body)
}
