//! What the modules share: `supervisor start` on a test's database and free ports, a
//! run to its end or in the background, the worker slots it records, and stand-in
//! worker binaries. Processes, databases and waits come from `testkit`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{Running, TestDb, bin, free_ports, supervisor};

pub const LONG: Duration = Duration::from_secs(90);

/// `supervisor start` on the test's database and free ports, with `args` added.
pub fn start(t: &TestDb, workers: u16, args: &[&str]) -> Command {
    let base = free_ports(workers);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", &workers.to_string(), "--base-port", &base.to_string(), "--db"])
        .arg(&t.path)
        .args(args);
    cmd
}

pub fn run_to_end(mut cmd: Command) -> Output {
    cmd.output().expect("supervisor runs")
}

pub fn spawn(mut cmd: Command) -> Running {
    Running(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("supervisor starts"))
}

/// Writes an executable script `name` into `dir`.
pub fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A worker binary that behaves as `worker_1` says when it is worker 1, and is the
/// real worker otherwise.
pub fn worker_whose_worker_1(dir: &Path, name: &str, worker_1: &str) -> PathBuf {
    let text = format!(
        "#!/bin/sh\ncase \" $* \" in *\" --worker-id 1 \"*) {worker_1};; esac\nexec {} \"$@\"\n",
        bin("worker").display()
    );
    script(dir, name, &text)
}

/// The direct children of `pid`, from every one of its threads.
pub fn children_of(pid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<i64>().ok()));
        }
    }
    out
}

/// The handlers of worker `pid` (its children), once there are `n`; panics with those
/// found if there are not `n` within 5 s.
pub fn handlers_of(pid: i64, n: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut handlers = children_of(pid);
    while handlers.len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        handlers = children_of(pid);
    }
    assert_eq!(handlers.len(), n, "{n} handler processes of worker {pid}: {handlers:?}");
    handlers
}

/// Videos of the PostgreSQL database `url` with more than one `done` attempt, as psql
/// prints the count: the completion must be once.
pub fn pg_done_twice(url: &str) -> String {
    let sql =
        "SELECT count(*) FROM (SELECT video_id FROM attempts WHERE outcome = 'done' GROUP BY 1 HAVING count(*) > 1) t";
    testkit::psql(url, sql)
}

/// Imports videos 1..=`n` (sources `v1`, `v2`, ...) into the database at `db` (a path or
/// a URL), creating its schema if need be.
pub async fn seed(db: &str, n: i64) {
    let db = shared::storage::Store::open(db.parse::<shared::storage::DbLocation>().unwrap(), 1).await.unwrap();
    let mut import = db.begin_import().await.unwrap();
    let rows = (1..=n)
        .map(|id| shared::storage::ImportRow {
            line: id as u64,
            video: shared::storage::NewVideo { video_id: id, source: format!("v{id}"), payload: None },
        })
        .collect();
    assert!(import.add(rows).await.unwrap().is_empty());
    import.commit().await.unwrap();
    db.close().await;
}
