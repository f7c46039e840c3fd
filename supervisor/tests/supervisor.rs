//! The real `supervisor` binary starting real workers on real SQLite files; cgroups for
//! real where the machine allows it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::status::VideoStatus;
use shared::storage::{FleetRun, FleetWorker, RunState, SlotStatus, owner_of, testing};
use testkit::{Running, TestDb, VideoRow, bin, free_ports, wait_for};

const LONG: Duration = Duration::from_secs(90);

fn supervisor(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("supervisor"));
    cmd.current_dir(dir)
        .env("FLEET_WORKER_BIN", bin("worker"))
        .env("RUST_LOG", shared::storage::DEFAULT_LOG_FILTER)
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("FLEET_WORKERS")
        .env_remove("FLEET_CONTROL_TOKEN")
        .env_remove("FLEET_CA_CERT");
    cmd
}

/// `supervisor start` on the test's database and free ports, with `args` added.
fn start(t: &TestDb, workers: u16, args: &[&str]) -> Command {
    let base = free_ports(workers);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", &workers.to_string(), "--base-port", &base.to_string(), "--db"])
        .arg(&t.path)
        .args(args);
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn run_to_end(mut cmd: Command) -> Output {
    cmd.output().expect("supervisor runs")
}

fn spawn(mut cmd: Command) -> Running {
    Running(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("supervisor starts"))
}

/// The worker slots of the latest run.
async fn workers(t: &TestDb) -> Vec<FleetWorker> {
    t.slots().await
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_finish_two_thousand_videos_each_in_its_shard_and_the_summary_matches() {
    let t = TestDb::new().await;
    t.seed(2000).await;
    let out = run_to_end(start(
        &t,
        2,
        &["--mem-limit", "250M", "--sleep", "0..2ms", "--concurrency", "16", "--exit-when-done"],
    ));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(t.by_status().await.get("done"), Some(&2000));
    assert_eq!(t.done_twice().await, 0);
    assert_eq!(t.outside_their_shard(2).await, 0);
    assert!(all.contains("videos: 2000 done, 0 failed, 2000 in all"), "{all}");
    assert!(all.contains("this run: 2000 videos finished in 2000 attempts"), "{all}");
    assert!(all.contains("worker 0: 1000 done, 0 failed, 1000 attempts this run"), "{all}");
    assert!(all.contains("worker 1: 1000 done, 0 failed, 1000 attempts this run"), "{all}");
    assert!(all.contains("result: every video is done (exit 0)"), "{all}");
    // The merged stream carries both workers' lines, prefixed.
    assert!(all.contains("[worker-0]") && all.contains("[worker-1]"), "{all}");
    let logs = std::fs::read_to_string(t.dir.path().join("fleet-logs/worker-1.log")).unwrap();
    assert!(logs.contains("worker started worker_id=1"), "{logs}");
}

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
    let pid = workers(&t).await[0].pid.unwrap();
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
    let w0 = &workers(&t).await[0];
    assert_eq!(w0.restarts, 1, "one restart");
    assert_eq!(w0.last_reason.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    assert_eq!(t.attempts_ending("crashed").await, 4);
}

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
    let ws = workers(t).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_with_sigkill_leaves_no_worker_and_a_new_start_finishes_without_redoing_work() {
    let t = TestDb::new().await;
    t.seed(200).await;
    let mut sup = spawn(start(&t, 2, &["--mem-limit", "250M", "--sleep", "20ms", "--concurrency", "2"]));
    wait_for(LONG, "some videos done", || async { t.by_status().await.get("done").copied().unwrap_or(0) >= 20 }).await;
    let pids: Vec<i64> = workers(&t).await.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    sup.kill().unwrap();
    sup.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pids.iter().all(|&p| !alive(p)), "workers outlived their supervisor by 2 s: {pids:?}");
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

/// Writes an executable script `name` into `dir`.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A worker binary that behaves as `worker_1` says when it is worker 1, and is the
/// real worker otherwise.
fn worker_whose_worker_1(dir: &Path, name: &str, worker_1: &str) -> PathBuf {
    let text = format!(
        "#!/bin/sh\ncase \" $* \" in *\" --worker-id 1 \"*) {worker_1};; esac\nexec {} \"$@\"\n",
        bin("worker").display()
    );
    script(dir, name, &text)
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
    let w1 = &workers(&t).await[1];
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
    assert_eq!(workers(&t).await[1].restarts, 3, "worker 1 never ran");
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
        workers(&t).await.first().is_some_and(|w| w.state == SlotStatus::Running)
    })
    .await;
    let pid = workers(&t).await[0].pid.unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    wait_for(LONG, "a restart", || async { workers(&t).await.first().is_some_and(|w| w.restarts == 1) }).await;
    let reason = workers(&t).await[0].last_reason.clone().unwrap();
    assert!(reason.starts_with("failed health check: /health did not answer"), "{reason}");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert!(sup.wait().unwrap().success());
    assert_eq!(t.by_status().await.get("running"), None, "nothing is left claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_stop_drains_the_fleet_and_status_reports_it() {
    let t = TestDb::new().await;
    t.seed(50).await;
    let mut sup = spawn(start(&t, 2, &["--mem-limit", "250M", "--sleep", "50ms", "--stagger", "200ms"]));
    wait_for(LONG, "both workers running", || async {
        let ws = workers(&t).await;
        ws.len() == 2 && ws.iter().all(|w| w.state == SlotStatus::Running)
    })
    .await;
    let started: Vec<i64> = workers(&t).await.iter().map(|w| w.started_at.unwrap()).collect();
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

#[tokio::test]
async fn bad_start_flags_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let long_token = "t".repeat(100_000);
    let cases: &[(&[&str], &str)] = &[
        (&["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--base-port", "0"], "--base-port"),
        (&["--workers", "1", "--mem-limit", "250M", "--exec", "/no/such/program {source}"], "does not exist"),
        (&["--workers", "1", "--mem-limit", "250M", "--exec", "no-such-program-here {source}"], "not found in PATH"),
        (&["--workers", "1", "--mem-limit", "250M", "--exec", "./plain.txt {source}"], "is not executable"),
        (
            &["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--control-token", "short"],
            "at least 8 characters",
        ),
        (
            &["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--control-token", &long_token],
            "at most 256 characters",
        ),
        (&["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--max-source-bytes", "64"], "is too small"),
        (&["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--bind", "192.0.2.1"], "cannot listen on"),
        (&["--workers", "2", "--mem-limit", "12Q", "--sleep", "0"], "invalid size \"12Q\""),
        (&["--workers", "0", "--mem-limit", "250M", "--sleep", "0"], "--workers"),
        (&["--workers", "1", "--mem-limit", "1K", "--sleep", "0"], "is too small for a worker"),
        (&["--workers", "1", "--mem-limit", "250M", "--exec", "echo 'oops"], "cannot be split into words"),
        (&["--workers", "1", "--mem-limit", "250M"], "--exec"),
        (
            &["--workers", "1", "--mem-limit", "250M", "--http", "https://127.0.0.1:9/", "--ca-cert", "missing.pem"],
            "--ca-cert missing.pem: the file does not exist",
        ),
        (
            &["--workers", "1", "--mem-limit", "250M", "--http", "https://127.0.0.1:9/", "--ca-cert", "plain.txt"],
            "--ca-cert plain.txt: the file holds no PEM certificate",
        ),
        (&["--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--ca-cert", "plain.txt"], "goes only with --http"),
    ];
    std::fs::write(dir.path().join("plain.txt"), "not a program").unwrap();
    for (args, expected) in cases {
        let out = supervisor(dir.path()).arg("start").args(*args).output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(expected), "{args:?}: expected {expected:?} in {all}");
        assert!(!all.contains("panicked"));
    }
    assert!(!dir.path().join("fleet.db").exists(), "no database was created");
}

#[tokio::test]
async fn an_import_with_a_bad_line_seven_imports_nothing() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let file = t.dir.path().join("videos.csv");
    let mut csv = String::from("video_id,source\n");
    for i in 10..15 {
        csv.push_str(&format!("{i},src-{i}\n"));
    }
    csv.push_str("oops,src\n"); // line 7
    std::fs::write(&file, csv).unwrap();
    let out = supervisor(t.dir.path()).args(["import"]).arg(&file).arg("--db").arg(&t.path).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("has 1 bad line; nothing was imported"), "{all}");
    assert!(all.contains("line 7: video_id \"oops\" is not an integer"), "{all}");
    assert_eq!(t.db.count_videos().await.unwrap(), 2, "the database is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos_that_succeeded_with_warnings_are_counted_in_the_summary_and_listed_by_export() {
    let t = TestDb::new().await;
    t.seed(6).await;
    // Like ffmpeg on a truncated file: exit 0 after a warning on stderr, here for every
    // third video.
    let handler = r#"sh -c 'echo ok; if test $(({video_id} % 3)) = 0; then echo "File ended prematurely" >&2; fi'"#;
    let out = run_to_end(start(&t, 2, &["--mem-limit", "250M", "--exec", handler, "--exit-when-done"]));
    assert_eq!(out.status.code(), Some(0), "warnings fail nothing: {}", text(&out));
    assert!(text(&out).contains("warnings: 2 videos succeeded with warnings"), "{}", text(&out));

    let export = |args: &[&str]| {
        let out = supervisor(t.dir.path()).arg("export").args(args).arg("--db").arg(&t.path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let lines: Vec<serde_json::Value> =
        export(&["--format", "jsonl", "--warnings"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let listed: Vec<(i64, &str)> =
        lines.iter().map(|v| (v["video_id"].as_i64().unwrap(), v["warnings"].as_str().unwrap())).collect();
    assert_eq!(listed, [(3, "File ended prematurely"), (6, "File ended prematurely")]);

    let csv = export(&[]);
    assert!(csv.lines().next().unwrap().ends_with(",duration_ms,warnings"), "{csv}");
    let row = |id: &str| csv.lines().find(|l| l.starts_with(&format!("{id},"))).unwrap().to_string();
    assert!(row("3").ends_with(",File ended prematurely"), "{csv}");
    assert!(row("4").ends_with(','), "a clean video has an empty warnings field: {csv}");
    let none = export(&["--status", "failed", "--warnings"]);
    assert_eq!(none.lines().count(), 1, "the filters combine: only the header is left: {none}");
}

#[tokio::test]
async fn export_reads_a_database_from_before_warnings_were_kept_without_migrating_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    testing::migrate_like_sqlite3(&path, Some("0004_warnings.sql")).await.unwrap();
    let done = "INSERT INTO videos (video_id, source, status, result) VALUES (1, 'a', 'done', 'ok')";
    testing::execute_foreign(&path, done).await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let export = |args: &[&str]| {
        let out = supervisor(dir.path()).arg("export").args(args).arg("--db").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(export(&["--format", "jsonl", "--warnings"]), "", "no warnings were kept in it");
    let all = export(&["--format", "jsonl"]);
    let row: serde_json::Value = serde_json::from_str(all.trim()).unwrap();
    assert_eq!((row["video_id"].as_i64(), row["warnings"].is_null()), (Some(1), true), "{all}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "export never migrates");
}

#[tokio::test]
async fn import_reports_existing_ids_export_writes_results_and_retry_requeues_failed_videos() {
    let t = TestDb::new().await;
    t.seed(3).await;
    t.mark_failed(2, 3, "boom").await;
    let file = t.dir.path().join("more.jsonl");
    std::fs::write(
        &file,
        "{\"video_id\":3,\"source\":\"again\"}\n{\"video_id\":4,\"source\":\"new\",\"payload\":{\"lang\":\"de\"}}\n",
    )
    .unwrap();
    let out = supervisor(t.dir.path()).arg("import").arg(&file).arg("--db").arg(&t.path).output().unwrap();
    assert!(text(&out).contains("imported 1 videos") && text(&out).contains("1 were already there"), "{}", text(&out));
    assert_eq!(t.video(3).await.status, VideoStatus::Pending);

    let csv = t.dir.path().join("out.csv");
    let out = supervisor(t.dir.path())
        .args(["export", "--status", "failed", "--out"])
        .arg(&csv)
        .arg("--db")
        .arg(&t.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let exported = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        exported.lines().next(),
        Some("video_id,source,payload,status,attempts,result,last_error,finished_at,duration_ms,warnings")
    );
    assert!(exported.lines().nth(1).unwrap().starts_with("2,src-2,"), "{exported}");
    assert_eq!(exported.lines().count(), 2);

    let out = supervisor(t.dir.path()).args(["retry", "1", "2", "--db"]).arg(&t.path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("1 is pending; nothing was requeued"), "{}", text(&out));
    assert_eq!(t.video(2).await.status, VideoStatus::Failed);
    let out = supervisor(t.dir.path()).args(["retry", "--failed", "--db"]).arg(&t.path).output().unwrap();
    assert!(text(&out).contains("requeued 1 failed videos"));
    let v = t.video(2).await;
    assert_eq!((v.status, v.attempts, v.result, v.last_error), (VideoStatus::Pending, 0, None, None));
}

#[tokio::test]
async fn commands_on_a_missing_database_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [&["status"][..], &["export"], &["retry", "--failed"], &["stop"]] {
        let out = supervisor(dir.path()).args(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        assert!(text(&out).contains("no such database"), "{}", text(&out));
    }
    assert!(!dir.path().join("fleet.db").exists());
}

#[tokio::test]
async fn the_config_file_sets_flags_below_the_environment_and_the_command_line() {
    let t = TestDb::new().await;
    t.seed(6).await;
    std::fs::write(
        t.dir.path().join("fleet.toml"),
        "workers = 1\nmem-limit = \"200M\"\nsleep = \"1ms\"\nexit_when_done = true\nconcurrency = 2\n",
    )
    .unwrap();
    // The environment overrides the file's 1 worker; the flag overrides the file's handler.
    let base = free_ports(3);
    let out = supervisor(t.dir.path())
        .env("FLEET_WORKERS", "3")
        .args(["start", "--base-port", &base.to_string(), "--exec", "echo hi", "--db"])
        .arg(&t.path)
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("workers: 3 · concurrency: 2 per worker · handler: exec: echo hi"), "{all}");
    assert!(all.contains("memory limit: 200M per worker"), "{all}");
    assert_eq!(t.video(5).await.result.as_deref(), Some("hi"));
}

#[tokio::test]
async fn with_json_logs_from_the_config_file_every_line_of_the_fleet_is_a_json_object() {
    let t = TestDb::new().await;
    t.seed(20).await;
    std::fs::write(t.dir.path().join("fleet.toml"), "log-format = \"json\"\n").unwrap();
    let out = run_to_end(start(
        &t,
        2,
        &["--mem-limit", "200M", "--exec", "sh -c 'test {video_id} != 7'", "--max-attempts", "1", "--exit-when-done"],
    ));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "video 7 failed: {all}");
    let lines: Vec<serde_json::Value> =
        all.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }
    for k in [0, 1] {
        assert!(lines.iter().any(|l| l["worker_id"] == k && l["message"] == "worker started"), "worker {k}: {all}");
    }
    assert!(lines.iter().any(|l| l["worker_id"] == 1 && l["video_id"] == 7 && l["level"] == "WARN"), "{all}");
    let summary = lines.last().unwrap()["message"].as_str().unwrap();
    assert!(summary.contains("videos: 19 done, 1 failed, 20 in all"), "the summary is the last object: {summary}");

    let bad = supervisor(t.dir.path())
        .env("FLEET_LOG_FORMAT", "xml")
        .args(["start", "--workers", "1", "--mem-limit", "200M", "--sleep", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("invalid value 'xml' for '--log-format"), "{}", text(&bad));
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sup.try_wait().unwrap().is_none(), "the first signal waits for the jobs (grace 60s)");
    let second = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    assert!(sup.wait().unwrap().success());
    assert!(second.elapsed() < Duration::from_secs(5), "stopped at once: {:?}", second.elapsed());
    assert_eq!(t.by_status().await.get("running"), None, "nothing is left claimed");
    let most = t.videos().await.iter().map(|v| v.attempts).max();
    assert_eq!(most, Some(0), "the stopped jobs' attempts do not count");
    assert_eq!(t.attempts_ending("released").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_does_not_stall_the_fleet() {
    let t = TestDb::new().await;
    t.seed(300).await;
    // Every failure logs ~2 KiB of stderr: far more than a pipe holds.
    let noisy = "sh -c 'head -c 2000 /dev/zero | tr \"\\\\0\" x >&2; exit 1'";
    let mut cmd = start(&t, 2, &["--mem-limit", "250M", "--exec", noisy, "--max-attempts", "1", "--exit-when-done"]);
    let mut sup = Running(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let started = Instant::now();
    while sup.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < LONG, "the supervisor stalled on its unread stdout");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sup.wait().unwrap().code(), Some(3), "every video failed, and the run ended");
    assert_eq!(t.by_status().await.get("failed"), Some(&300));
    let logs = std::fs::read_to_string(t.dir.path().join("fleet-logs/worker-0.log")).unwrap();
    assert!(logs.lines().count() >= 150, "the log files keep every line");
    let summary = std::fs::read_to_string(t.dir.path().join("fleet-logs/run-1-summary.txt")).unwrap();
    assert!(summary.contains("videos: 0 done, 300 failed, 300 in all"), "the summary is saved: {summary}");
}

#[tokio::test]
async fn read_only_commands_refuse_a_sqlite_file_that_is_not_a_fleet_and_leave_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect('{}'); c.execute('create table notes (x)'); c.commit()",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let before = std::fs::read(&path).unwrap();
    for cmd in [&["status"][..], &["export"], &["stop"], &["retry", "--failed"]] {
        let out = supervisor(dir.path()).args(cmd).arg("--db").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", text(&out));
        assert!(text(&out).contains("holds another application's tables (notes)"), "{}", text(&out));
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");
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
    let pid = workers(&t).await[0].pid.unwrap();
    // The handlers are the worker's children. In sampling mode the supervisor kills the
    // groups it last sampled, so let two of its refreshes of the worker records pass
    // after both handlers exist: a whole sampling round has seen them, however slow a
    // loaded machine makes the rounds.
    let mut handlers = children_of(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handlers.len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        handlers = children_of(pid);
    }
    assert_eq!(handlers.len(), 2, "two handler processes: {handlers:?}");
    let refreshed = || async { t.slots().await.iter().filter_map(|w| w.updated_at).max() };
    for _ in 0..2 {
        let seen = refreshed().await;
        wait_for(LONG, "the supervisor's next refresh", || async { refreshed().await > seen }).await;
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while handlers.iter().any(|&h| alive(h)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(handlers.iter().all(|&h| !alive(h)), "handlers outlived their worker: {handlers:?}");
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

/// The direct children of `pid`, from every one of its threads.
fn children_of(pid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<i64>().ok()));
        }
    }
    out
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
    let worker = workers(&t).await[0].pid.unwrap();
    let mut handlers = children_of(worker);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handlers.len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        handlers = children_of(worker);
    }
    assert_eq!(handlers.len(), 2, "two handler processes");
    sup.kill().unwrap();
    sup.wait().unwrap();
    let everyone: Vec<i64> = handlers.iter().copied().chain([worker]).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while everyone.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(everyone.iter().all(|&p| !alive(p)), "outlived the supervisor by 2 s: {everyone:?}");
}

#[tokio::test]
async fn a_port_someone_else_holds_is_a_runtime_failure_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = supervisor(dir.path())
        .args(["start", "--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--base-port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is already in use (worker 0 would listen there)"), "{}", text(&out));
    assert!(!dir.path().join("fleet.db").exists(), "no database was created");
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
        workers(&t).await.iter().filter(|w| w.state == SlotStatus::Running && w.pid.is_some()).count() == 2
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

#[tokio::test]
async fn start_with_no_videos_says_so_and_names_import() {
    let t = TestDb::new().await;
    let out = run_to_end(start(&t, 1, &["--mem-limit", "250M", "--sleep", "1ms", "--exit-when-done"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("holds no videos"), "{}", text(&out));
    assert!(text(&out).contains("supervisor import FILE"), "{}", text(&out));
}

#[tokio::test]
async fn another_applications_sqlite_file_is_refused_by_import_and_start_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.db");
    let d1 = dir.path().join("d1.db");
    let made = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\n\
             c = sqlite3.connect('{}'); c.execute('create table notes (x)'); c.commit()\n\
             c = sqlite3.connect('{}'); c.execute('create table _cf_KV (key text primary key, value blob)')\n\
             c.execute('create table d1_migrations (id integer primary key autoincrement, name text unique, applied_at timestamp)')\n\
             c.commit()",
            theirs.display(),
            d1.display()
        ))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let csv = dir.path().join("videos.csv");
    std::fs::write(&csv, "video_id,source\n1,a.mp4\n").unwrap();
    let before = std::fs::read(&theirs).unwrap();
    let import = supervisor(dir.path()).arg("import").arg(&csv).arg("--db").arg(&theirs).output().unwrap();
    assert_eq!(import.status.code(), Some(2), "{}", text(&import));
    assert!(text(&import).contains("holds another application's tables (notes)"), "{}", text(&import));
    let base = free_ports(1).to_string();
    let start = supervisor(dir.path())
        .args(["start", "--workers", "1", "--mem-limit", "250M", "--sleep", "0", "--base-port", &base, "--db"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert_eq!(start.status.code(), Some(2), "{}", text(&start));
    assert_eq!(text(&start).matches("another application's tables").count(), 1, "one sentence: {}", text(&start));
    assert_eq!(std::fs::read(&theirs).unwrap(), before, "the file is unchanged");

    // A database wrangler made (only its bookkeeping tables) is taken as it is.
    let import = supervisor(dir.path()).arg("import").arg(&csv).arg("--db").arg(&d1).output().unwrap();
    assert_eq!(import.status.code(), Some(0), "{}", text(&import));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_databases_and_log_folders_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("videos.csv");
    std::fs::write(&csv, "video_id,source\n1,a.mp4\n2,b.mp4\n").unwrap();
    let import = supervisor(dir.path()).arg("import").arg(&csv).output().unwrap();
    assert_eq!(import.status.code(), Some(0), "{}", text(&import));
    let base = free_ports(1).to_string();
    let out = supervisor(dir.path())
        .args(["start", "--workers", "1", "--mem-limit", "250M", "--sleep", "1ms", "--exit-when-done"])
        .args(["--base-port", &base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("fleet.db"), 0o600);
    assert_eq!(mode("fleet-logs"), 0o700);
    assert_eq!(mode("fleet-logs/worker-0.log"), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_ends_the_run_with_exit_1_and_says_how_to_recover_it() {
    let t = TestDb::new().await;
    t.seed_and_damage().await;
    let mut cmd = start(&t, 2, &["--mem-limit", "250M", "--sleep", "1ms", "--exit-when-done"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(LONG) else {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        panic!("the supervisor did not end on a corrupt database");
    };
    let out = out.unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("is damaged"), "{all}");
    assert!(all.contains(&format!("sqlite3 {} .recover", t.path.display())), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[tokio::test]
async fn status_and_logs_end_quietly_when_their_reader_goes_away() {
    let t = TestDb::new().await;
    t.seed(10).await;
    // Enough workers and log lines that the output passes a pipe buffer.
    let run = FleetRun {
        run_id: 0,
        supervisor_pid: 1,
        host: None,
        started_at: 0,
        stopped_at: None,
        state: RunState::Stopped,
        workers: 3000,
        base_port: 3001,
        bind: "127.0.0.1".into(),
        mem_limit_bytes: None,
        mem_enforce: "sample".into(),
        handler: "sleep: 1ms".into(),
        concurrency: 1,
        log_dir: Some(t.dir.path().join("logs").display().to_string()),
        control_token: None,
        worker_ids: None,
        heartbeat_at: None,
        stop_requested_at: None,
        advertise: None,
    };
    t.db.insert_run(&run).await.unwrap();
    std::fs::create_dir(t.dir.path().join("logs")).unwrap();
    std::fs::write(t.dir.path().join("logs/worker-0.log"), "a log line that is long enough to matter\n".repeat(20_000))
        .unwrap();
    for cmd in ["status", "status --json", "logs --worker 0 --lines 20000"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {} {cmd} --db {} | head -1", bin("supervisor").display(), t.path.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{cmd}: {}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_too_large_to_run_fail_at_once_and_the_rest_of_their_shard_finishes() {
    let t = TestDb::new().await;
    t.seed(40).await;
    // Written around the import, as wrangler or another app would: four 20 MB sources
    // and one 2 MB payload in shard 1. Claimed in one batch, their contents would take
    // the worker past its limit; the worker must never read them.
    let foreign = [
        "INSERT INTO videos (video_id, source) SELECT column1, hex(zeroblob(10485760)) \
         FROM (VALUES (101), (103), (105), (107))",
        "INSERT INTO videos (video_id, source, payload) VALUES (109, 'ok.mp4', '\"' || hex(zeroblob(1048576)) || '\"')",
        // Values no handler could take: a BLOB source, and text that is not UTF-8.
        "INSERT INTO videos (video_id, source) VALUES (111, X'00FF10'), (113, CAST(X'FF41' AS TEXT))",
    ];
    for sql in foreign {
        testing::execute_foreign(&t.path, sql).await.unwrap();
    }
    let out = run_to_end(start(
        &t,
        2,
        &["--mem-limit", "128M", "--sleep", "1ms", "--concurrency", "8", "--crash-loop", "3/60s", "--exit-when-done"],
    ));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert_eq!(t.by_status().await.get("done"), Some(&40), "{all}");
    for id in [101, 103, 105, 107, 109, 111, 113] {
        let VideoRow { status, attempts, last_error: error, .. } = t.video(id).await;
        assert_eq!((status.as_str(), attempts), ("failed", 1), "video {id}");
        let error = error.unwrap_or_default();
        let what = match id {
            109 => "its payload is 2.0 MiB, above the limit",
            111 => "its source is a blob value, not text",
            113 => "its source is not UTF-8 text",
            _ => "its source is 20.0 MiB, above the limit",
        };
        assert!(error.contains(what), "video {id}: {error}");
        assert_eq!(t.history(id).await, vec![(1, "rejected".to_string())], "video {id}");
    }
    let restarts: i64 = workers(&t).await.iter().map(|w| w.restarts).sum();
    assert_eq!(restarts, 0, "no worker was killed: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_bigger_than_the_host_is_warned_about_at_start() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let out = run_to_end(start(
        &t,
        1,
        &["--mem-limit", "64T", "--mem-enforce", "sample", "--sleep", "1ms", "--exit-when-done"],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("is more than this host's memory"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cannot_read_the_control_token_back_from_its_worker() {
    let t = TestDb::new().await;
    t.seed(1).await;
    // What a same-user handler can read of its worker: environment, command line, and
    // the descriptor the command line names, had it been inherited. (The worker closed
    // its own at start-up; the number may since name another of its files.)
    let probe = r#"sh -c 'tr "\0" "\n" < /proc/$PPID/environ; tr "\0" "\n" < /proc/$PPID/cmdline; fd=$(tr "\0" "\n" < /proc/$PPID/cmdline | sed -n "/^--control-token-fd$/{n;p;}"); test -n "$fd" && cat /proc/self/fd/$fd 2>&1; true'"#;
    let out = run_to_end(start(&t, 1, &["--mem-limit", "250M", "--exec", probe, "--exit-when-done"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let token = t.db.latest_run().await.unwrap().unwrap().control_token.unwrap();
    let seen = t.video(1).await.result.unwrap_or_default();
    assert!(seen.contains("FLEET_SUPERVISOR_PID=") && seen.contains("--worker-id"), "the probe ran: {seen}");
    assert!(!seen.contains(&token), "the handler read the control token: {seen}");
    assert!(seen.contains("--control-token-fd"), "the token travels by descriptor: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_hands_its_ca_cert_to_every_worker_and_they_finish_over_https() {
    let t = TestDb::new().await;
    t.seed(20).await;
    let ca = testkit::tls::TestCa::new("in-house CA");
    let api = testkit::tls::https_api(ca.server_cert(&["127.0.0.1"])).await;
    ca.write(t.dir.path(), "in-house-ca.pem");
    let url = api.url("/analyse");
    // A relative path, which the workers get made absolute. Without the CA every
    // attempt would fail: the host's roots do not hold it.
    let args = ["--mem-limit", "250M", "--http", &url, "--ca-cert", "in-house-ca.pem", "--max-attempts", "1"];
    let mut cmd = start(&t, 2, &args);
    cmd.arg("--exit-when-done");
    let out = tokio::task::spawn_blocking(move || run_to_end(cmd)).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.by_status().await.get("done"), Some(&20));
    let workers: std::collections::BTreeSet<u64> =
        api.calls.lock().unwrap().iter().filter_map(|c| c["worker_id"].as_u64()).collect();
    assert_eq!(workers, [0, 1].into(), "both workers called the API");
}

/// `supervisor scale N` on the test's database; (exit code, its output).
fn scale(t: &TestDb, n: u32) -> (Option<i32>, String) {
    let out = run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["scale", &n.to_string(), "--db"]).arg(&t.path);
        cmd
    });
    (out.status.code(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_changes_a_running_fleets_workers_up_and_down_and_every_video_is_done_once() {
    let t = TestDb::new().await;
    t.seed(200).await;
    let base = free_ports(4);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", "2", "--base-port", &base.to_string(), "--db"]).arg(&t.path).args([
        "--mem-limit",
        "250M",
        "--sleep",
        "50ms",
        "--concurrency",
        "1",
        "--exit-when-done",
    ]);
    let mut sup = spawn(cmd);
    wait_for(LONG, "some videos done", || async { t.counts().await.done >= 20 }).await;

    let (code, said) = scale(&t, 4);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("now 4 shards, running workers 0-3"), "{said}");
    let slots = workers(&t).await;
    assert_eq!(slots.iter().map(|w| w.worker_id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let status = text(&run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["status", "--db"]).arg(&t.path);
        cmd
    }));
    assert!(status.contains("4 workers"), "{status}");
    assert!(status.contains("re-partitioned (supervisor scale): 2 at "), "{status}");
    assert!(status.contains(" → 4 at "), "{status}");
    wait_for(LONG, "worker 3 of 4 to finish a video", || async {
        t.attempts().await.iter().any(|a| a.worker.as_deref().is_some_and(|w| w.starts_with("worker-3/")))
    })
    .await;

    let (code, said) = scale(&t, 1);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(workers(&t).await.len(), 1, "{said}");
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    assert_eq!(t.counts().await.done, 200, "every video done");
    assert_eq!(t.done_twice().await, 0, "none done twice");
    let layouts = t.db.layouts(t.db.latest_run().await.unwrap().unwrap().run_id).await.unwrap();
    assert_eq!(layouts.iter().map(|l| l.workers).collect::<Vec<_>>(), [2, 4, 1], "each layout recorded");
    assert!(layouts.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_without_a_running_fleet_or_with_a_bad_size_is_refused_and_changes_nothing() {
    let t = TestDb::new().await;
    t.seed(3).await;
    let (code, said) = scale(&t, 3);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no fleet is running on this database: there is nothing to scale"), "{said}");
    for bad in ["0", "2000", "many"] {
        let out = run_to_end({
            let mut cmd = supervisor(t.dir.path());
            cmd.args(["scale", bad, "--db"]).arg(&t.path);
            cmd
        });
        assert_eq!(out.status.code(), Some(2), "scale {bad}: {}", text(&out));
    }
    assert!(t.db.latest_run().await.unwrap().is_none(), "no run was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_while_a_re_partition_drains_ends_the_run_instead() {
    let t = TestDb::new().await;
    t.seed(20).await;
    let base = free_ports(2);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", "1", "--base-port", &base.to_string(), "--db"]).arg(&t.path).args([
        "--mem-limit",
        "250M",
        "--sleep",
        "3s",
        "--concurrency",
        "1",
    ]);
    let mut sup = spawn(cmd);
    wait_for(LONG, "a video running", || async { t.counts().await.running >= 1 }).await;

    let scaling = {
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["scale", "2", "--db"]).arg(&t.path).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let status_url = format!("http://127.0.0.1:{base}/status");
    wait_for(LONG, "worker 0 draining for the re-partition", || async {
        let answer = testkit::http().get(&status_url).send().await;
        match answer {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|s| s["state"] == "draining"),
            Err(_) => false,
        }
    })
    .await;
    let stop = run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["stop", "--db"]).arg(&t.path);
        cmd
    });
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    assert!(sup.wait().unwrap().success());
    let scaled = scaling.wait_with_output().unwrap();
    assert_eq!(scaled.status.code(), Some(1), "{}", text(&scaled));
    assert!(text(&scaled).contains("ended before it re-partitioned"), "{}", text(&scaled));
    assert_eq!(t.counts().await.running, 0, "nothing left running");
    assert_eq!(workers(&t).await.len(), 1, "the new layout never started");
}
