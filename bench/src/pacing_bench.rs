//! `fleet-bench pacing`: the http handler's pacing against a real nginx rate limit
//! (issue 8, item 2). nginx from Debian's packages allows 20 calls/s to everyone
//! together (one shared `limit_req` key, burst 5, nodelay) and answers the rest 429
//! with `Retry-After: 1`, in front of a backend in this process that answers 200 after
//! 50 ms. The real `supervisor` runs N workers × 8 concurrency over 500 videos with no
//! `--rate`; the benchmark reports how much of the allowed rate the fleet used, failed
//! videos, how far apart the workers finished, and how often nginx pushed back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::status::VideoStatus;
use shared::storage::{Store, testing};

use crate::{bin, free_port, free_port_run, median};

/// The rate nginx allows, shared by the whole fleet.
const ALLOWED_PER_SEC: u32 = 20;
/// `limit_req ... burst=5 nodelay`, as in the issue.
const BURST: u32 = 5;
/// How long the backend takes to answer, as in the issue.
const BACKEND_DELAY: Duration = Duration::from_millis(50);
/// The goals of issue 8, item 2.
const GOAL_RATE_PERCENT: f64 = 85.0;
const GOAL_FINISH_RATIO: f64 = 1.25;
/// How long `supervisor start` gets to stop after SIGTERM before it is killed: its
/// workers' default `--grace` (30 s, for jobs in flight, including those waiting for
/// the pacer) and its own 5 s on top, with some margin.
const STOP_GRACE: Duration = Duration::from_secs(45);

/// What `fleet-bench pacing` runs.
pub struct Options {
    /// Fleet sizes, one table row each.
    pub workers: Vec<u32>,
    /// Videos per run.
    pub videos: i64,
    /// `--concurrency` of each worker.
    pub concurrency: u32,
    /// A run still going after this long is stopped and reported as a timeout.
    pub timeout: Duration,
    /// `--rate` for each worker; none is the case (the pacer must find the rate).
    pub worker_rate: Option<String>,
}

/// One run of one fleet size.
struct RunResult {
    /// Set when the run was stopped at the timeout: how the fleet took the SIGTERM.
    timed_out: Option<Terminated>,
    /// `supervisor start` to its exit (or to the timeout).
    fleet_secs: f64,
    done: i64,
    failed: i64,
    /// Attempts that did not end done (each one a retry, or a failed video).
    failed_attempts: i64,
    /// Seen at nginx: the first call's arrival to the last answer.
    window_secs: f64,
    answered_ok: u64,
    answered_429: u64,
    answered_other: u64,
    /// Requests the backend answered (nginx's 200s, counted on the other side).
    backend_served: u64,
    /// Each shard's latest attempt end, from the run's first `started_at`, in seconds;
    /// None for a shard with no attempt.
    finishes: Vec<Option<f64>>,
}

impl RunResult {
    /// Done videos per second over the window, as a percentage of the allowed rate.
    fn rate_percent(&self) -> f64 {
        if self.window_secs <= 0.0 {
            return 0.0;
        }
        100.0 * self.done as f64 / self.window_secs / ALLOWED_PER_SEC as f64
    }

    /// Slowest worker's finish over the fastest's; None unless every shard finished.
    fn finish_ratio(&self) -> Option<f64> {
        let finishes: Option<Vec<f64>> = self.finishes.iter().copied().collect();
        let finishes = finishes?;
        let slowest = finishes.iter().copied().fold(f64::MIN, f64::max);
        let fastest = finishes.iter().copied().fold(f64::MAX, f64::min);
        (fastest > 0.0).then(|| slowest / fastest)
    }

    fn finishes_text(&self) -> String {
        self.finishes
            .iter()
            .map(|f| f.map_or_else(|| "none".to_string(), |s| format!("{s:.1}")))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

pub async fn bench_pacing(dir: &Path, runs: usize, opts: &Options) -> anyhow::Result<String> {
    let nginx = nginx_binary()?;
    let version = nginx_version(&nginx);
    let supervisor = bin("supervisor")?;
    let worker = bin("worker")?;
    let backend = Backend::start()?;
    let mut rows = Vec::new();
    for &n in &opts.workers {
        let mut results = Vec::new();
        for run in 1..=runs.max(1) {
            eprintln!("{n} workers × {}, {} videos: run {run}/{runs}", opts.concurrency, opts.videos);
            let run_dir = dir.join(format!("pacing-{n}-{run}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir)?;
            let r = run_once(&run_dir, &nginx, &supervisor, &worker, &backend, n, opts)
                .await
                .with_context(|| format!("{n} workers, run {run} (its files are in {})", run_dir.display()))?;
            eprintln!("  {}", run_line(n, opts.concurrency, run, &r));
            if r.backend_served != r.answered_ok {
                eprintln!(
                    "  note: nginx logged {} answers 200 but the backend served {}",
                    r.answered_ok, r.backend_served
                );
            }
            let _ = std::fs::remove_dir_all(&run_dir);
            results.push(r);
        }
        rows.push((n, results));
    }
    drop(backend);
    Ok(report(&rows, runs, opts, &version))
}

/// One fleet of `n` workers over a new database, through a new nginx.
async fn run_once(
    dir: &Path,
    nginx_bin: &Path,
    supervisor: &Path,
    worker: &Path,
    backend: &Backend,
    n: u32,
    opts: &Options,
) -> anyhow::Result<RunResult> {
    let db = dir.join("fleet.db");
    import(supervisor, dir, &db, opts.videos)?;

    let nginx = Nginx::start(nginx_bin, &dir.join("nginx"), backend.port)?;
    nginx.preflight()?;
    // Let the burst allowance refill and the preflight's log lines land.
    std::thread::sleep(Duration::from_secs(1));
    let log_from = nginx.log_len();
    backend.served.store(0, Ordering::Relaxed);

    let base = free_port_run(n as u16)?;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let mut cmd = fleet_command(supervisor, dir);
    cmd.arg("start")
        .args(["--workers", &n.to_string(), "--concurrency", &opts.concurrency.to_string()])
        .args(["--mem-limit", "250M", "--base-port", &base.to_string(), "--http", &url, "--exit-when-done"])
        .arg("--db")
        .arg(&db)
        .arg("--log-dir")
        .arg(dir.join("logs"));
    if let Some(rate) = &opts.worker_rate {
        cmd.args(["--rate", rate]);
    }
    let started = Instant::now();
    let mut fleet = Fleet::spawn(cmd, dir, worker)?;
    let mut timed_out = None;
    let status = loop {
        if let Some(status) = fleet.child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > opts.timeout {
            eprintln!("  timeout: stopping the fleet after {} s", opts.timeout.as_secs());
            timed_out = Some(fleet.stop());
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fleet_secs = started.elapsed().as_secs_f64();
    // 0: every video done; 3: the batch ended with some failed. Anything else is the
    // benchmark's problem, not a result.
    if let Some(status) = status
        && !matches!(status.code(), Some(0 | 3))
    {
        bail!("supervisor start exited with {status}: {}", tail(&dir.join("supervisor.err"), 800));
    }
    drop(fleet);
    // nginx writes a request's log line after its answer: give the last one a moment.
    std::thread::sleep(Duration::from_millis(200));
    let log = nginx.read_log(log_from)?;
    drop(nginx);

    let counts = db_counts(&db, n).await?;
    Ok(RunResult {
        timed_out,
        fleet_secs,
        done: counts.done,
        failed: counts.failed,
        failed_attempts: counts.failed_attempts,
        window_secs: log.window_secs,
        answered_ok: log.ok,
        answered_429: log.limited,
        answered_other: log.other,
        backend_served: backend.served.load(Ordering::Relaxed),
        finishes: counts.finishes,
    })
}

/// `supervisor import` of a CSV file of `videos` videos into a new database.
fn import(supervisor: &Path, dir: &Path, db: &Path, videos: i64) -> anyhow::Result<()> {
    let csv = dir.join("videos.csv");
    let mut text = String::from("video_id,source\n");
    for i in 1..=videos {
        text.push_str(&format!("{i},https://videos.example/{i}.mp4\n"));
    }
    std::fs::write(&csv, text)?;
    let out = fleet_command(supervisor, dir).arg("import").arg(&csv).arg("--db").arg(db).output()?;
    if !out.status.success() {
        bail!("supervisor import failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A supervisor command that sees none of the caller's fleet settings (FLEET_*,
/// WORKER_*, a fleet.toml in the working directory), so the run is the one described.
pub(crate) fn fleet_command(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("FLEET_") || key.starts_with("WORKER_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// A running `supervisor start`; stopped (SIGTERM, then SIGKILL) when dropped, so a
/// failing benchmark leaves no fleet behind.
struct Fleet {
    child: Child,
}

impl Fleet {
    fn spawn(mut cmd: Command, dir: &Path, worker: &Path) -> anyhow::Result<Fleet> {
        let child = cmd
            .env("FLEET_WORKER_BIN", worker)
            .stdout(std::fs::File::create(dir.join("supervisor.out"))?)
            .stderr(std::fs::File::create(dir.join("supervisor.err"))?)
            .spawn()
            .context("cannot start the supervisor")?;
        Ok(Fleet { child })
    }

    fn stop(&mut self) -> Terminated {
        terminate(&mut self.child, STOP_GRACE)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How a child took [`terminate`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Terminated {
    /// It had exited before.
    AlreadyGone,
    /// It exited within the grace period.
    Exited,
    /// It was still running after the grace period and was killed.
    Killed,
}

/// SIGTERM, up to `grace` to exit, then SIGKILL. Nothing to do if it already exited.
fn terminate(child: &mut Child, grace: Duration) -> Terminated {
    if !matches!(child.try_wait(), Ok(None)) {
        return Terminated::AlreadyGone;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return Terminated::Exited;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Terminated::Killed
}

struct DbCounts {
    done: i64,
    failed: i64,
    failed_attempts: i64,
    finishes: Vec<Option<f64>>,
}

async fn db_counts(path: &Path, n: u32) -> anyhow::Result<DbCounts> {
    let db = Store::open_read_only(path).await?;
    // A few hundred rows: read whole, counted here.
    let videos = testing::videos(&db).await?;
    let attempts = testing::attempts(&db).await?;
    db.close().await;
    let done = videos.iter().filter(|v| v.status == VideoStatus::Done).count() as i64;
    let failed = videos.iter().filter(|v| v.status == VideoStatus::Failed).count() as i64;
    let failed_attempts = attempts.iter().filter(|a| a.outcome != "done").count() as i64;
    let first = attempts.iter().filter_map(|a| a.started_at).min();
    // Worker K owns the videos where video_id % N = K: its shard is its work.
    let mut last: std::collections::BTreeMap<i64, Option<i64>> = Default::default();
    for a in &attempts {
        let at = last.entry(a.video_id % n as i64).or_default();
        *at = (*at).max(a.finished_at);
    }
    let mut finishes = vec![None; n as usize];
    if let Some(first) = first {
        for (shard, at) in last {
            if let (Some(slot), Some(at)) = (finishes.get_mut(shard as usize), at) {
                *slot = Some((at - first) as f64 / 1000.0);
            }
        }
    }
    Ok(DbCounts { done, failed, failed_attempts, finishes })
}

/// The backend behind nginx: answers anything 200 after 50 ms and counts what it
/// served. It has its own thread and runtime, so the benchmark's waiting cannot delay
/// an answer. Stopped when dropped.
struct Backend {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Backend {
    fn start() -> anyhow::Result<Backend> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("backend".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = axum::Router::new().fallback(move || {
                    let counter = counter.clone();
                    async move {
                        tokio::time::sleep(BACKEND_DELAY).await;
                        counter.fetch_add(1, Ordering::Relaxed);
                        "{\"analysed\":true}"
                    }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await?;
                anyhow::Ok(())
            })
        })?;
        Ok(Backend { port, served, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Ok(Err(e)) = thread.join()
        {
            eprintln!("the backend failed: {e:#}");
        }
    }
}

/// nginx on PATH (or in /usr/sbin, which a user's PATH often lacks), else installed
/// from Debian's packages.
fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(found) = find_nginx() {
        return Ok(found);
    }
    eprintln!("nginx is not installed: installing it with apt-get");
    let mut last = String::new();
    for update_first in [false, true] {
        if update_first {
            apt(&["update"])?;
        }
        for package in ["nginx-light", "nginx"] {
            match apt(&["install", "-y", "--no-install-recommends", package]) {
                Ok(()) => {
                    if let Some(found) = find_nginx() {
                        return Ok(found);
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
    }
    bail!("nginx is not installed and apt-get could not install nginx-light or nginx ({last}); install nginx and rerun")
}

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// `apt-get ARGS`, non-interactive, through `sudo -n` unless we are root.
fn apt(args: &[&str]) -> anyhow::Result<()> {
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
    if !root {
        cmd.args(["-n", "apt-get"]);
    }
    let out = cmd
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim();
        bail!("apt-get {} exited with {}: {last}", args.join(" "), out.status);
    }
    Ok(())
}

/// "nginx/1.22.1", as `nginx -v` says.
fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stderr).split("version: ").nth(1).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "nginx".into())
}

/// One nginx with the limit, run from its own directory (pid, logs, temp
/// paths inside it); stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(nginx: &Path, dir: &Path, backend_port: u16) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir)?;
        // The free port can be taken between our check and nginx's bind: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(dir, port, backend_port))?;
            let child = Command::new(nginx)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr.log"))?)
                .spawn()
                .context("cannot start nginx")?;
            let mut nginx = Nginx { child, port, dir: dir.to_path_buf() };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(nginx);
                }
                if nginx.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let errors = format!("{}{}", tail(&dir.join("stderr.log"), 400), tail(&dir.join("error.log"), 400));
            if !errors.contains("Address already in use") {
                bail!("nginx did not start: {}", errors.trim());
            }
            nginx.child.kill().ok();
        }
        bail!("nginx found no free port on 127.0.0.1")
    }

    /// A burst of calls must bring both 200s and 429s, and every 429 must carry
    /// `Retry-After: 1`, or the benchmark would not measure what the issue describes.
    fn preflight(&self) -> anyhow::Result<()> {
        let calls = 2 * (BURST + 1) as usize;
        let answers: Vec<anyhow::Result<(u16, Option<String>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..calls).map(|_| s.spawn(|| raw_get(self.port))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a preflight call panicked"))))
                .collect()
        });
        let answers = answers.into_iter().collect::<anyhow::Result<Vec<_>>>().context("nginx preflight")?;
        let ok = answers.iter().filter(|(status, _)| *status == 200).count();
        let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
        if ok == 0 || limited.is_empty() {
            bail!(
                "nginx preflight: {calls} calls at once got {ok} answers 200 and {} 429, expected both",
                limited.len()
            );
        }
        if let Some((_, retry_after)) = limited.iter().find(|(_, r)| r.as_deref() != Some("1")) {
            bail!("nginx preflight: a 429 came with Retry-After {retry_after:?}, expected \"1\"");
        }
        Ok(())
    }

    fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.access_log()).map(|m| m.len()).unwrap_or(0)
    }

    /// The access log from byte `from` on: answers by status, and the span from the
    /// first request's arrival to the last answer.
    fn read_log(&self, from: u64) -> anyhow::Result<AccessLog> {
        let text = std::fs::read_to_string(self.access_log())?;
        let mut log = AccessLog::default();
        let (mut first, mut last) = (f64::MAX, f64::MIN);
        for line in text.get(from as usize..).unwrap_or("").lines() {
            // log_format fleet '$msec $request_time $status'
            let mut fields = line.split_whitespace();
            let (Some(end), Some(took), Some(status)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(end), Ok(took)) = (end.parse::<f64>(), took.parse::<f64>()) else { continue };
            first = first.min(end - took);
            last = last.max(end);
            match status {
                "200" => log.ok += 1,
                "429" => log.limited += 1,
                _ => log.other += 1,
            }
        }
        if last > first {
            log.window_secs = last - first;
        }
        Ok(log)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
        let _ = terminate(&mut self.child, Duration::from_secs(5));
    }
}

#[derive(Default)]
struct AccessLog {
    ok: u64,
    limited: u64,
    other: u64,
    window_secs: f64,
}

fn nginx_conf(dir: &Path, port: u16, backend_port: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   log_format fleet '$msec $request_time $status';\n\
         \x20   access_log {d}/access.log fleet;\n\
         \x20   # One key for every caller: the whole fleet shares the limit.\n\
         \x20   limit_req_zone \"fleet\" zone=api:1m rate={ALLOWED_PER_SEC}r/s;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       location / {{\n\
         \x20           limit_req zone=api burst={BURST} nodelay;\n\
         \x20           limit_req_status 429;\n\
         \x20           proxy_pass http://127.0.0.1:{backend_port};\n\
         \x20       }}\n\
         \x20       error_page 429 = @limited;\n\
         \x20       location @limited {{\n\
         \x20           add_header Retry-After 1 always;\n\
         \x20           return 429;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// `GET /` with a fresh connection: the status and the Retry-After header, if any.
fn raw_get(port: u16) -> anyhow::Result<(u16, Option<String>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let head = out.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))?;
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.trim().to_string());
    Ok((status, retry_after))
}

/// The last `max` bytes of a file, for error messages.
fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim().to_string()
}

fn run_line(n: u32, c: u32, run: usize, r: &RunResult) -> String {
    let ratio = r.finish_ratio().map_or_else(|| "n/a".into(), |x| format!("{x:.2}"));
    let mut line = format!(
        "{n} × {c}, run {run}: {:.1} s first call to last answer ({:.0}% of {ALLOWED_PER_SEC}/s), \
         fleet {:.1} s, {} done, {} failed, {} attempts not done (retried, released or failed), {} answers 429, \
         worker finishes {} s (ratio {ratio})",
        r.window_secs,
        r.rate_percent(),
        r.fleet_secs,
        r.done,
        r.failed,
        r.failed_attempts,
        r.answered_429,
        r.finishes_text(),
    );
    if r.answered_other > 0 {
        line.push_str(&format!(", {} other answers", r.answered_other));
    }
    match r.timed_out {
        Some(Terminated::Killed) => line.push_str(&format!(
            ", TIMED OUT (the supervisor did not stop within {} s of SIGTERM and was killed)",
            STOP_GRACE.as_secs()
        )),
        Some(_) => line.push_str(", TIMED OUT"),
        None => {}
    }
    line
}

fn report(rows: &[(u32, Vec<RunResult>)], runs: usize, opts: &Options, version: &str) -> String {
    let c = opts.concurrency;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let rate_flag = opts.worker_rate.as_ref().map_or_else(|| "no `--rate`".to_string(), |r| format!("`--rate {r}`"));
    let mut out = format!(
        "{videos} videos imported with `supervisor import`, then `supervisor start --workers N --concurrency {c} \
         --http http://127.0.0.1:PORT/ --exit-when-done`, {rate_flag}. In front of the backend: {version} \
         from Debian's packages, `limit_req_zone \"fleet\" zone=api:1m rate={ALLOWED_PER_SEC}r/s` (one key, so \
         the workers share the limit), `limit_req zone=api burst={BURST} nodelay`, 429 with `Retry-After: 1` \
         (checked before each run); the backend answers 200 after {} ms. Time is taken at nginx, from the first \
         call's arrival to the last answer (access log); the rate is done videos over that time. A worker's \
         finish is the latest `finished_at` of its shard's attempts, from the run's first `started_at`. \
         Median of {runs} runs, the worst of them in parentheses; goals are judged on the median.\n\n\
         | fleet | first call to last answer | rate achieved, % of {ALLOWED_PER_SEC}/s | failed videos | \
         slowest / fastest worker finish | answers 429 |\n|---|---|---|---|---|---|\n",
        BACKEND_DELAY.as_millis(),
        videos = opts.videos,
    );
    for (n, results) in rows {
        let label = format!("{n} workers × {c}");
        let complete: Vec<&RunResult> = results.iter().filter(|r| r.timed_out.is_none()).collect();
        if complete.is_empty() {
            out.push_str(&format!("| {label} | every run timed out | | | | |\n"));
        } else {
            let col = |f: &dyn Fn(&RunResult) -> f64| complete.iter().map(|r| f(r)).collect::<Vec<_>>();
            let worst_max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
            let worst_min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
            let window = col(&|r| r.window_secs);
            let rate = col(&|r| r.rate_percent());
            let failed = col(&|r| r.failed as f64);
            let limited = col(&|r| r.answered_429 as f64);
            // A run where some worker did nothing has no ratio: it counts as infinite.
            let ratio = col(&|r| r.finish_ratio().unwrap_or(f64::INFINITY));
            let (rate_m, failed_m, ratio_m) = (median(rate.clone()), median(failed.clone()), median(ratio.clone()));
            out.push_str(&format!(
                "| {label} | {:.1} s ({:.1} s) | {rate_m:.0}% ({:.0}%): {} | {failed_m:.0} ({:.0}): {} | \
                 {ratio_m:.2} ({:.2}): {} | {:.0} ({:.0}) |\n",
                median(window.clone()),
                worst_max(&window),
                worst_min(&rate),
                verdict(rate_m >= GOAL_RATE_PERCENT),
                worst_max(&failed),
                verdict(failed_m == 0.0),
                worst_max(&ratio),
                verdict(ratio_m <= GOAL_FINISH_RATIO),
                median(limited.clone()),
                worst_max(&limited),
            ));
        }
        for (i, r) in results.iter().enumerate().filter(|(_, r)| r.timed_out.is_some()) {
            out.push_str(&format!(
                "| {label}, run {}: timeout at {} s, the fleet stopped {:.0} s after its start | {:.1} s | {:.0}% | \
                 {} ({} done) | {} | {} |\n",
                i + 1,
                opts.timeout.as_secs(),
                r.fleet_secs,
                r.window_secs,
                r.rate_percent(),
                r.failed,
                r.done,
                r.finish_ratio().map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
                r.answered_429,
            ));
        }
    }
    out.push_str(&format!(
        "| goal | | >= {GOAL_RATE_PERCENT:.0}% | 0 | <= {GOAL_FINISH_RATIO:.2} | |\n\nEach run:\n\n"
    ));
    for (n, results) in rows {
        for (i, r) in results.iter().enumerate() {
            out.push_str(&format!("- {}\n", run_line(*n, c, i + 1, r)));
        }
    }
    out
}
