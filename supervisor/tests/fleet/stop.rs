//! Stopping a fleet: `supervisor stop`, a first and a second signal, and a worker that
//! will not stop within the grace period.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::storage::SlotStatus;
use testkit::{TestDb, holds_for, supervisor, text, wait_for};

use crate::helper::{LONG, run_to_end, spawn, start, worker_whose_worker_1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_stop_drains_the_fleet_and_status_reports_it() {
    let t = TestDb::new().await;
    t.seed(50).await;
    let mut sup = spawn(start(&t, 2, &["--mem-limit", "250M", "--sleep", "50ms", "--stagger", "200ms"]));
    wait_for(LONG, "both workers running", || async {
        let ws = t.slots().await;
        ws.len() == 2 && ws.iter().all(|w| w.state == SlotStatus::Running)
    })
    .await;
    let started: Vec<i64> = t.slots().await.iter().map(|w| w.started_at.unwrap()).collect();
    assert!(started[1] - started[0] >= 200, "--stagger spaces the starts: {started:?}");

    let out = supervisor(t.dir.path()).args(["status", "--db"]).arg(&t.path).output().unwrap();
    let shown = text(&out);
    assert!(shown.contains("fleet: running"), "{shown}");
    assert!(shown.contains("worker  pid  "), "{shown}");
    let json = supervisor(t.dir.path()).args(["status", "--json", "--db"]).arg(&t.path).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["supervisor_alive"], true);
    assert_eq!(v["workers"].as_array().unwrap().len(), 2);
    let totals = &v["totals"];
    let sum: u64 = ["pending", "running", "done", "failed"].iter().map(|k| totals[k].as_u64().unwrap()).sum();
    assert_eq!(sum, 50);

    let out = supervisor(t.dir.path()).args(["stop", "--db"]).arg(&t.path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fleet stopped"));
    assert!(sup.wait().unwrap().success());
    assert_eq!(t.by_status().await.get("running"), None, "no video left claimed");
    assert_eq!(t.db.latest_run().await.unwrap().unwrap().state.as_str(), "stopped");
    let logs = supervisor(t.dir.path()).args(["logs", "--worker", "1", "--db"]).arg(&t.path).output().unwrap();
    assert!(text(&logs).contains("[worker-1]"), "{}", text(&logs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_the_fleet_at_once_and_hands_back_what_it_held() {
    let t = TestDb::new().await;
    t.seed(8).await;
    let mut sup =
        spawn(start(&t, 2, &["--mem-limit", "250M", "--exec", "sleep 60", "--concurrency", "2", "--grace", "60s"]));
    wait_for(LONG, "four jobs running", || async { t.by_status().await.get("running") == Some(&4) }).await;
    let pid = Pid::from_raw(sup.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    holds_for(Duration::from_millis(300), "the first signal waits for the jobs (grace 60s)", || {
        std::future::ready(sup.try_wait().unwrap().is_none())
    })
    .await;
    let second = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    assert!(sup.wait().unwrap().success());
    assert!(second.elapsed() < Duration::from_secs(5), "stopped at once: {:?}", second.elapsed());
    assert_eq!(t.by_status().await.get("running"), None, "nothing is left claimed");
    let most = t.videos().await.iter().map(|v| v.attempts).max();
    assert_eq!(most, Some(0), "the stopped jobs' attempts do not count");
    assert_eq!(t.attempts_ending("released").await, 4);
}

/// A worker binary whose worker 1 never answers /health and ignores SIGTERM.
fn stubborn_worker(dir: &Path) -> PathBuf {
    worker_whose_worker_1(dir, "stubborn-worker.sh", "trap '' TERM; while :; do sleep 1; done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_the_fleet_stops_is_counted_and_listed_with_its_reason() {
    let t = TestDb::new().await;
    // Only shard 0 has work, so the run ends while worker 1 is still starting.
    t.seed_sources((0..10).map(|i| (i * 2, format!("v{i}"))).collect()).await;
    let mut cmd = start(&t, 2, &["--mem-limit", "250M", "--sleep", "1ms", "--grace", "300ms", "--exit-when-done"]);
    cmd.env("FLEET_WORKER_BIN", stubborn_worker(t.dir.path()));
    let out = run_to_end(cmd);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("restarts and kills (1)"), "{all}");
    assert!(all.contains("worker 1: did not stop within the grace period (while stopping)"), "{all}");
    let status = supervisor(t.dir.path()).args(["status", "--json", "--db"]).arg(&t.path).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let kills: Vec<&serde_json::Value> =
        v["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "kill").collect();
    assert_eq!(kills.len(), 1, "{v}");
    assert_eq!(kills[0]["worker_id"], 1);
}
