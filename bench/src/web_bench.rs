//! `fleet-bench web`: `monitor --serve` under fifty browsers polling its fragment every
//! second: how fast it answers, how much memory it holds, and whether the browsers add
//! any request to the workers beyond the monitor's own poll.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Options {
    pub workers: u32,
    pub videos: i64,
    pub clients: usize,
    pub seconds: u64,
}

/// Requests timed per route before the load starts.
const SAMPLES: usize = 200;

/// One keep-alive HTTP/1.1 connection to the monitor.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        Ok(Conn(BufReader::new(TcpStream::connect(addr).await?)))
    }

    /// GET `path`; returns the status code and how long the whole answer took.
    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Duration)> {
        let started = Instant::now();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.0.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let code: u16 = line.split_whitespace().nth(1).context("no status line")?.parse()?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.0.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).await?;
        Ok((code, started.elapsed()))
    }
}

/// A connection to the monitor at `addr` once it listens (within `within`) and has
/// polled a few times, so the page has figures and a chart to draw.
async fn serving(addr: &str, within: Duration) -> anyhow::Result<Conn> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the monitor did not start serving on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    Conn::open(addr).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 99th percentile, in milliseconds.
fn spread(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.99))
}

/// The workers' `/status` requests so far, from their own counter.
async fn status_requests(base: u16, workers: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for k in 0..workers {
        let mut c = Conn::open(&format!("127.0.0.1:{}", base + k as u16)).await?;
        c.0.get_mut().write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
        let mut text = String::new();
        c.0.read_to_string(&mut text).await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("shardfleet_http_requests_total{") && l.contains("endpoint=\"/status\""))
            .context("no shardfleet_http_requests_total for /status")?;
        total += line.rsplit(' ').next().context("no value")?.parse::<u64>()?;
    }
    Ok(total)
}

pub async fn bench_web(dir: &Path, opts: &Options) -> anyhow::Result<String> {
    let path = super::make_db(dir, opts.videos).await?;
    let (mut fleet, base) = super::idle_fleet(&path, opts.workers)?;
    let result = measure(base, opts).await;
    for w in &mut fleet {
        let _ = w.kill();
        let _ = w.wait();
    }
    result
}

async fn measure(base: u16, opts: &Options) -> anyhow::Result<String> {
    let port = super::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut monitor = Command::new(super::bin("monitor")?)
        .args(["--base-port", &base.to_string(), "--workers", &opts.workers.to_string(), "--interval", "1s"])
        .args(["--serve", &addr])
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = monitor.id();
    let outcome = async {
        let mut conn = serving(&addr, Duration::from_secs(30)).await?;
        let mut quiet = Vec::new();
        for route in ["/", "/fragment", "/api/fleet"] {
            let mut times = Vec::new();
            for _ in 0..SAMPLES {
                let (code, took) = conn.get(route).await?;
                if code != 200 {
                    bail!("GET {route} answered {code}");
                }
                times.push(took);
            }
            quiet.push((route, spread(times)));
        }

        let before = status_requests(base, opts.workers).await?;
        let load_started = Instant::now();
        let stop = load_started + Duration::from_secs(opts.seconds);
        let mut clients = Vec::new();
        for _ in 0..opts.clients {
            let addr = addr.clone();
            clients.push(tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await?;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let (mut times, mut failed) = (Vec::new(), 0u64);
                while Instant::now() < stop {
                    tick.tick().await;
                    match conn.get("/fragment").await {
                        Ok((200, took)) => times.push(took),
                        _ => failed += 1,
                    }
                }
                anyhow::Ok((times, failed))
            }));
        }
        let (mut loaded, mut failed) = (Vec::new(), 0);
        for c in clients {
            let (times, f) = c.await??;
            loaded.extend(times);
            failed += f;
        }
        let load_secs = load_started.elapsed().as_secs_f64();
        let after = status_requests(base, opts.workers).await?;
        let rss = super::rss(pid).context("cannot read the monitor's memory")?;
        let peak = super::peak_rss(pid).context("cannot read the monitor's memory")?;
        anyhow::Ok((quiet, spread(loaded), failed, load_secs, after - before, rss, peak))
    }
    .await;
    let still_running = monitor.try_wait()?.is_none();
    let _ = monitor.kill();
    let _ = monitor.wait();
    let (quiet, loaded, failed, load_secs, status_requests, rss, peak) = outcome?;
    if !still_running {
        bail!("the monitor exited during the benchmark");
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let (w, v, c, s) = (opts.workers, opts.videos, opts.clients, opts.seconds);
    let mut out = String::from("| measurement | result | goal |\n|---|---|---|\n");
    for (route, (median, p99)) in quiet {
        out += &format!(
            "| `GET {route}`, {w} workers, {v} videos, one client, {SAMPLES} requests | median {median:.2} ms, p99 {p99:.2} ms | ≤ 50 ms: {} |\n",
            verdict(p99 <= 50.0)
        );
    }
    out += &format!(
        "| `GET /fragment` every second from {c} clients for {s} s | median {:.2} ms, p99 {:.2} ms, {failed} failed | ≤ 50 ms: {} |\n",
        loaded.0,
        loaded.1,
        verdict(loaded.1 <= 50.0 && failed == 0)
    );
    out += &format!(
        "| same run, at its end: monitor RSS (VmRSS), peak (VmHWM) | {}, peak {} | ≤ 20 MiB: {} |\n",
        super::mib(rss),
        super::mib(peak),
        verdict(rss <= 20 << 20)
    );
    // The monitor polls each worker once a second: anything beyond that came from the
    // clients. One round either side of the window may fall in.
    let own_poll = (load_secs.ceil() as u64 + 2) * w as u64;
    out += &format!(
        "| same run: `/status` requests the {w} workers served (their `shardfleet_http_requests_total`) | {status_requests} in {load_secs:.0} s | the monitor's own poll alone (≤ {own_poll}): {} |\n",
        verdict(status_requests <= own_poll)
    );
    out += "\nThe failed list and its search, at 10 million videos on SQLite and PostgreSQL: `fleet-bench \
            web-reads`.\n";
    Ok(out)
}

/// `fleet-bench web-reads`: the page's routes against a database of `videos` videos of
/// which one in ten failed, served by `monitor --db ... --serve` (no worker runs: the
/// rows are what is measured). The rows go in by one SQL statement each, not the import.
pub async fn bench_web_reads(db: shared::storage::DbLocation, videos: i64, label: &str) -> anyhow::Result<String> {
    use shared::storage::{FleetRun, RunState, Store, testing};
    let filled = Instant::now();
    let store = Store::open(db.clone(), 2).await?;
    testing::seed_numbered(&store, 1..=videos, ("https://videos.example/", ".mp4"), false).await?;
    testing::execute(
        &store,
        "UPDATE videos SET status = 'failed', attempts = 3, last_error = 'exit code 1: the file ended prematurely' \
         WHERE video_id % 10 = 0",
    )
    .await?;
    let run = FleetRun { state: RunState::Stopped, ..FleetRun::example(4, super::free_port()? as i64) };
    store.insert_run(&run).await?;
    store.close().await;
    let fill_secs = filled.elapsed().as_secs_f64();

    let addr = format!("127.0.0.1:{}", super::free_port()?);
    // The monitor's log says why a route answered other than 200.
    let log_path = std::env::temp_dir().join(format!("fleet-bench-web-reads-{}.log", std::process::id()));
    let mut monitor = Command::new(super::bin("monitor")?)
        .args(["--db", &db.to_string(), "--interval", "1s", "--serve", &addr])
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let timed = async {
        let mut conn = serving(&addr, Duration::from_secs(60)).await?;
        let mut rows = Vec::new();
        for (route, samples) in [
            ("/", 100),
            ("/fragment", 100),
            ("/failed", 100),
            ("/failed?after=5000000", 100),
            ("/failed?q=99999.mp4", 5),
        ] {
            let (mut times, mut refused) = (Vec::new(), Vec::new());
            for _ in 0..samples {
                let (code, took) = conn.get(route).await?;
                // A search has no goal: one that was refused is reported, not fatal.
                if code != 200 && !route.contains("q=") {
                    bail!("GET {route} answered {code}");
                }
                if code != 200 {
                    refused.push(code);
                }
                times.push(took);
            }
            rows.push((route, samples, spread(times), refused));
        }
        anyhow::Ok(rows)
    }
    .await;
    let _ = monitor.kill();
    let _ = monitor.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let mut out = format!(
        "{label}: {videos} videos, {} failed, written by SQL in {fill_secs:.0} s\n\n\
         | route | requests | median | p99 | goal |\n|---|---|---|---|---|\n",
        videos / 10
    );
    let mut notes = String::new();
    for (route, n, (median, p99), refused) in timed? {
        let goal = if route.contains("q=") {
            "none (a scan of the failed rows)".to_string()
        } else {
            format!("≤ 50 ms: {}", if p99 <= 50.0 { "met" } else { "NOT met" })
        };
        out += &format!("| `GET {route}` | {n} | {median:.2} ms | {p99:.2} ms | {goal} |\n");
        if let Some(code) = refused.first() {
            let why = log.lines().find(|l| l.contains("failed")).unwrap_or("the monitor logged nothing");
            notes += &format!("\n`GET {route}` answered {code} to {} of {n} requests: {why}\n", refused.len());
        }
    }
    Ok(out + &notes)
}
