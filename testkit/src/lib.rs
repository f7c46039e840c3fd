//! Test helpers for the shardfleet crates: a temp database per test, the real binaries
//! (`worker`, `supervisor`, `monitor`) on free ports, waits that poll for an outcome
//! instead of sleeping a guessed time, and (`tls`) a CA and an HTTPS API of the test's own.

pub mod pg_server;
pub mod pgbouncer;
pub mod tls;

pub use shared::storage::testing::{AttemptRow, VideoRow};

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::status::{ShardCounts, VideoStatus, WorkerStatus};
use shared::storage::testing;
use shared::storage::{DbLocation, FleetWorker, NewVideo, Store, owner_of};

/// A temp dir holding `fleet.db`, migrated and seeded by the test. Reads go through
/// shared's storage (`storage::testing` for the rows themselves), never around it.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub db: Store,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let db = Store::open(&path, 2).await.unwrap();
        TestDb { dir, path, db }
    }

    /// Inserts videos `1..=n` with source `src-<id>` and payload `{"n":<id>}`.
    pub async fn seed(&self, n: i64) {
        testing::seed_numbered(&self.db, 1..=n, ("src-", ""), true).await.unwrap();
    }

    /// Inserts these videos (id, source), each with payload `{"n":<id>}`.
    pub async fn seed_sources(&self, rows: Vec<(i64, String)>) {
        let videos: Vec<NewVideo> = rows
            .into_iter()
            .map(|(video_id, source)| NewVideo { video_id, source, payload: Some(format!("{{\"n\":{video_id}}}")) })
            .collect();
        testing::insert_videos(&self.db, &videos).await.unwrap();
    }

    /// Fills the table with 3,000 videos, closes the database, and overwrites the middle
    /// fifth of the file, as a failing disk would.
    pub async fn seed_and_damage(&self) {
        self.seed_sources((1..=3000).map(|i| (i, format!("videos/{i:06}/{}", "x".repeat(150)))).collect()).await;
        self.db.close().await;
        let mut bytes = std::fs::read(&self.path).unwrap();
        let len = bytes.len();
        bytes[len * 2 / 5..len * 3 / 5].fill(0xA5);
        std::fs::write(&self.path, bytes).unwrap();
    }

    /// Videos by status, counted from the table; statuses no video has are left out.
    pub async fn by_status(&self) -> BTreeMap<String, i64> {
        let c = self.counts().await;
        VideoStatus::ALL.iter().copied().filter(|&s| c.get(s) > 0).map(|s| (s.to_string(), c.get(s) as i64)).collect()
    }

    /// Every video by status, counted from the table.
    pub async fn counts(&self) -> ShardCounts {
        self.shard(0, 1).await
    }

    /// Videos of shard `k` of `n` by status, counted from the table (never the kept
    /// counts, which this checks).
    pub async fn shard(&self, k: u32, n: u32) -> ShardCounts {
        testing::count_table(&self.db, n).await.unwrap()[k as usize]
    }

    /// Video `id`'s row; panics if there is none.
    pub async fn video(&self, id: i64) -> VideoRow {
        testing::video(&self.db, id).await.unwrap().unwrap_or_else(|| panic!("no video {id}"))
    }

    /// Every video's row, by id.
    pub async fn videos(&self) -> Vec<VideoRow> {
        testing::videos(&self.db).await.unwrap()
    }

    /// Every attempt, in the order recorded.
    pub async fn attempts(&self) -> Vec<AttemptRow> {
        testing::attempts(&self.db).await.unwrap()
    }

    /// Video `id`'s attempts as (attempt, outcome).
    pub async fn history(&self, id: i64) -> Vec<(i64, String)> {
        self.attempts().await.into_iter().filter(|a| a.video_id == id).map(|a| (a.attempt, a.outcome)).collect()
    }

    /// Attempts with this outcome.
    pub async fn attempts_ending(&self, outcome: &str) -> usize {
        self.attempts().await.iter().filter(|a| a.outcome == outcome).count()
    }

    /// Videos recorded as done by more than one attempt: the completion must be once.
    pub async fn done_twice(&self) -> usize {
        let mut done: BTreeMap<i64, u32> = BTreeMap::new();
        for a in self.attempts().await.iter().filter(|a| a.outcome == "done") {
            *done.entry(a.video_id).or_default() += 1;
        }
        done.values().filter(|&&n| n > 1).count()
    }

    /// Attempts run by a worker other than the one owning the video's shard, in a
    /// fleet of `workers`.
    pub async fn outside_their_shard(&self, workers: u32) -> usize {
        let owns = |a: &AttemptRow| {
            a.worker.as_deref().and_then(owner_of).is_some_and(|(k, _)| i64::from(k) == a.video_id % i64::from(workers))
        };
        self.attempts().await.iter().filter(|a| !owns(a)).count()
    }

    /// Marks video `id` failed after `attempts` attempts with `error`.
    pub async fn mark_failed(&self, id: i64, attempts: i64, error: &str) {
        testing::mark_failed(&self.db, id, attempts, error).await.unwrap();
    }

    /// The worker slots of the latest run, by worker id (none before a run).
    pub async fn slots(&self) -> Vec<FleetWorker> {
        match self.db.latest_run().await.unwrap() {
            Some(run) => self.db.run_workers(run.run_id).await.unwrap(),
            None => Vec::new(),
        }
    }
}

/// The variable listing, comma-separated, the services whose absence must fail a test
/// instead of skipping it. `.ci/run` sets it to everything it installs, so a CI run
/// cannot pass by skipping. The names: `postgres`, `postgres-tls`, `cgroup`, `wrangler`,
/// `sqlite3`, `uts`, `root`, `systemd`, `kubernetes`, `podman`, `prometheus`, `chromium`,
/// and those later tests add.
pub const REQUIRE_VAR: &str = "FLEET_TEST_REQUIRE";

/// Whether `service` is named in `FLEET_TEST_REQUIRE`.
pub fn required(service: &str) -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v.split(',').any(|s| s.trim() == service))
}

/// A test skips because `service` is missing here, saying `why` in one line. Panics
/// instead when `FLEET_TEST_REQUIRE` names the service: there, a skip would hide it.
pub fn skip(service: &str, why: impl std::fmt::Display) {
    if required(service) {
        panic!("{service} is required here ({REQUIRE_VAR}) but missing: {why}");
    }
    eprintln!("skipping ({service}): {why}");
}

/// The variable naming the PostgreSQL server the tests may create databases on.
pub const POSTGRES_SERVER_VAR: &str = "FLEET_TEST_POSTGRES_URL";

/// A fresh, empty PostgreSQL database of the test's own on the server that
/// `FLEET_TEST_POSTGRES_URL` names (`.ci/run` starts one and sets it), or None, with one
/// line saying the test is skipped and why, when the variable is unset. A server that is
/// named but does not answer fails the test: a skip would hide it.
pub async fn fresh_postgres() -> Option<DbLocation> {
    let server = std::env::var(POSTGRES_SERVER_VAR).ok().filter(|s| !s.is_empty());
    let Some(server) = server else {
        skip(
            "postgres",
            format_args!("{POSTGRES_SERVER_VAR} is not set (.ci/run starts a PostgreSQL server and sets it)"),
        );
        return None;
    };
    let db = testing::create_postgres_database(&server).await;
    Some(db.unwrap_or_else(|e| panic!("no database on the test server {POSTGRES_SERVER_VAR}={server}: {e}")))
}

/// [`fresh_postgres`] as the URL a command line takes.
pub async fn fresh_postgres_url() -> Option<String> {
    Some(fresh_postgres().await?.as_arg().into_string().expect("a URL is text"))
}

/// An HTTP client for a test's own calls. reqwest has no TLS crypto of its own in this
/// workspace (see `shared::tls`): a client built without this panics.
pub fn http() -> reqwest::Client {
    shared::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// A running `worker` process. Killed when dropped.
pub struct WorkerProc {
    pub child: Child,
    pub port: u16,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// The path of a binary of this workspace, built in the test's own profile. `cargo
/// test --workspace` builds them all first; a test run of one package builds the one it
/// needs on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = path.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "release");
        let target_dir = path.parent().and_then(|p| p.parent()).expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", name, "--target-dir"]).arg(target_dir);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building {name} failed");
    }
    path
}

pub fn worker_bin() -> PathBuf {
    bin("worker")
}

/// `n` consecutive free ports on 127.0.0.1, for a fleet's base port.
pub fn free_ports(n: u16) -> u16 {
    use std::net::TcpListener;
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 60000 {
            continue;
        }
        let held: Vec<_> = (0..n).map_while(|k| TcpListener::bind(("127.0.0.1", base + k)).ok()).collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A `worker` process to start, with named settings instead of positional ones: worker
/// 0 of 1, on any free port, run in its database's directory, unless told otherwise.
///
/// ```ignore
/// let w = WorkerBuilder::new(&t).id(1).workers(2).sleep("50ms").concurrency(4).args(["--steal", "idle"]).spawn();
/// ```
#[derive(Clone, Debug)]
pub struct WorkerBuilder {
    /// `--db`: a SQLite path or a PostgreSQL URL.
    db: OsString,
    /// The working directory; None: the SQLite file's directory.
    cwd: Option<PathBuf>,
    id: u32,
    workers: u32,
    /// 0: any free port, read back from the worker's "listening on" line.
    port: u16,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl WorkerBuilder {
    /// Worker 0 of 1 on `db` (a [`TestDb`], a SQLite path or a PostgreSQL URL).
    pub fn new(db: impl AsRef<OsStr>) -> WorkerBuilder {
        let db = db.as_ref().to_os_string();
        WorkerBuilder { db, cwd: None, id: 0, workers: 1, port: 0, args: Vec::new(), env: Vec::new() }
    }

    /// `--worker-id`.
    pub fn id(mut self, k: u32) -> Self {
        self.id = k;
        self
    }

    /// `--workers`: the number of shards.
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// `--port` (0, the default: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The directory it runs in; a database given as a URL has none of its own.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// `--sleep`: the handler that only sleeps this long (`50ms`, or a range `0..2ms`).
    pub fn sleep(self, time: &str) -> Self {
        self.args(["--sleep", time])
    }

    /// `--exec`: the handler command.
    pub fn exec(self, command: &str) -> Self {
        self.args(["--exec", command])
    }

    /// `--concurrency`: jobs at once.
    pub fn concurrency(self, jobs: u32) -> Self {
        self.args(["--concurrency", &jobs.to_string()])
    }

    /// Any other flags, added in order.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable set for the worker (the builder clears those a user's
    /// shell may set, such as `NOTIFY_SOCKET`).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.into(), value.as_ref().to_os_string()));
        self
    }

    /// Starts the worker and waits until it listens; panics with its logs if it does not.
    pub fn spawn(&self) -> WorkerProc {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the worker and waits until it listens; an error carries its logs.
    pub fn try_spawn(&self) -> Result<WorkerProc, String> {
        let (k, n) = (self.id, self.workers);
        let cwd = match &self.cwd {
            Some(dir) => dir.clone(),
            None => Path::new(&self.db).parent().expect("a SQLite file's directory, or cwd() for a URL").into(),
        };
        let mut child = Command::new(worker_bin())
            .args(["--worker-id", &k.to_string(), "--workers", &n.to_string(), "--port", &self.port.to_string()])
            .arg("--db")
            .arg(&self.db)
            .args(&self.args)
            .env("RUST_LOG", shared::logging::DEFAULT_LOG_FILTER)
            .env_remove("WORKER_CONCURRENCY")
            .env_remove("FLEET_CONTROL_TOKEN")
            .env_remove("FLEET_CA_CERT")
            // A test run under a service manager must not have its workers talk to it.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("FLEET_LOG_FORMAT")
            .env_remove("FLEET_STEAL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
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
                    // The port is the digits after the address, whatever follows them (the
                    // closing quote of a JSON log line).
                    if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = port_tx.send(digits.parse::<u16>().unwrap());
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

    /// A fleet of `n` workers so configured, on consecutive ports (as `--base-port` and
    /// the supervisor lay them out); returns them and the base port. Retries elsewhere if
    /// another process takes a port.
    pub fn spawn_fleet(&self, n: u32) -> (Vec<WorkerProc>, u16) {
        for _ in 0..10 {
            let base = free_ports(n as u16);
            let started: Result<Vec<_>, _> =
                (0..n).map(|k| self.clone().id(k).workers(n).port(base + k as u16).try_spawn()).collect();
            if let Ok(workers) = started {
                return (workers, base);
            }
        }
        panic!("could not start {n} workers on consecutive ports");
    }
}

impl AsRef<OsStr> for TestDb {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
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

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not exit; logs:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `/status` as JSON, for checking field names.
    pub async fn status(&self) -> serde_json::Value {
        http().get(self.url("/status")).send().await.unwrap().json().await.unwrap()
    }

    /// `/status` as the shared type.
    pub async fn worker_status(&self) -> WorkerStatus {
        serde_json::from_value(self.status().await).expect("a WorkerStatus")
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Checks `check` again and again for `period`, and panics with `what` the first time
/// it fails: for what must not happen, where a sleep and one look at its end would miss
/// a change made and undone in between.
pub async fn holds_for<F, Fut>(period: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + period;
    loop {
        assert!(check().await, "no longer true: {what}");
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25).min(end.saturating_duration_since(Instant::now()))).await;
    }
}

/// Runs the worker binary to completion with `args` and returns (exit code, stderr
/// followed by stdout).
pub fn run_worker_to_end(args: &[&str], cwd: &Path) -> (i32, String) {
    let out = Command::new(worker_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("FLEET_CA_CERT")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), text)
}

/// The `supervisor` binary run in `dir`, handing its fleets this build's `worker`.
/// Variables a user's shell may set (a fleet size, a database, a token, a CA) are not
/// inherited: a test says everything it means on the command line.
pub fn supervisor(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("supervisor"));
    cmd.current_dir(dir).env("FLEET_WORKER_BIN", bin("worker")).env("RUST_LOG", shared::logging::DEFAULT_LOG_FILTER);
    for var in [
        "FLEET_DB",
        "DATABASE_URL",
        "FLEET_WORKER_IDS",
        "WORKER_CONCURRENCY",
        "FLEET_WORKERS",
        "FLEET_CONTROL_TOKEN",
        "FLEET_CA_CERT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// What a finished command printed: stdout, then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Whether process `pid` is alive. A zombie is dead for our purposes: it runs nothing
/// and holds no memory.
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// Polls until every process of `pids` is dead, for at most `within`; says whether
/// they all are.
pub fn all_dead(pids: &[i64], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.iter().all(|&p| !alive(p))
}

/// Waits for `child` to exit; panics after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "pid {} did not exit within {within:?}", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one statement on the PostgreSQL database `url` with psql and returns its
/// unaligned output: for what no command shows, such as the attempts history.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-Atqc", sql]).output().expect("psql runs");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A process (a supervisor) started in the background, stopped (SIGTERM, then SIGKILL) if the test
/// ends without waiting for it, so a failing test leaves no fleet running.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
