//! Test helpers: a temp database per test, real `worker` processes on 127.0.0.1, the
//! `monitor` binary, and a snapshot file compared or updated.

#![allow(dead_code)]

pub mod pty;
pub mod snapshot;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shared::db::Db;
use shared::status::ShardCounts;

pub const LONG: Duration = Duration::from_secs(60);

/// A temp dir holding `fleet.db`, migrated and seeded by the test.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub db: Db,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let db = Db::open(&path, 2).await.unwrap();
        TestDb { dir, path, db }
    }

    /// Inserts videos `1..=n`.
    pub async fn seed(&self, n: i64) {
        sqlx::query(
            "INSERT INTO videos (video_id, source) \
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) \
             SELECT i, 'src-' || i FROM s",
        )
        .bind(n)
        .execute(self.db.pool())
        .await
        .unwrap();
    }

    /// Videos by status over the whole table.
    pub async fn counts(&self) -> ShardCounts {
        self.shard_of(0, 0).await
    }

    /// Videos of shard `k` of `n` by status.
    pub async fn shard(&self, k: u32, n: u32) -> ShardCounts {
        self.shard_of(k, n).await
    }

    /// `n` = 0 counts every video.
    async fn shard_of(&self, k: u32, n: u32) -> ShardCounts {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM videos WHERE ?1 = 0 OR video_id % ?1 = ?2 GROUP BY status")
                .bind(n)
                .bind(k)
                .fetch_all(self.db.pool())
                .await
                .unwrap();
        let by: BTreeMap<_, _> = rows.into_iter().collect();
        let get = |s: &str| by.get(s).copied().unwrap_or(0) as u64;
        ShardCounts { pending: get("pending"), running: get("running"), done: get("done"), failed: get("failed") }
    }
}

/// A running `worker` process. Killed when dropped.
pub struct WorkerProc {
    pub child: Child,
    pub port: u16,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// The `worker` binary of this build profile: `target/<profile>/worker`, next to the
/// directory of this test executable. It belongs to another package, so it is built here
/// when missing.
pub fn worker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
        let bin = profile_dir.join("worker");
        if !bin.exists() {
            let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "worker", "--target-dir"]).arg(target_dir);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "cargo build -p worker failed");
        }
        assert!(bin.exists(), "{} is missing after building it", bin.display());
        bin
    })
}

pub fn monitor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_monitor")
}

/// Starts worker `k` of `n` on `port` (0: any free port) with `args` added, and waits
/// until it listens.
pub fn spawn_worker(db: &Path, k: u32, n: u32, port: u16, args: &[&str]) -> Result<WorkerProc, String> {
    let mut child = Command::new(worker_bin())
        .args(["--worker-id", &k.to_string(), "--workers", &n.to_string(), "--port", &port.to_string(), "--db"])
        .arg(db)
        .args(args)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("FLEET_CONTROL_TOKEN")
        .current_dir(db.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker binary starts");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let (logs, port_tx) = (logs.clone(), port_tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                    let _ = port_tx.send(rest.trim().parse::<u16>().unwrap());
                }
                logs.lock().unwrap().push(line);
            }
        });
    }
    drop(port_tx);
    match port_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(port) => Ok(WorkerProc { child, port, logs }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("worker {k} did not start listening; logs:\n{}", logs.lock().unwrap().join("\n")))
        }
    }
}

/// `n` workers on consecutive ports (as `--base-port` and the supervisor lay them out);
/// returns them and the base port. Retries elsewhere if another process takes a port.
pub fn spawn_fleet(db: &Path, n: u32, args: &[&str]) -> (Vec<WorkerProc>, u16) {
    for _ in 0..10 {
        let base = free_port_run(n as u16);
        let started: Result<Vec<_>, _> = (0..n).map(|k| spawn_worker(db, k, n, base + k as u16, args)).collect();
        if let Ok(workers) = started {
            return (workers, base);
        }
    }
    panic!("could not start {n} workers on consecutive ports");
}

/// A port `p` such that `p..p+n` were all free a moment ago.
fn free_port_run(n: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base.checked_add(n).is_none() {
            continue;
        }
        if (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl WorkerProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn status(&self) -> shared::status::WorkerStatus {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(self.url("/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `monitor` with `args` to its end, in `cwd`, with no token in the environment.
pub fn run_monitor(args: &[&str], cwd: &Path) -> Output {
    Command::new(monitor_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("FLEET_DB")
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `monitor --json` with `args`, parsed.
pub fn monitor_json(args: &[&str], cwd: &Path) -> monitor::Report {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_monitor(&all, cwd);
    assert!(out.status.success(), "monitor failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Polls `check` until it returns true; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
