//! Fleets driven by several supervisors, each running some of the worker ids
//! (`--worker-ids`): on one host over SQLite, and over PostgreSQL as several hosts
//! would, each "host" a supervisor with its own `FLEET_HOST` name on this machine (so
//! its pids mean nothing to the others, exactly as on another machine). The PostgreSQL
//! tests use the server in FLEET_TEST_POSTGRES_URL and say why they skip without one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::{Running, TestDb, bin, free_ports, holds_for, psql, text, wait_exit, wait_for};

use crate::helper::{LONG, pg_done_twice, spawn};

/// `supervisor` as host `host` runs it.
fn supervisor(dir: &Path, host: &str) -> Command {
    let mut cmd = testkit::supervisor(dir);
    cmd.env("FLEET_HOST", host);
    cmd
}

/// `supervisor start` of a 4-shard fleet on `db` running `ids` (all if empty).
fn start(dir: &Path, host: &str, db: &str, base: u16, ids: &str, args: &[&str]) -> Command {
    let mut cmd = supervisor(dir, host);
    cmd.args(["start", "--workers", "4", "--mem-limit", "250M", "--base-port", &base.to_string(), "--db", db]);
    if !ids.is_empty() {
        cmd.args(["--worker-ids", ids]);
    }
    cmd.args(args);
    cmd
}

/// The rest of what `child`, which has exited, wrote to stderr.
fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

fn status_json(dir: &Path, db: &str) -> serde_json::Value {
    let out = supervisor(dir, "anywhere").args(["status", "--json", "--db", db]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Workers the status shows running, by id, with their hosts.
fn running(dir: &Path, db: &str) -> Vec<(i64, String)> {
    let v = status_json(dir, db);
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "running")
        .map(|w| (w["worker_id"].as_i64().unwrap(), w["host"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn done(dir: &Path, db: &str) -> u64 {
    status_json(dir, db)["totals"]["done"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_with_disjoint_worker_ids_run_one_fleet_and_one_that_overlaps_is_refused() {
    let t = TestDb::new().await;
    t.seed(400).await;
    let (dir, db) = (t.dir.path(), t.path.to_str().unwrap().to_string());
    let base = free_ports(4);
    let mut low = spawn(start(dir, "h", &db, base, "0-1", &["--sleep", "10ms"]));
    let mut high = spawn(start(dir, "h", &db, base, "2-3", &["--sleep", "10ms"]));
    wait_for(LONG, "all four workers running", || async { running(dir, &db).len() == 4 }).await;

    // Ids 1 and 2 are taken, one by each: refused, naming them; nothing is started.
    let out = start(dir, "h", &db, free_ports(4), "1-2", &["--sleep", "10ms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("worker id 1 is already running") || said.contains("worker id 2 is already running"),
        "{said}"
    );
    assert_eq!(status_json(dir, &db)["runs"].as_array().unwrap().len(), 2, "the refused start left no record");

    let shown = supervisor(dir, "h").args(["status", "--db", &db]).output().unwrap();
    let shown = text(&shown);
    assert!(shown.contains("worker ids 0-1 of 4") && shown.contains("worker ids 2-3 of 4"), "{shown}");

    // Stopping one part leaves the other running.
    let out = supervisor(dir, "h").args(["stop", "--db", &db, "--worker-ids", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("worker ids 2-3"), "{}", text(&out));
    assert!(wait_exit(&mut high, LONG).success());
    assert_eq!(running(dir, &db).iter().map(|w| w.0).collect::<Vec<_>>(), [0, 1]);
    assert!(low.try_wait().unwrap().is_none(), "the other supervisor still runs");

    // Ids 2-3 again, beside the running 0-1, and the whole fleet finishes.
    let out = start(dir, "h", &db, base, "2-3", &["--sleep", "1ms", "--exit-when-done"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(LONG, "every video done", || async { done(dir, &db) == 400 }).await;
    let out = supervisor(dir, "h").args(["stop", "--db", &db]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_exit(&mut low, LONG).success());

    assert_eq!(t.done_twice().await, 0, "no video was completed twice");
    assert_eq!(t.outside_their_shard(4).await, 0, "every video was done by its own shard's worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_id_outside_the_fleet_is_refused_before_anything_is_written() {
    let t = TestDb::new().await;
    t.seed(4).await;
    let (dir, db) = (t.dir.path(), t.path.to_str().unwrap().to_string());
    for (ids, says) in [
        ("2-4", "names worker 4, but a fleet of 4 has ids 0-3"),
        ("3-1", "runs backwards"),
        ("x", "is not a worker id"),
    ] {
        let out = start(dir, "h", &db, free_ports(4), ids, &["--sleep", "1ms"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{ids}: {}", text(&out));
        assert!(text(&out).contains(says), "{ids}: {}", text(&out));
    }
    assert!(status_json(dir, &db)["run"].is_null(), "no run was recorded");
}

fn import(dir: &Path, url: &str, n: u32) {
    let csv = dir.join("videos.csv");
    std::fs::write(&csv, (1..=n).fold("video_id,source\n".to_string(), |acc, i| acc + &format!("{i},src-{i}\n")))
        .unwrap();
    let out = supervisor(dir, "a").args(["import", csv.to_str().unwrap(), "--db", url]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_a_postgres_fleet_and_one_stop_from_a_third_stops_both_through_the_database() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    import(dir, &url, 400);
    let (base_a, base_b) = (free_ports(4), free_ports(4));
    let mut a = spawn(start(dir, "host-a", &url, base_a, "0-1", &["--sleep", "10ms"]));
    let mut b = spawn(start(dir, "host-b", &url, base_b, "2-3", &["--sleep", "10ms"]));
    wait_for(LONG, "all four workers running", || async { running(dir, &url).len() == 4 }).await;
    let hosts: Vec<(i64, String)> = running(dir, &url);
    assert_eq!(
        hosts,
        [(0, "host-a".into()), (1, "host-a".into()), (2, "host-b".into()), (3, "host-b".into())],
        "status shows every host's workers"
    );
    let v = status_json(dir, &url);
    let addresses: Vec<&str> =
        v["workers"].as_array().unwrap().iter().map(|w| w["address"].as_str().unwrap()).collect();
    assert_eq!(addresses[0], format!("127.0.0.1:{base_a}"));
    assert_eq!(addresses[3], format!("127.0.0.1:{}", base_b + 3));

    // A third host asking for an id host-b runs is refused (host-b's heartbeat moves).
    let out = start(dir, "host-c", &url, free_ports(4), "3", &["--sleep", "1ms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("on host host-b"), "{}", text(&out));

    // The monitor finds every worker from the database, on each run's address.
    let out = Command::new(bin("monitor")).args(["--db", &url, "--once", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let up = report["workers"].as_array().unwrap().iter().filter(|w| w["health"] == "up").count();
    assert_eq!(up, 4, "{report}");

    // `stop` on a host that runs neither: no signal can reach them, the database does.
    let out = supervisor(dir, "host-c").args(["stop", "--db", &url]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_exit(&mut a, LONG).success());
    assert!(wait_exit(&mut b, LONG).success());
    assert_eq!(psql(&url, "SELECT string_agg(state, ',' ORDER BY run_id) FROM fleet_runs"), "stopped,stopped");
    assert_eq!(pg_done_twice(&url), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_supervisor_was_killed_is_taken_over_once_its_heartbeat_stops() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    import(dir, &url, 300);
    let mut b = spawn(start(dir, "host-b", &url, free_ports(4), "", &["--sleep", "20ms"]));
    wait_for(LONG, "host-b's workers running and 20 videos done", || async {
        running(dir, &url).len() == 4 && done(dir, &url) >= 20
    })
    .await;
    kill(Pid::from_raw(b.id() as i32), Signal::SIGKILL).unwrap();
    b.wait().unwrap();

    // Host a does not know whether host-b is dead: it watches the heartbeat stand still,
    // then takes the ids over, hands back what host-b's workers held, and finishes.
    let began = Instant::now();
    let out = start(dir, "host-a", &url, free_ports(4), "", &["--sleep", "1ms", "--exit-when-done"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("took over its worker ids 0-3"), "{}", text(&out));
    // It waited for the heartbeat to go stale (10 s after the kill), and no longer than
    // its patience: no one had to come and clear the old run.
    assert!(began.elapsed() >= Duration::from_secs(5), "it waited for the heartbeat to go stale");
    assert!(began.elapsed() < Duration::from_secs(45), "took {:?}", began.elapsed());
    assert_eq!(
        psql(&url, "SELECT string_agg(host || ':' || state, ',' ORDER BY run_id) FROM fleet_runs"),
        "host-b:crashed,host-a:done"
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM videos WHERE status = 'done'"), "300");
    assert_eq!(pg_done_twice(&url), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_starts_at_the_same_moment_for_the_same_ids_exactly_one_runs() {
    let t = TestDb::new().await;
    t.seed(100).await;
    let (dir, db) = (t.dir.path(), t.path.to_str().unwrap().to_string());
    let spawn = || {
        Running(start(dir, "h", &db, free_ports(4), "", &["--sleep", "50ms"]).stderr(Stdio::piped()).spawn().unwrap())
    };
    let (mut a, mut b) = (spawn(), spawn());
    // The loser exits at once; the winner runs until stopped.
    let deadline = Instant::now() + LONG;
    let (loser, mut winner) = loop {
        if let Some(status) = a.try_wait().unwrap() {
            break ((status, a), b);
        }
        if let Some(status) = b.try_wait().unwrap() {
            break ((status, b), a);
        }
        assert!(Instant::now() < deadline, "neither start was refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Nobody reads the winner's stderr: closed, so a full pipe can never hold it up.
    drop(winner.stderr.take());
    let (status, mut child) = loser;
    let said = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("a fleet is already running"), "{said}");
    wait_for(LONG, "the winner's four workers running", || async { running(dir, &db).len() == 4 }).await;
    assert_eq!(status_json(dir, &db)["runs"].as_array().unwrap().len(), 1, "one run recorded");
    let out = supervisor(dir, "h").args(["stop", "--db", &db]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_exit(&mut winner, LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_stopped_through_the_database_keeps_beating_while_it_drains() {
    let t = TestDb::new().await;
    t.seed(8).await;
    let (dir, db) = (t.dir.path(), t.path.to_str().unwrap().to_string());
    // Jobs of 13 s: the drain outlasts the 10 s after which a silent run counts as dead.
    let mut sup = spawn(start(dir, "h1", &db, free_ports(4), "0-1", &["--sleep", "13s", "--grace", "60s"]));
    wait_for(LONG, "both workers busy", || async {
        let v = status_json(dir, &db);
        v["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "running").count() == 2
            && v["totals"]["running"].as_u64().unwrap() >= 2
    })
    .await;
    // From another host name: no signal can reach it, only the database's request.
    let began = Instant::now();
    let stop = supervisor(dir, "h2").args(["stop", "--db", &db]).stdout(Stdio::piped()).spawn().unwrap();
    let stopping = || {
        let v = status_json(dir, &db);
        v["runs"][0]["state"] == "stopping" && v["runs"][0]["alive"] == true
    };
    wait_for(LONG, "the run stopping", || async { stopping() }).await;
    // Looked at all along, not once at the end: alive and stopping until 11 s into its
    // drain, past the 10 s after which a silent run counts as dead.
    let rest = (began + Duration::from_secs(11)).saturating_duration_since(Instant::now());
    holds_for(rest, "a run still beating and stopping, 11 s into its drain", || async { stopping() }).await;
    let said = String::from_utf8_lossy(&stop.wait_with_output().unwrap().stdout).to_string();
    assert!(said.contains("fleet stopped: worker ids 0-1"), "{said}");
    assert!(began.elapsed() >= Duration::from_secs(11), "stop waited for the drain");
    assert!(wait_exit(&mut sup, LONG).success());
    // Shards 0 and 1 of 4 hold videos 1, 4, 5 and 8, all under way when the stop came.
    assert_eq!(t.by_status().await.get("done"), Some(&4), "the jobs under way finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_whose_run_was_taken_over_stops_its_workers_at_once_and_fails() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let (dir, db) = (t.dir.path(), t.path.to_str().unwrap().to_string());
    let mut sup = Running(
        start(dir, "h", &db, free_ports(4), "", &["--sleep", "30s", "--grace", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(LONG, "its workers busy", || async { status_json(dir, &db)["totals"]["running"].as_u64().unwrap() >= 4 })
        .await;
    // What another host's start does when it finds this run's heartbeat stale.
    shared::storage::testing::execute(&t.db, "UPDATE fleet_runs SET state = 'crashed', stopped_at = 1").await.unwrap();
    let began = Instant::now();
    let status = wait_exit(&mut sup, Duration::from_secs(20));
    // No 60 s drain: its shards are someone else's now.
    assert!(began.elapsed() < Duration::from_secs(15), "took {:?}", began.elapsed());
    let said = stderr_of(&mut sup);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("was taken over by another supervisor"), "{said}");
    let v = status_json(dir, &db);
    assert_eq!(v["run"]["state"], "crashed", "its record stays as the taker left it: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_finish_a_postgres_fleet_together_when_one_is_sigkilled_and_restarted_mid_run() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    import(dir, &url, 600);
    let batch = ["--sleep", "20ms", "--concurrency", "4", "--exit-when-done"];
    let mut a = spawn(start(dir, "host-a", &url, free_ports(4), "0-1", &batch));
    let mut b = spawn(start(dir, "host-b", &url, free_ports(4), "2-3", &batch));
    wait_for(LONG, "all four workers running and 100 videos done", || async {
        running(dir, &url).len() == 4 && done(dir, &url) >= 100
    })
    .await;
    let b_workers: Vec<i64> = psql(
        &url,
        "SELECT pid FROM fleet_workers w JOIN fleet_runs r USING (run_id) WHERE r.host = 'host-b' AND w.pid IS NOT NULL",
    )
    .lines()
    .filter_map(|l| l.parse().ok())
    .collect();
    kill(Pid::from_raw(b.id() as i32), Signal::SIGKILL).unwrap();
    b.wait().unwrap();
    wait_for(LONG, "host-b's workers gone with their supervisor", || async {
        b_workers.iter().all(|&p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    })
    .await;

    // Host b comes back (its service manager restarts it): its old run's pid is gone on
    // its own host, so it takes over at once and hands back what its workers held.
    let out = start(dir, "host-b", &url, free_ports(4), "2-3", &batch).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("every video of shards 2-3 is done"), "{}", text(&out));
    assert!(wait_exit(&mut a, LONG).success());

    assert_eq!(psql(&url, "SELECT count(*) FROM videos WHERE status = 'done'"), "600");
    assert_eq!(pg_done_twice(&url), "0", "no video was completed twice");
    assert_eq!(
        psql(&url, "SELECT string_agg(host || ':' || state, ',' ORDER BY host, run_id) FROM fleet_runs"),
        "host-a:done,host-b:crashed,host-b:done"
    );
}
