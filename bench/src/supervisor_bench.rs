//! `fleet-bench supervisor`: restart latency, memory-kill latency, the supervisor's own
//! memory, and fleet start-up time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shared::storage::{Store, testing};

use crate::{bin, make_db, median, mib, peak_rss, rss};

/// `GET path` on 127.0.0.1:port with a short timeout; the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The pid a worker's /health reports.
fn health_pid(port: u16) -> Option<u64> {
    let body = http_get(port, "/health")?;
    let v: serde_json_lite::Value = serde_json_lite::parse(&body)?;
    v.pid
}

/// Just enough JSON reading for `{"pid": N}` without a JSON dependency in the bench.
mod serde_json_lite {
    pub struct Value {
        pub pid: Option<u64>,
    }
    pub fn parse(body: &str) -> Option<Value> {
        let at = body.find("\"pid\":")? + 6;
        let digits: String = body[at..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
        Some(Value { pid: digits.parse().ok() })
    }
}

fn free_base(n: u16) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if base > 60000 {
            continue;
        }
        let held: Vec<_> = (0..n).map_while(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).ok()).collect();
        if held.len() == n as usize {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports")
}

fn start_fleet(db: &Path, workers: u16, base: u16, extra: &[&str]) -> anyhow::Result<Child> {
    Ok(Command::new(bin("supervisor")?)
        .args(["start", "--workers", &workers.to_string(), "--base-port", &base.to_string(), "--db"])
        .arg(db)
        .args(extra)
        .env("FLEET_WORKER_BIN", bin("worker")?)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    child.wait()?;
    Ok(())
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed())
}

/// SIGKILL a worker, time until /health answers from its successor.
fn restart_latency(dir: &Path, kills: usize) -> anyhow::Result<Vec<f64>> {
    let db = dir.join("restart.db");
    let base = free_base(1)?;
    let sup = start_fleet(
        &db,
        1,
        base,
        &["--mem-limit", "250M", "--sleep", "10ms", "--restart-delay", "0s", "--crash-loop", "1000/60s"],
    )?;
    wait_until(Duration::from_secs(20), || health_pid(base).is_some())?;
    let mut times = Vec::new();
    for _ in 0..kills {
        let old = health_pid(base).context("worker answers")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL)?;
        let took = wait_until(Duration::from_secs(20), || health_pid(base).is_some_and(|p| p != old))?;
        times.push(took.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(sup)?;
    Ok(times)
}

/// Sampling mode: handlers that cross the limit at a moment they record; the time from
/// crossing to the attempt's recorded end (an upper bound on the kill: it includes the
/// worker noticing and writing).
async fn memory_kill_latency(dir: &Path, videos: i64) -> anyhow::Result<Vec<f64>> {
    let db_path = make_db(dir, videos).await?;
    let marks = dir.join("crossed");
    std::fs::create_dir_all(&marks)?;
    let script = dir.join("greedy.py");
    std::fs::write(
        &script,
        "import sys, time\n\
         limit, out = int(sys.argv[1]), sys.argv[2]\n\
         chunks, total, marked = [], 0, False\n\
         while True:\n\
         \x20   chunks.append(b'x' * (4 << 20))\n\
         \x20   total += 4 << 20\n\
         \x20   if total > limit and not marked:\n\
         \x20       open(out, 'w').write(str(time.time_ns() // 1_000_000))\n\
         \x20       marked = True\n\
         \x20   if total > 4 * limit:\n\
         \x20       time.sleep(60)\n\
         \x20   time.sleep(0.002)\n",
    )?;
    let limit: u64 = 100 << 20;
    let cmd = format!("python3 {} {limit} {}/{{video_id}}", script.display(), marks.display());
    let base = free_base(1)?;
    let mut sup = start_fleet(
        &db_path,
        1,
        base,
        &[
            "--mem-limit",
            "100M",
            "--mem-enforce",
            "sample",
            "--exec",
            &cmd,
            "--concurrency",
            "1",
            "--max-attempts",
            "1",
            "--exit-when-done",
        ],
    )?;
    sup.wait()?;
    let db = Store::open(&db_path, 1).await?;
    let mut rows = testing::attempts(&db).await?;
    rows.sort_by_key(|a| a.video_id);
    db.close().await;
    let mut out = Vec::new();
    for a in rows {
        let (id, outcome) = (a.video_id, a.outcome);
        let finished = a.finished_at.unwrap_or(0);
        if outcome != "memory" {
            bail!("video {id} ended {outcome}, not killed for memory");
        }
        let crossed: i64 = std::fs::read_to_string(marks.join(id.to_string()))?.trim().parse()?;
        out.push((finished - crossed) as f64);
    }
    Ok(out)
}

/// 8 workers without stagger: time from `supervisor start` to every /health answering,
/// and the supervisor's memory once they run.
fn start_and_rss(dir: &Path, workers: u16) -> anyhow::Result<(f64, u64, u64)> {
    let db = dir.join(format!("start-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let base = free_base(workers)?;
    let began = Instant::now();
    let sup = start_fleet(&db, workers, base, &["--mem-limit", "250M", "--sleep", "50ms"])?;
    wait_until(Duration::from_secs(30), || (0..workers).all(|k| health_pid(base + k).is_some()))?;
    let ready = began.elapsed().as_secs_f64() * 1000.0;
    // Let it settle into its steady state: health checks, records, log forwarding.
    std::thread::sleep(Duration::from_secs(5));
    let now = rss(sup.id()).unwrap_or(0);
    let peak = peak_rss(sup.id()).unwrap_or(0);
    stop(sup)?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    Ok((ready, now, peak))
}

pub async fn bench_supervisor(dir: &Path, runs: usize) -> anyhow::Result<String> {
    eprintln!("restart latency: SIGKILL a worker, wait for its successor's /health");
    let restarts = restart_latency(dir, 10 * runs)?;
    eprintln!("memory-limit kill latency (sampling mode)");
    let kills = memory_kill_latency(dir, 5 * runs as i64).await?;
    eprintln!("start-up and supervisor memory with 8 workers");
    let mut ready = Vec::new();
    let mut rss_now = Vec::new();
    let mut rss_peak = 0;
    for _ in 0..runs {
        let (r, now, peak) = start_and_rss(dir, 8)?;
        ready.push(r);
        rss_now.push(now as f64);
        rss_peak = rss_peak.max(peak);
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let restart_med = median(restarts.clone());
    let kill_med = median(kills.clone());
    let rss_med = median(rss_now) as u64;
    Ok(format!(
        "| measurement | result | goal |\n|---|---|---|\n\
         | worker SIGKILL to its successor answering /health (`--restart-delay 0s`, so no backoff), {} kills | median {restart_med:.0} ms, max {:.0} ms | <= 300 ms: {} |\n\
         | memory-limit breach to the handler's attempt recorded as killed, sampling mode (`--sample-interval 100ms`), {} handlers growing 4 MiB per 2 ms past 100M | median {kill_med:.0} ms, max {:.0} ms | <= 300 ms: {} |\n\
         | supervisor RSS with 8 workers running, after 5 s | {} (peak {}) | <= 10 MiB: {} |\n\
         | `supervisor start` to all 8 workers answering /health, no stagger | median {:.0} ms | |\n",
        restarts.len(),
        max(&restarts),
        verdict(restart_med <= 300.0),
        kills.len(),
        max(&kills),
        verdict(kill_med <= 300.0),
        mib(rss_med),
        mib(rss_peak),
        verdict(rss_med <= 10 << 20),
        median(ready),
    ))
}
