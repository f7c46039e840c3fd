//! `fleet-bench`: measures the worker against the goals of the issues and writes the
//! results, with the command that produced them, into docs/BENCHMARKS.md.
//!
//! Run with `cargo run --release -p bench -- worker` (or `-- monitor`, `-- import`,
//! `-- postgres`, `-- skew`, `-- web`; see
//! docs/BENCHMARKS.md). It uses the release binaries next to its own executable, so
//! build them in the same profile.

mod contention_bench;
mod import_bench;
mod outage_bench;
mod pacing_bench;
mod postgres_bench;
mod scale_bench;
mod skew_bench;
mod supervisor_bench;
mod web_bench;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use shared::status::{Outcome, VideoStatus};
use shared::storage::{self, Finish, ShardSpec, Store, testing};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    what: What,
    /// Where to write the results.
    #[arg(long, default_value = "docs/BENCHMARKS.md", global = true)]
    out: PathBuf,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3, global = true)]
    runs: usize,
}

#[derive(Subcommand)]
enum What {
    /// Supervisor: restart latency, memory-kill latency (sampling), its RSS with 8
    /// workers, fleet start-up time.
    Supervisor,
    /// Worker throughput (--sleep 0 and --exec /bin/true) and memory.
    Worker {
        /// Videos in the throughput runs.
        #[arg(long, default_value_t = 200_000)]
        videos: i64,
        /// Videos in the /bin/true runs.
        #[arg(long, default_value_t = 5_000)]
        exec_videos: i64,
        /// Concurrency of the --sleep 0 runs.
        #[arg(long, default_value_t = 1024)]
        concurrency: u32,
        /// Concurrency of the /bin/true runs, and xargs -P.
        #[arg(long, default_value_t = 8)]
        exec_concurrency: u32,
    },
    /// `supervisor status` and the claim rate at 100k and 10M videos; what the shard
    /// counting triggers cost a claim, a finish and an insert.
    Scale {
        /// Videos of the small table.
        #[arg(long, default_value_t = 100_000)]
        small: i64,
        /// Videos of the large table.
        #[arg(long, default_value_t = 10_000_000)]
        large: i64,
        /// Videos claimed and finished per claim-rate run.
        #[arg(long, default_value_t = 100_000)]
        claimed: i64,
        /// Rows of the insert measurement (a multiple of 500).
        #[arg(long, default_value_t = 1_000_000)]
        insert_rows: i64,
        /// Videos of the raw-floor measurement.
        #[arg(long, default_value_t = 200_000)]
        floor: i64,
    },
    /// CPU and memory of `monitor` polling idle workers, with plain-text output.
    Monitor {
        /// Workers polled.
        #[arg(long, default_value_t = 16)]
        workers: u32,
        /// How long the monitor runs, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The http handler's pacing against a real nginx rate limit (20/s shared, burst 5,
    /// 429 with Retry-After: 1; installed with apt-get if missing): rate achieved,
    /// failed videos, how far apart the workers finish.
    Pacing {
        /// Fleet sizes to run, one table row each.
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        workers: Vec<u32>,
        /// Videos per run.
        #[arg(long, default_value_t = 500)]
        videos: i64,
        /// `--concurrency` of each worker.
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
        /// Seconds after which a run is stopped and reported as a timeout.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// `--rate` for each worker (the case has none).
        #[arg(long)]
        worker_rate: Option<String>,
    },
    /// The fleet on PostgreSQL (a throwaway server from `.ci/postgres`) against a raw
    /// server-side claim loop, with the same fleets on SQLite beside it.
    Postgres {
        /// Videos in every database.
        #[arg(long, default_value_t = 200_000)]
        videos: i64,
        /// Fleet sizes, one row each per database.
        #[arg(long, value_delimiter = ',', default_value = "2,8")]
        workers: Vec<u32>,
        /// `--concurrency` of the workers, one set of rows each; 0 leaves the flag off
        /// (the worker's default, 4). 512 lets a worker finish and claim whole batches
        /// of 512, as the raw loop does: the goal is judged on it.
        #[arg(long, value_delimiter = ',', default_value = "0,512")]
        concurrency: Vec<u32>,
        /// Seconds after which a fleet still running is stopped and the benchmark fails.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// A skewed workload (half the shards' videos take `factor` times as long) under each
    /// `--steal` mode, against the ideal makespan.
    Skew {
        #[arg(long, default_value_t = 4)]
        workers: u32,
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
        #[arg(long, default_value_t = 400)]
        videos: i64,
        /// A short video's duration, in milliseconds.
        #[arg(long, default_value_t = 25)]
        short_ms: u64,
        /// How many times as long a long video takes.
        #[arg(long, default_value_t = 8)]
        factor: u32,
        /// The `--steal` modes to run, one row each.
        #[arg(long, value_delimiter = ',', default_value = "off,orphaned,idle")]
        modes: Vec<String>,
    },
    /// `monitor --serve` with 50 clients polling its fragment every second: latency of
    /// the page, the fragment and /api/fleet, the monitor's memory, and the workers'
    /// requests (only the monitor's own poll should reach them).
    Web {
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Videos in the database (the workers run through them with --sleep 0).
        #[arg(long, default_value_t = 10_000)]
        videos: i64,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// How long the clients poll, in seconds.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// The page's reads at scale: `GET /`, the fragment, the first and a middle page of
    /// failed videos, and a substring search, from `monitor --db` over `videos` videos
    /// (one in ten failed), on SQLite and, with `--postgres`, on PostgreSQL.
    WebReads {
        #[arg(long, default_value_t = 10_000_000)]
        videos: i64,
        /// A PostgreSQL server (`postgres://user@127.0.0.1:port/db`) to create a fresh
        /// database on.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Many workers on one SQLite file: throughput and CPU per video as the fleet
    /// grows past the point where the write lock is the bottleneck.
    Contention {
        /// Videos per run.
        #[arg(long, default_value_t = 20_000)]
        videos: i64,
        /// Fleet sizes, one row each.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
        workers: Vec<u32>,
        /// The `--sleep` of every job.
        #[arg(long, default_value = "20ms")]
        job: String,
        /// `--concurrency` of every worker.
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
    },
    /// How soon work resumes after the database returns from an outage: a fleet on a
    /// PostgreSQL server of its own, the server stopped for `--outage` seconds.
    Outage {
        #[arg(long, default_value_t = 2_000)]
        videos: i64,
        #[arg(long, default_value_t = 2)]
        workers: u32,
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Each job's time, in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        job_ms: u64,
        /// How long the server stays down, in seconds.
        #[arg(long, default_value_t = 30)]
        outage: u64,
    },
    /// Wall time and peak RSS of `supervisor import` on a generated CSV file.
    Import {
        /// Lines of the CSV file.
        #[arg(long, default_value_t = 10_000_000)]
        lines: u64,
        /// Another supervisor binary (an older build) to run once on the same file.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    // Every benchmark's files go in one directory, removed once it succeeded; a failed
    // run's files (nginx's logs, the fleet's) stay for a look.
    let dir = tempfile_dir()?;
    let (section, report) = match cli.what {
        What::Supervisor => ("supervisor", supervisor_bench::bench_supervisor(&dir, cli.runs).await),
        What::Worker { videos, exec_videos, concurrency, exec_concurrency } => {
            ("worker", bench_worker(&dir, cli.runs, videos, exec_videos, concurrency, exec_concurrency).await)
        }
        What::Scale { small, large, claimed, insert_rows, floor } => {
            let sizes = scale_bench::Sizes { small, large, claimed, insert_rows, floor };
            ("scale", scale_bench::bench_scale(&dir, cli.runs, &sizes).await)
        }
        What::Monitor { workers, seconds } => ("monitor", bench_monitor(&dir, cli.runs, workers, seconds).await),
        What::Pacing { workers, videos, concurrency, timeout, worker_rate } => {
            let timeout = Duration::from_secs(timeout);
            let opts = pacing_bench::Options { workers, videos, concurrency, timeout, worker_rate };
            ("pacing", pacing_bench::bench_pacing(&dir, cli.runs, &opts).await)
        }
        What::Postgres { videos, workers, concurrency, timeout } => {
            let opts = postgres_bench::Options { videos, workers, concurrency, timeout: Duration::from_secs(timeout) };
            ("postgres", postgres_bench::bench_postgres(&dir, cli.runs, &opts).await)
        }
        What::Skew { workers, concurrency, videos, short_ms, factor, modes } => {
            let short = Duration::from_millis(short_ms);
            let opts = skew_bench::Options { workers, concurrency, videos, short, factor, modes };
            ("skew", skew_bench::bench_skew(&dir, cli.runs, &opts).await)
        }
        What::Web { workers, videos, clients, seconds } => {
            let opts = web_bench::Options { workers, videos, clients, seconds };
            ("web", web_bench::bench_web(&dir, &opts).await)
        }
        What::WebReads { videos, postgres } => {
            let report = async {
                let mut report = web_bench::bench_web_reads(dir.join("reads.db").into(), videos, "SQLite").await?;
                if let Some(server) = postgres {
                    let db = testing::create_postgres_database(&server).await?;
                    report += "\n";
                    report += &web_bench::bench_web_reads(db, videos, "PostgreSQL").await?;
                }
                Ok(report)
            };
            ("web-reads", report.await)
        }
        What::Contention { videos, workers, job, concurrency } => {
            let opts = contention_bench::Options { videos, workers, job, concurrency };
            ("contention", contention_bench::bench_contention(&dir, cli.runs, &opts).await)
        }
        What::Outage { videos, workers, concurrency, job_ms, outage } => {
            let (job, outage) = (Duration::from_millis(job_ms), Duration::from_secs(outage));
            let opts = outage_bench::Options { videos, workers, concurrency, job, outage };
            ("outage", outage_bench::bench_outage(&dir, cli.runs, &opts).await)
        }
        What::Import { lines, baseline } => {
            ("import", import_bench::bench_import(&dir, cli.runs, lines, baseline).await)
        }
    };
    match &report {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("the benchmark's files are kept in {}", dir.display()),
    }
    write_section(&cli.out, section, &command, &report?)?;
    Ok(())
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("executable has no directory")?.join(name);
    if !path.exists() {
        bail!("{} not found: build it first (cargo build --release --workspace)", path.display());
    }
    Ok(path)
}

/// A database with videos 1..=n, migrated, in WAL mode.
async fn make_db(dir: &Path, n: i64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("bench-{n}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let db = Store::open(&path, 1).await?;
    testing::seed_numbered(&db, 1..=n, ("https://videos.example/", ".mp4"), false).await?;
    db.close().await;
    Ok(path)
}

async fn count_done(path: &Path) -> anyhow::Result<(i64, i64)> {
    let db = Store::open(path, 1).await?;
    let done = testing::count_table(&db, 1).await?[0].done as i64;
    let history = testing::count_attempts(&db).await?;
    db.close().await;
    Ok((done, history))
}

/// The floor: one process claiming and completing `count` videos in batches of 512 (previous batch's
/// completions and the next claim in one transaction), no handler, no HTTP.
async fn raw_floor(path: &Path, count: i64) -> anyhow::Result<f64> {
    let db = Store::open(path, 1).await?;
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await?;
    let start = Instant::now();
    let mut previous: Vec<Finish> = Vec::new();
    let mut finished = 0;
    loop {
        let now = storage::now_ms();
        let want = (count - finished - previous.len() as i64).clamp(0, 512) as usize;
        let claimed = shard.finish_and_claim(&previous, want, now, Duration::from_secs(60)).await?.claimed;
        finished += previous.len() as i64;
        if claimed.is_empty() {
            break;
        }
        previous = claimed
            .iter()
            .map(|c| Finish {
                video_id: c.video_id,
                token: c.token,
                status: VideoStatus::Done,
                outcome: Outcome::Done,
                result: Some(String::new()),
                error: None,
                warnings: None,
                run_after: now,
                finished_at: now,
                duration_ms: 0,
            })
            .collect();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(shard);
    db.close().await;
    if finished != count {
        bail!("claimed and finished {finished} of {count} videos");
    }
    Ok(count as f64 / secs)
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

fn rss(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

struct FleetRun {
    secs: f64,
    /// Highest VmHWM among the workers.
    peak_rss: u64,
}

/// Starts `workers` worker processes with `args` on `path`, waits for all to exit with
/// --exit-when-done; wall time from the first spawn to the last exit.
fn run_fleet(path: &Path, workers: u32, args: &[&str]) -> anyhow::Result<FleetRun> {
    let worker = bin("worker")?;
    let start = Instant::now();
    let mut children: Vec<Child> = (0..workers)
        .map(|k| {
            Command::new(&worker)
                .args([
                    "--worker-id",
                    &k.to_string(),
                    "--workers",
                    &workers.to_string(),
                    "--port",
                    "0",
                    "--exit-when-done",
                ])
                .arg("--db")
                .arg(path)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut peak = 0;
    let mut exited = vec![false; children.len()];
    while exited.iter().any(|e| !e) {
        for (i, c) in children.iter_mut().enumerate() {
            if exited[i] {
                continue;
            }
            if let Some(p) = peak_rss(c.id()) {
                peak = peak.max(p);
            }
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("worker {i} exited with {status}");
                }
                exited[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(FleetRun { secs: start.elapsed().as_secs_f64(), peak_rss: peak })
}

fn xargs_true(n: i64, parallel: u32) -> anyhow::Result<f64> {
    let ids: String = (1..=n).map(|i| format!("{i}\n")).collect();
    let start = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &parallel.to_string(), "-n", "1", "/bin/true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("xargs is needed for the comparison")?;
    use std::io::Write;
    child.stdin.take().context("stdin")?.write_all(ids.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("xargs failed: {status}");
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

async fn bench_worker(
    dir: &Path,
    runs: usize,
    n: i64,
    exec_n: i64,
    concurrency: u32,
    exec_c: u32,
) -> anyhow::Result<String> {
    let c = concurrency.to_string();
    let mut raw = Vec::new();
    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut peak_sleep = 0;
    for run in 0..runs {
        eprintln!("run {}/{runs}: raw floor, 1 worker, 2 workers over {n} videos", run + 1);
        let path = make_db(dir, n).await?;
        raw.push(raw_floor(&path, n).await?);
        for (workers, out) in [(1u32, &mut one), (2, &mut two)] {
            let path = make_db(dir, n).await?;
            let r = run_fleet(&path, workers, &["--sleep", "0", "--concurrency", &c])?;
            let (done, history) = count_done(&path).await?;
            if done != n || history != n {
                bail!("{workers} worker(s) left {done} of {n} done with {history} history rows");
            }
            out.push(n as f64 / r.secs);
            peak_sleep = peak_sleep.max(r.peak_rss);
        }
    }
    let (raw, one, two) = (median(raw), median(one), median(two));

    let ec = exec_c.to_string();
    let mut fleet_true = Vec::new();
    let mut xargs = Vec::new();
    let mut peak_exec = 0;
    for run in 0..runs {
        eprintln!("run {}/{runs}: --exec /bin/true vs xargs -P {exec_c} over {exec_n}", run + 1);
        let path = make_db(dir, exec_n).await?;
        let r = run_fleet(&path, 1, &["--exec", "/bin/true", "--concurrency", &ec])?;
        fleet_true.push(exec_n as f64 / r.secs);
        peak_exec = peak_exec.max(r.peak_rss);
        xargs.push(xargs_true(exec_n, exec_c)?);
    }
    let (fleet_true, xargs) = (median(fleet_true), median(xargs));

    eprintln!("idle memory");
    let idle = idle_rss(dir).await?;

    eprintln!("/status under load");
    let mut status_rates = Vec::new();
    for _ in 0..runs {
        status_rates.push(status_load(dir).await?);
    }
    let status_rate = median(status_rates);

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    Ok(format!(
        "| measurement | result | goal |\n|---|---|---|\n\
         | raw floor: one process, claim + complete in batches of 512, history rows, no handler, no HTTP | {raw:.0} videos/s | |\n\
         | 1 worker, `--sleep 0 --concurrency {concurrency}`, {n} videos | {one:.0} videos/s ({:.0}% of floor) | |\n\
         | 2 workers, `--sleep 0 --concurrency {concurrency}`, {n} videos | {two:.0} videos/s ({:.0}% of floor) | >= 50,000 videos/s: {} |\n\
         | 1 worker, `--exec /bin/true --concurrency {exec_c}`, {exec_n} videos | {fleet_true:.0} videos/s | |\n\
         | `xargs -P {exec_c} -n 1 /bin/true`, {exec_n} lines | {xargs:.0} runs/s | worker >= 70% of xargs: {:.0}%, {} |\n\
         | `GET /status` while the worker runs `--sleep 1ms..20ms --concurrency 256`, 8 keep-alive connections, 3 s | {status_rate:.0} requests/s | >= 5,000 requests/s: {} |\n\
         | worker RSS, idle (empty shard, after 3 s) | {} | <= 15 MiB: {} |\n\
         | worker peak RSS (VmHWM), `--sleep 0` runs | {} | |\n\
         | worker peak RSS (VmHWM), `/bin/true` runs | {} | |\n",
        100.0 * one / raw,
        100.0 * two / raw,
        verdict(two >= 50_000.0),
        100.0 * fleet_true / xargs,
        verdict(fleet_true >= 0.7 * xargs),
        verdict(status_rate >= 5_000.0),
        mib(idle),
        verdict(idle <= 15 << 20),
        mib(peak_sleep),
        mib(peak_exec),
    ))
}

/// Requests per second `GET /status` sustains on a busy worker: 8 keep-alive
/// connections for 3 seconds, each sending the next request when the last answer is in.
async fn status_load(dir: &Path) -> anyhow::Result<f64> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let path = make_db(dir, 200_000).await?;
    let port = free_port()?;
    let mut child = Command::new(bin("worker")?)
        .args([
            "--worker-id",
            "0",
            "--workers",
            "1",
            "--port",
            &port.to_string(),
            "--sleep",
            "1ms..20ms",
            "--concurrency",
            "256",
        ])
        .arg("--db")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}");
    let mut tries = 0;
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        tries += 1;
        if tries > 500 {
            bail!("the worker did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let mut stream = BufReader::new(stream);
            let mut n = 0u64;
            let mut line = String::new();
            while tokio::time::Instant::now() < deadline {
                stream.get_mut().write_all(b"GET /status HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
                let mut len = 0usize;
                loop {
                    line.clear();
                    stream.read_line(&mut line).await?;
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse()?;
                    }
                }
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for c in clients {
        total += c.await??;
    }
    let still_busy = child.try_wait()?.is_none();
    child.kill()?;
    child.wait()?;
    if !still_busy {
        bail!("the worker exited during the /status load");
    }
    Ok(total as f64 / 3.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn idle_rss(dir: &Path) -> anyhow::Result<u64> {
    let path = make_db(dir, 0).await?;
    let mut child = Command::new(bin("worker")?)
        .args(["--worker-id", "0", "--workers", "1", "--port", "0", "--sleep", "0"])
        .arg("--db")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let r = rss(child.id()).context("cannot read the idle worker's memory")?;
    child.kill()?;
    child.wait()?;
    Ok(r)
}

/// The monitor polling `workers` idle workers (an empty database) once a second for
/// `secs` seconds, stdout a pipe (plain text): its CPU time and peak RSS.
async fn bench_monitor(dir: &Path, runs: usize, workers: u32, secs: u64) -> anyhow::Result<String> {
    let path = make_db(dir, 0).await?;
    let mut cpu = Vec::new();
    let mut peak = 0;
    let mut snapshots = Vec::new();
    let mut last_up = String::new();
    for run in 0..runs {
        eprintln!("run {}/{runs}: monitor polling {workers} idle workers for {secs} s", run + 1);
        let (mut fleet, base) = idle_fleet(&path, workers)?;
        let m = measure_monitor(base, workers, secs);
        for w in &mut fleet {
            let _ = w.kill();
            let _ = w.wait();
        }
        let m = m?;
        cpu.push(m.cpu_secs);
        peak = peak.max(m.peak_rss);
        snapshots.push(m.snapshots as f64);
        last_up = m.last_up;
    }
    let cpu = median(cpu);
    let share = 100.0 * cpu / secs as f64;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    Ok(format!(
        "| measurement | result | goal |\n|---|---|---|\n\
         | `monitor --base-port P --workers {workers} --interval 1s`, stdout a pipe, {secs} s: CPU (utime + stime) | {cpu:.2} s, {share:.2}% of one core | < 2% of one core: {} |\n\
         | same run: monitor peak RSS (VmHWM) | {} | < 20 MiB: {} |\n\
         | same run: snapshots printed, workers up in the last one | {:.0}, {last_up} | one per second, all up |\n",
        verdict(share < 2.0),
        mib(peak),
        verdict(peak < 20 << 20),
        median(snapshots),
    ))
}

/// `n` workers with nothing to do, on consecutive ports from the returned base port.
fn idle_fleet(path: &Path, n: u32) -> anyhow::Result<(Vec<Child>, u16)> {
    let worker = bin("worker")?;
    for _ in 0..10 {
        let base = free_port_run(n as u16)?;
        let mut fleet = Vec::new();
        for k in 0..n {
            fleet.push(
                Command::new(&worker)
                    .args(["--worker-id", &k.to_string(), "--workers", &n.to_string()])
                    .args(["--port", &(base + k as u16).to_string(), "--sleep", "0"])
                    .arg("--db")
                    .arg(path)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut listening = 0;
        while listening < n && Instant::now() < deadline {
            listening =
                (0..n).filter(|k| std::net::TcpStream::connect(("127.0.0.1", base + *k as u16)).is_ok()).count() as u32;
            if fleet.iter_mut().any(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if listening == n {
            return Ok((fleet, base));
        }
        for c in &mut fleet {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    bail!("could not start {n} workers on consecutive ports")
}

/// A port `p` such that `p..p+n` were all free a moment ago.
fn free_port_run(n: u16) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = first.local_addr()?.port();
        if base.checked_add(n).is_some() && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return Ok(base);
        }
    }
    bail!("found no {n} free consecutive ports")
}

struct MonitorRun {
    cpu_secs: f64,
    peak_rss: u64,
    snapshots: usize,
    /// "16/16 up", as the last snapshot says.
    last_up: String,
}

fn measure_monitor(base: u16, workers: u32, secs: u64) -> anyhow::Result<MonitorRun> {
    use std::io::BufRead;
    let mut child = Command::new(bin("monitor")?)
        .args(["--base-port", &base.to_string(), "--workers", &workers.to_string(), "--interval", "1s"])
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("monitor stdout")?;
    let reader = std::thread::spawn(move || {
        let (mut snapshots, mut last_up) = (0, String::new());
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(up) = line.split("  workers ").nth(1) {
                snapshots += 1;
                last_up = up.split("  ").next().unwrap_or(up).to_string();
            }
        }
        (snapshots, last_up)
    });
    std::thread::sleep(Duration::from_secs(secs));
    let pid = child.id();
    let still_running = child.try_wait()?.is_none();
    let cpu_secs = cpu_time(pid);
    let peak_rss = peak_rss(pid);
    child.kill()?;
    child.wait()?;
    let (snapshots, last_up) = reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    if !still_running {
        bail!("the monitor exited early");
    }
    Ok(MonitorRun {
        cpu_secs: cpu_secs.context("cannot read the monitor's CPU time")?,
        peak_rss: peak_rss.context("cannot read the monitor's memory")?,
        snapshots,
        last_up,
    })
}

/// User + system CPU time of a process so far, in seconds, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_sec = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks as f64 / per_sec)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    // The time tells apart runs of a process that reused a pid.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = std::env::temp_dir().join(format!("fleet-bench-{}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Replaces (or appends) the section `name` of the results file.
fn write_section(out: &Path, name: &str, command: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let machine = machine();
    let section = format!(
        "{begin}\n## {name}\n\nReproduce: `cargo build --release --workspace && target/release/fleet-bench {command}`\n\n\
         Measured {} on {machine}. Medians of the runs.\n\n{body}{end}",
        date()
    );
    let existing = std::fs::read_to_string(out).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `fleet-bench`; each section names the command that produced it.\n".into()
    });
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{section}{}", &existing[..a], &existing[b + end.len()..])
        }
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::write(out, updated)?;
    println!("{section}");
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
