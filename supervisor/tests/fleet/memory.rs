//! The memory limit, enforced by cgroup or by sampling: a handler past it fails its
//! attempt and the fleet carries on.

use std::process::Output;

use shared::status::VideoStatus;
use testkit::{TestDb, VideoRow, text};

use crate::helper::{run_to_end, start};

/// A handler for video 3 that grows to ~300 MiB, in a child of the shell (as a wrapper
/// script would run it); the others finish at once.
const GREEDY: &str = "sh -c 'if [ {video_id} = 3 ]; then python3 -c \"b = bytes(300 << 20) + b\\\"x\\\"; import time; time.sleep(30)\"; exit $?; fi; echo ok'";

async fn memory_limit_run(t: &TestDb, mode: &str) -> Option<Output> {
    t.seed(20).await;
    let out = run_to_end(start(
        t,
        2,
        &["--mem-limit", "100M", "--mem-enforce", mode, "--exec", GREEDY, "--max-attempts", "1", "--exit-when-done"],
    ));
    let all = text(&out);
    if mode == "cgroup" && all.contains("no usable memory cgroup") {
        testkit::skip("cgroup", all.lines().last().unwrap_or(""));
        return None;
    }
    Some(out)
}

async fn assert_memory_kill(t: &TestDb, out: &Output) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(3), "one video failed: {all}");
    let VideoRow { status, last_error: error, .. } = t.video(3).await;
    assert_eq!(status, VideoStatus::Failed);
    assert!(error.as_deref().unwrap_or("").contains("memory limit"), "{error:?}");
    assert_eq!(t.history(3).await, [(1, "memory".to_string())]);
    assert_eq!(t.by_status().await.get("done"), Some(&19), "every other video is done");
    let ws = t.slots().await;
    assert!(ws.iter().all(|w| w.restarts == 0), "no worker restarted: {ws:?}");
    assert!(all.contains("memory-limit kills: 1 (1 handlers, 0 workers)"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_memory_limit_fails_its_attempt_in_cgroup_mode_and_the_fleet_carries_on() {
    if !nix::unistd::geteuid().is_root() {
        testkit::skip("root", "creating cgroups needs root here");
        return;
    }
    let t = TestDb::new().await;
    let Some(out) = memory_limit_run(&t, "cgroup").await else { return };
    assert!(text(&out).contains("enforced by cgroup"), "{}", text(&out));
    assert_memory_kill(&t, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_memory_limit_fails_its_attempt_in_sampling_mode_and_the_fleet_carries_on() {
    let t = TestDb::new().await;
    let out = memory_limit_run(&t, "sample").await.unwrap();
    assert!(text(&out).contains("sampling each worker's process tree"), "{}", text(&out));
    assert_memory_kill(&t, &out).await;
}
