//! Processes killed with SIGKILL: neither workers nor their handlers outlive what
//! started them, and the next start finishes without redoing work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::storage::{SlotStatus, testing};
use testkit::{TestDb, all_dead, free_ports, supervisor, text, wait_for};

use crate::helper::{LONG, handlers_of, run_to_end, script, spawn, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_with_sigkill_leaves_no_worker_and_a_new_start_finishes_without_redoing_work() {
    let t = TestDb::new().await;
    t.seed(200).await;
    let mut sup = spawn(start(&t, 2, &["--mem-limit", "250M", "--sleep", "20ms", "--concurrency", "2"]));
    wait_for(LONG, "some videos done", || async { t.by_status().await.get("done").copied().unwrap_or(0) >= 20 }).await;
    let pids: Vec<i64> = t.slots().await.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    sup.kill().unwrap();
    sup.wait().unwrap();
    assert!(all_dead(&pids, Duration::from_secs(2)), "workers outlived their supervisor by 2 s: {pids:?}");
    let done_before = t.by_status().await.get("done").copied().unwrap_or(0);

    let out =
        run_to_end(start(&t, 2, &["--mem-limit", "250M", "--sleep", "1ms", "--concurrency", "8", "--exit-when-done"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.by_status().await.get("done"), Some(&200));
    assert_eq!(t.done_twice().await, 0, "completed videos were not redone");
    assert!(text(&out).contains(&format!("this run: {} videos finished", 200 - done_before)), "{}", text(&out));
    let first_run = &testing::fleet_runs(&t.db).await.unwrap()[0];
    assert_eq!(first_run.state.as_str(), "crashed");
}

/// Kills worker 0 mid-job in `mode` and checks that its handler does not outlive it.
async fn killed_worker_leaves_no_handler(mode: &str) {
    let t = TestDb::new().await;
    t.seed(10).await;
    let _sup = spawn(start(
        &t,
        1,
        &["--mem-limit", "250M", "--mem-enforce", mode, "--exec", "sleep 300", "--concurrency", "2"],
    ));
    wait_for(LONG, "two handlers running", || async { t.by_status().await.get("running") == Some(&2) }).await;
    let pid = t.slots().await[0].pid.unwrap();
    // The handlers are the worker's children. In sampling mode the supervisor kills the
    // groups it last sampled, so let two of its refreshes of the worker records pass
    // after both handlers exist: a whole sampling round has seen them, however slow a
    // loaded machine makes the rounds.
    let handlers = handlers_of(pid, 2);
    let refreshed = || async { t.slots().await.iter().filter_map(|w| w.updated_at).max() };
    for _ in 0..2 {
        let seen = refreshed().await;
        wait_for(LONG, "the supervisor's next refresh", || async { refreshed().await > seen }).await;
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(all_dead(&handlers, Duration::from_secs(3)), "handlers outlived their worker: {handlers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_handlers_do_not_outlive_it_in_sampling_mode() {
    killed_worker_leaves_no_handler("sample").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_handlers_do_not_outlive_it_in_cgroup_mode() {
    if !nix::unistd::geteuid().is_root() || shared::cgroup::own_memory_cgroup().is_none() {
        testkit::skip("cgroup", "no memory cgroup to put workers in here");
        return;
    }
    killed_worker_leaves_no_handler("cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_with_sigkill_leaves_neither_workers_nor_their_handlers() {
    let t = TestDb::new().await;
    t.seed(10).await;
    // Sampling mode: no cgroup for the next start to clean up, so only the worker itself
    // can end its handlers.
    let mut sup = spawn(start(
        &t,
        1,
        &["--mem-limit", "250M", "--mem-enforce", "sample", "--exec", "sleep 300", "--concurrency", "2"],
    ));
    wait_for(LONG, "two handlers running", || async { t.by_status().await.get("running") == Some(&2) }).await;
    let worker = t.slots().await[0].pid.unwrap();
    let handlers = handlers_of(worker, 2);
    sup.kill().unwrap();
    sup.wait().unwrap();
    let everyone: Vec<i64> = handlers.iter().copied().chain([worker]).collect();
    assert!(all_dead(&everyone, Duration::from_secs(2)), "outlived the supervisor by 2 s: {everyone:?}");
}

/// A stand-in worker that answers /health, and on its parent's death (SIGUSR2) or
/// SIGTERM keeps its port for 3.5 s before it exits: a slow exit on a busy host. Long
/// enough that the next `start`, itself slow on a loaded test machine, still finds it
/// there; shorter than the 5 s the supervisor waits.
fn slow_exiting_worker(dir: &Path) -> PathBuf {
    script(
        dir,
        "worker",
        r#"#!/usr/bin/env python3
import os, sys, signal, time, threading, http.server
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
gone = threading.Event()
signal.signal(signal.SIGUSR2, lambda *a: gone.set())
signal.signal(signal.SIGTERM, lambda *a: gone.set())
while not gone.wait(0.05):
    pass
time.sleep(3.5)
os._exit(0)
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_right_after_a_sigkilled_supervisor_waits_for_the_old_workers_to_free_their_ports() {
    let t = TestDb::new().await;
    t.seed(20).await;
    let base = free_ports(2).to_string();
    let args = ["start", "--workers", "2", "--mem-limit", "250M", "--base-port", &base, "--sleep", "1ms"];
    let mut first = supervisor(t.dir.path());
    first.args(args).arg("--db").arg(&t.path).env("FLEET_WORKER_BIN", slow_exiting_worker(t.dir.path()));
    let mut sup = spawn(first);
    wait_for(LONG, "both stand-in workers ready", || async {
        t.slots().await.iter().filter(|w| w.state == SlotStatus::Running && w.pid.is_some()).count() == 2
    })
    .await;
    sup.kill().unwrap();
    sup.wait().unwrap();

    let mut second = supervisor(t.dir.path());
    second.args(args).args(["--exit-when-done", "--db"]).arg(&t.path);
    let out = run_to_end(second);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // At least one stand-in still held its port when the new start looked.
    assert!(text(&out).contains("workers of the previous run to exit"), "{}", text(&out));
    assert_eq!(t.by_status().await.get("done"), Some(&20));
}
