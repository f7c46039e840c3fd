//! Workers that die, crash at every start, or stop answering: restarted with their
//! reason, marked errored after a crash loop, their claims handed back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::status::VideoStatus;
use shared::storage::{SlotStatus, owner_of};
use testkit::{TestDb, VideoRow, text, wait_for};

use crate::helper::{LONG, run_to_end, spawn, start, worker_whose_worker_1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_restarted_with_its_reason_and_its_claims_handed_back_at_once() {
    let t = TestDb::new().await;
    t.seed(60).await;
    // A long lease: whatever comes back before it lapses was handed back by the supervisor.
    let mut sup = spawn(start(
        &t,
        2,
        &["--mem-limit", "250M", "--sleep", "300ms", "--concurrency", "4", "--lease", "120s", "--exit-when-done"],
    ));
    wait_for(LONG, "worker 0 running jobs", || async { t.shard(0, 2).await.running == 4 }).await;
    let pid = t.slots().await[0].pid.unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let held_by_the_dead = |v: &VideoRow| {
        v.status == VideoStatus::Running && v.lease_owner.as_deref().and_then(owner_of) == Some((0, pid as u32))
    };
    wait_for(Duration::from_secs(5), "the dead worker's claims handed back", || async {
        !t.videos().await.iter().any(held_by_the_dead)
    })
    .await;
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(t.by_status().await.get("done"), Some(&60));
    assert_eq!(t.done_twice().await, 0, "no video is completed twice");
    let w0 = &t.slots().await[0];
    assert_eq!(w0.restarts, 1, "one restart");
    assert_eq!(w0.last_reason.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    assert_eq!(t.attempts_ending("crashed").await, 4);
}

/// A worker binary that crashes whenever it is worker 1.
fn crashing_worker(dir: &Path) -> PathBuf {
    worker_whose_worker_1(dir, "flaky-worker.sh", "echo 'worker 1 cannot start' >&2; exit 7")
}

/// A batch fleet of 2 whose worker 1 crashes at every start and is marked errored after
/// three restarts, with `args` added.
fn crash_looping_fleet(t: &TestDb, args: &[&str]) -> Command {
    let mut all = vec!["--mem-limit", "250M", "--sleep", "5ms", "--restart-delay", "10ms", "--crash-loop", "3/60s"];
    all.push("--exit-when-done");
    all.extend_from_slice(args);
    let mut cmd = start(t, 2, &all);
    cmd.env("FLEET_WORKER_BIN", crashing_worker(t.dir.path()));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_always_crashes_becomes_errored_while_the_other_finishes_its_shard() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let out = run_to_end(crash_looping_fleet(&t, &["--steal", "off"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert_eq!(t.shard(0, 2).await.done, 20, "worker 0 finished its shard");
    let w1 = &t.slots().await[1];
    assert_eq!(w1.restarts, 3, "three restarts before it was marked errored");
    assert_eq!(w1.last_reason.as_deref(), Some("exit code 7"));
    assert!(all.contains("marked errored"), "{all}");
    assert!(all.contains("work is left that only errored workers could do (exit 4)"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_of_a_worker_errored_by_a_crash_loop_is_finished_by_the_others() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let out = run_to_end(crash_looping_fleet(&t, &["--lease", "1s"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(t.counts().await.done, 40, "both shards done");
    assert_eq!(t.slots().await[1].restarts, 3, "worker 1 never ran");
    assert_eq!(t.done_twice().await, 0);
    assert!(t.attempts().await.iter().all(|a| a.worker.as_deref().is_some_and(|w| w.starts_with("worker-0/"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_health_is_restarted_with_that_reason() {
    let t = TestDb::new().await;
    t.seed(10).await;
    let mut sup = spawn(start(
        &t,
        1,
        &["--mem-limit", "250M", "--sleep", "10s", "--health-interval", "100ms", "--unhealthy-after", "1s"],
    ));
    wait_for(LONG, "the worker running", || async {
        t.slots().await.first().is_some_and(|w| w.state == SlotStatus::Running)
    })
    .await;
    let pid = t.slots().await[0].pid.unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    wait_for(LONG, "a restart", || async { t.slots().await.first().is_some_and(|w| w.restarts == 1) }).await;
    let reason = t.slots().await[0].last_reason.clone().unwrap();
    assert!(reason.starts_with("failed health check: /health did not answer"), "{reason}");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(sup.wait().unwrap().success());
    assert_eq!(t.by_status().await.get("running"), None, "nothing is left claimed");
}
