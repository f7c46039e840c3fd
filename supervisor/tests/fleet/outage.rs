//! A database that blips under a running fleet costs no job: PostgreSQL restarted, or
//! stopped for 30 s, on a server of the test's own (`testkit::pg_server`), under a fleet
//! of long jobs. Each video ends done with exactly one attempt, none is `crashed` or
//! `expired`, and no worker is restarted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helper::seed;
use testkit::pg_server::PgServer;
use testkit::{bin, free_ports, psql, supervisor};

fn count(url: &str, sql: &str) -> i64 {
    psql(url, sql).parse().unwrap_or(-1)
}

/// `supervisor start --exit-when-done` on `url`: 2 workers of 2 slots, jobs of `job`,
/// on ports `base` and `base + 1`.
fn fleet_on(dir: &Path, url: &str, job: &str, base: u16) -> Child {
    supervisor(dir)
        .args(["start", "--workers", "2", "--concurrency", "2", "--mem-limit", "250M", "--exit-when-done"])
        .args(["--base-port", &base.to_string(), "--db", url, "--sleep", job])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("supervisor starts")
}

fn fleet(dir: &Path, url: &str, job: &str) -> Child {
    fleet_on(dir, url, job, free_ports(2))
}

/// Waits for `child` to exit within `limit`; kills it and fails otherwise. Returns its
/// exit code and everything it printed.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the fleet did not end within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Polls until `n` videos are running, so the blip lands on jobs in flight.
fn until_running(url: &str, n: i64) {
    let end = Instant::now() + Duration::from_secs(30);
    while count(url, "SELECT count(*) FROM videos WHERE status = 'running'") < n {
        assert!(Instant::now() < end, "{n} videos never ran at once");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every video done once, with one attempt that was not cut short, and no restart.
fn assert_no_job_was_lost(url: &str, videos: i64, out: &str) {
    let done = count(url, "SELECT count(*) FROM videos WHERE status = 'done' AND attempts = 1");
    assert_eq!(done, videos, "each video done with exactly one attempt\n{out}");
    let history = psql(url, "SELECT outcome, count(*) FROM attempts GROUP BY outcome ORDER BY 1");
    assert_eq!(history, format!("done|{videos}"), "no attempt crashed, expired or was released\n{out}");
    let restarts = count(url, "SELECT coalesce(sum(restarts), 0) FROM fleet_workers");
    assert_eq!(restarts, 0, "no worker was restarted\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_a_fleet_of_long_jobs_costs_no_job() {
    let Some(server) = PgServer::start() else { return };
    seed(&server.url, 8).await;
    let dir = tempfile::tempdir().unwrap();
    let child = fleet(dir.path(), &server.url, "6s");
    until_running(&server.url, 4);
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let (code, out) = finish(child, Duration::from_secs(90));
    assert_eq!(code, Some(0), "the run ends as if nothing happened:\n{out}");
    assert_no_job_was_lost(&server.url, 8, &out);
    assert!(out.contains("the database answers again"), "the return is said once:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_for_30s_under_a_fleet_of_long_jobs_costs_no_job() {
    let Some(server) = PgServer::start() else { return };
    seed(&server.url, 8).await;
    let dir = tempfile::tempdir().unwrap();
    // Jobs of 8 s: the first four end while the server is away, and every 15 s lease
    // lapses before it is back.
    let base = free_ports(2);
    let child = fleet_on(dir.path(), &server.url, "8s", base);
    until_running(&server.url, 4);
    std::thread::sleep(Duration::from_secs(1));
    server.stop();
    // While it is away, the worker is healthy and says what it waits for.
    let url = |path: &str| format!("http://127.0.0.1:{base}{path}");
    let http = testkit::http();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s: serde_json::Value = http.get(url("/status")).send().await.unwrap().json().await.unwrap();
        if s["database"]["state"] == "unreachable" {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker never said its database was away: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status["database"]["since"].is_i64() && status["database"]["last_error"].is_string(), "{status}");
    assert_eq!(status["in_flight"].as_array().map(Vec::len), Some(2), "its jobs run on: {status}");
    let health = http.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "an outage is waited out, not a sick worker");
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["database"]["state"], "unreachable", "{health}");
    let metrics = http.get(url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("shardfleet_database_up{worker=\"0\"} 0"), "{metrics}");
    std::thread::sleep(Duration::from_secs(27));
    server.start_again();
    let (code, out) = finish(child, Duration::from_secs(120));
    eprintln!("{out}");
    assert_eq!(code, Some(0), "the run rides out the outage and ends 0:\n{out}");
    assert_no_job_was_lost(&server.url, 8, &out);
    assert_eq!(out.matches("the database answers again").count(), 3, "each process says the return once:\n{out}");
    let away = out.matches("the database is unreachable").count();
    assert!(away <= 3, "one line when the database goes away per process, not one per try ({away}):\n{out}");
}

/// A small tmpfs of the test's own, unmounted when dropped (lazily: a process that
/// still holds a file in it must not fail the unmount).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts one of `size` (as `mount -o size=` takes it), or says why not.
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            testkit::skip("tmpfs", "mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            Ok(o) => {
                testkit::skip(
                    "tmpfs",
                    format_args!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                );
                None
            }
            Err(e) => {
                testkit::skip("tmpfs", format_args!("no mount command: {e}"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Grows (or shrinks) it in place, as an operator frees space.
    fn resize(&self, size: &str) {
        let out =
            Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(self.path()).output().unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).output();
    }
}

/// Fills the filesystem at `dir` to the last byte with one file.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![7u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = [7u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_sqlite_is_waited_out_and_the_same_run_ends_0() {
    let Some(disk) = Tmpfs::mount("16m") else { return };
    let db_path = disk.path().join("fleet.db");
    let url = db_path.to_str().unwrap().to_string();
    seed(&url, 400).await;
    let child = fleet(disk.path(), &url, "100ms");
    // While the fleet runs, the file is watched through the product's own SQLite
    // (`export`), not Debian's sqlite3 shell: every program that opens a WAL database
    // shares its index, and the shell's older SQLite (it predates the WAL-reset fix of
    // 3.51.3) is a variable this test does not need. The shell checks the file after.
    let done = || -> i64 {
        let out = Command::new(bin("supervisor"))
            .args(["export", "--format", "jsonl", "--status", "done", "--db", &url])
            .output()
            .expect("export runs");
        String::from_utf8_lossy(&out.stdout).lines().count() as i64
    };
    let sqlite = |sql: &str| -> String {
        let out = Command::new("sqlite3").arg(&db_path).arg(sql).output().expect("sqlite3 runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let until = |what: &str, check: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(60);
        while !check() {
            assert!(Instant::now() < end, "{what} never happened");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("some videos done", &|| done() >= 40);
    fill(disk.path());
    let done_when_full = done();
    // Full for a while: the run stalls, and says why.
    std::thread::sleep(Duration::from_secs(4));
    let status = Command::new(bin("supervisor")).args(["status", "--db", &url]).output().unwrap();
    let said = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(said.contains("is full") && said.contains("free of"), "status names the full disk:\n{said}");
    let done_later = done();
    assert!(done_later < 400, "the run stalled while the disk was full ({done_when_full} then {done_later})");
    disk.resize("64m");
    let (code, out) = finish(child, Duration::from_secs(120));
    eprintln!("{out}");
    assert_eq!(code, Some(0), "the same run carries on once space is freed, and ends 0:\n{out}");
    assert!(out.contains("full"), "the supervisor or a worker said the disk was full:\n{out}");
    assert_eq!(sqlite("SELECT count(*) FROM videos WHERE status = 'done'"), "400", "{out}");
    assert_eq!(sqlite("SELECT count(*) FROM videos WHERE status = 'failed'"), "0", "no video failed for it\n{out}");
    assert_eq!(sqlite("SELECT coalesce(sum(restarts), 0) FROM fleet_workers"), "0", "no worker restarted\n{out}");
    assert_eq!(sqlite("PRAGMA integrity_check"), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_an_outage_ends_within_the_grace_and_the_next_start_counts_no_attempt() {
    let Some(server) = PgServer::start() else { return };
    seed(&server.url, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(2).to_string();
    let child = supervisor(dir.path())
        .args(["start", "--workers", "2", "--concurrency", "2", "--mem-limit", "250M", "--grace", "2s"])
        .args(["--base-port", &base, "--db", &server.url, "--sleep", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_running(&server.url, 4);
    server.stop();
    std::thread::sleep(Duration::from_secs(1));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    // The grace (2 s), a worker's last try (at most 4 s), and the supervisor's own.
    let (code, out) = finish(child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "SIGTERM ends the run while the database is away:\n{out}");
    server.start_again();
    let (code, out) = finish(fleet(dir.path(), &server.url, "100ms"), Duration::from_secs(90));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("counting no attempt"), "the next start knew the stop for a stop:\n{out}");
    let done = count(&server.url, "SELECT count(*) FROM videos WHERE status = 'done' AND attempts = 1");
    assert_eq!(done, 4, "the stopped attempts did not count\n{out}");
    assert_eq!(count(&server.url, "SELECT count(*) FROM attempts WHERE outcome = 'crashed'"), 0, "{out}");
}
