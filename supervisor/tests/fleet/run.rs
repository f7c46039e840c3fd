//! A whole run: every video done in its own shard, the summary and logs it leaves,
//! and what a run hands its workers (the CA, never the control token) or refuses them
//! (rows too large to run).

use std::process::Stdio;
use std::time::{Duration, Instant};

use shared::storage::testing;
use testkit::{Running, TestDb, VideoRow, text};

use crate::helper::{LONG, run_to_end, start};

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
async fn start_with_no_videos_says_so_and_names_import() {
    let t = TestDb::new().await;
    let out = run_to_end(start(&t, 1, &["--mem-limit", "250M", "--sleep", "1ms", "--exit-when-done"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("holds no videos"), "{}", text(&out));
    assert!(text(&out).contains("supervisor import FILE"), "{}", text(&out));
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
    let restarts: i64 = t.slots().await.iter().map(|w| w.restarts).sum();
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
