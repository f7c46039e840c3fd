//! The real `worker` binary as service managers run it: systemd's notify protocol over
//! a real unix datagram socket as `NOTIFY_SOCKET` (read as systemd reads it for a
//! `Type=notify` unit with `WatchdogSec=`), JSON log lines for collectors, the worker
//! id of a StatefulSet's pod, and a real Prometheus server scraping `/metrics`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::{TestDb, WorkerBuilder, run_worker_to_end, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// A notify socket of the test's own, and every line that arrived on it with its time.
struct NotifySocket {
    path: String,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        // Ends with the test process; a datagram socket has no peer to close it.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                kept.lock().unwrap().extend(text.lines().map(|l| (at, l.to_string())));
            }
        });
        NotifySocket { path: path.to_str().unwrap().to_string(), lines, _dir: dir }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|(_, l)| l == line)
    }

    /// When each watchdog ping arrived.
    fn pings(&self) -> Vec<Instant> {
        self.lines().into_iter().filter(|(_, l)| l == "WATCHDOG=1").map(|(at, _)| at).collect()
    }
}

/// The longest time between two consecutive pings.
fn longest_gap(pings: &[Instant]) -> Duration {
    pings.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_a_worker_says_ready_reports_progress_pings_its_watchdog_and_says_stopping() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let notify = NotifySocket::bind();
    // The handler fails if it can see the worker's socket or watchdog: they are not its own.
    let mut w = WorkerBuilder::new(&t)
        .exec("sh -c 'sleep 0.02; test -z \"$NOTIFY_SOCKET$WATCHDOG_USEC$WATCHDOG_PID\"'")
        .concurrency(2)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "500000")
        .spawn();

    wait_for(LONG, "READY=1", || async { notify.has("READY=1") }).await;
    let health = testkit::http().get(w.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "ready means /health answers and the database with it");

    wait_for(LONG, "a status line showing the shard finished", || async {
        notify.has("STATUS=shard 0/1: 40 done, 0 failed, 0 running, 0 pending")
            || notify.has("STATUS=shard 0/1 idle: 40 done, 0 failed, 0 running, 0 pending")
    })
    .await;
    let status_lines = notify.lines().iter().filter(|(_, l)| l.starts_with("STATUS=")).count();
    assert!(status_lines < 20, "progress is sent at most about once a second, not per video: {status_lines} lines");

    // Idle now: the pings go on at half the watchdog's interval, never missing one.
    let idle = Instant::now();
    wait_for(LONG, "1.5 s of idle pings", || async {
        notify.pings().last().is_some_and(|&at| at >= idle + Duration::from_millis(1500))
    })
    .await;
    let pings = notify.pings();
    assert!(pings.len() >= 4, "pings every 250ms: {} in all", pings.len());
    assert!(longest_gap(&pings) < Duration::from_millis(500), "a gap of {:?} would trip systemd", longest_gap(&pings));

    assert!(!notify.has("STOPPING=1"));
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(10)).success());
    assert!(notify.has("STOPPING=1"), "{:?}", notify.lines());
    let first = &notify.lines()[0].1;
    assert_eq!(first, "READY=1", "nothing comes before readiness");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_loop_is_held_up_stops_pinging_its_watchdog_until_the_loop_turns_again() {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        testkit::skip("sqlite3", "no sqlite3 command to hold the database's write lock with");
        return;
    }
    let t = TestDb::new().await;
    t.seed(2000).await;
    let notify = NotifySocket::bind();
    let _w = WorkerBuilder::new(&t)
        .sleep("5ms")
        .concurrency(4)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    wait_for(LONG, "the first pings", || async { notify.pings().len() >= 2 }).await;

    // Another program takes the write lock: the worker's next write waits for it, and
    // so does its loop. /health still answers (reads go on); only the loop is stuck.
    let mut sqlite = Command::new("sqlite3")
        .arg(&t.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = sqlite.stdin.take().unwrap();
    let mut stdout = BufReader::new(sqlite.stdout.take().unwrap());
    stdin.write_all(b".timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let locked_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stdin.write_all(b"COMMIT;\n.quit\n").unwrap();
    drop(stdin);
    assert!(sqlite.wait().unwrap().success());
    let released_at = Instant::now();

    // The loop may finish the turn it was in when the lock was taken; after that, nothing.
    let held: Vec<Instant> = notify
        .pings()
        .into_iter()
        .filter(|&at| at > locked_at + Duration::from_millis(500) && at < released_at)
        .collect();
    assert!(held.is_empty(), "{} pings while the loop was stuck: a timer, not the loop, is pinging", held.len());
    wait_for(Duration::from_secs(10), "pings again once the lock is gone", || async {
        notify.pings().iter().any(|&at| at > released_at)
    })
    .await;
}

#[tokio::test]
async fn with_json_logs_every_line_a_worker_prints_is_a_json_object_naming_it() {
    let t = TestDb::new().await;
    t.seed(12).await;
    // Video 3 fails: its warning carries the video id.
    let (code, out) = run_worker_to_end(
        &[
            "--worker-id",
            "1",
            "--workers",
            "2",
            "--port",
            "0",
            "--db",
            t.path.to_str().unwrap(),
            "--exec",
            "sh -c 'test {video_id} != 3'",
            "--max-attempts",
            "1",
            "--exit-when-done",
            "--log-format",
            "json",
        ],
        t.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.len() >= 3, "{out}");
    for l in &lines {
        assert_eq!(l["worker_id"], 1, "{l}");
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }
    let failed = lines.iter().find(|l| l["video_id"] == 3).unwrap_or_else(|| panic!("no line about video 3: {out}"));
    assert_eq!(failed["level"], "WARN");
    assert!(lines.iter().any(|l| l["message"] == "shard finished: 5 done, 1 failed"), "{out}");
}

#[tokio::test]
async fn a_log_format_that_is_neither_text_nor_json_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(testkit::worker_bin())
        .args(["--worker-id", "0", "--workers", "1", "--port", "0", "--sleep", "0"])
        .env("FLEET_LOG_FORMAT", "xml")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value 'xml' for '--log-format"), "{stderr}");
    assert!(!dir.path().join("fleet.db").exists());
}

#[tokio::test]
async fn a_worker_with_no_worker_id_refuses_to_start_and_says_where_one_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_worker_to_end(&["--workers", "3", "--port", "0", "--sleep", "0"], dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("worker: no worker id: give --worker-id K (or WORKER_ID)"), "{out}");
    assert_eq!(out.lines().count(), 1, "one sentence: {out}");
    assert!(!dir.path().join("fleet.db").exists());
}

#[tokio::test]
async fn a_pod_named_like_a_statefulsets_third_pod_works_its_shard_as_worker_2() {
    // A host name of the test's own needs a UTS namespace, which only root may make.
    let probe = Command::new("unshare").args(["--uts", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        testkit::skip("uts", "cannot make a UTS namespace here (unshare --uts needs root)");
        return;
    }
    let t = TestDb::new().await;
    t.seed(9).await;
    let out = Command::new("unshare")
        .args(["--uts", "sh", "-c", "hostname shardfleet-2 && exec \"$0\" \"$@\""])
        .arg(testkit::worker_bin())
        .args([
            "--worker-id-from-hostname",
            "--workers",
            "3",
            "--port",
            "0",
            "--sleep",
            "0",
            "--exit-when-done",
            "--steal",
            "off",
        ])
        .arg("--db")
        .arg(&t.path)
        .env_remove("WORKER_ID")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{text}");
    let done: Vec<i64> = t
        .videos()
        .await
        .into_iter()
        .filter(|v| v.status == shared::status::VideoStatus::Done)
        .map(|v| v.video_id)
        .collect();
    assert_eq!(done, [2, 5, 8], "worker 2 of 3 did its shard and only it");
}

/// The path of `name` on `PATH`.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scraping_every_second_gets_the_fleets_attempts_back() {
    let Some(prometheus) = which("prometheus") else {
        return testkit::skip(
            "prometheus",
            "no prometheus server (Debian's prometheus package): /metrics is not scraped",
        );
    };
    let t = TestDb::new().await;
    t.seed(30).await;
    // Every third video fails for good, so two outcomes are counted.
    let args = ["--exec", "sh -c 'test $(({video_id} % 3)) -ne 0'", "--max-attempts", "1"];
    let (workers, _) = WorkerBuilder::new(&t).args(args).spawn_fleet(2);
    wait_for(LONG, "every video finished", || async { t.counts().await.finished() }).await;

    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = workers.iter().map(|w| format!("'127.0.0.1:{}'", w.port)).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shardfleet\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = testkit::free_ports(1);
    let _server = testkit::Running(
        Command::new(prometheus)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let q = q.to_string();
        async move {
            let url = reqwest::Url::parse_with_params(&url, [("query", q)]).ok()?;
            let r = testkit::http().get(url).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()
        }
    };
    wait_for(LONG, "Prometheus to have scraped the fleet's attempts", || async {
        query(r#"sum(shardfleet_attempts_total{outcome="done"})"#).await == Some(20.0)
    })
    .await;
    assert_eq!(query(r#"sum(shardfleet_attempts_total{outcome="error"})"#).await, Some(10.0));
    assert_eq!(query(r#"count(up{job="shardfleet"} == 1)"#).await, Some(2.0), "both workers scraped");
    assert_eq!(query("count(shardfleet_http_requests_total)").await.map(|n| n >= 2.0), Some(true));
}
