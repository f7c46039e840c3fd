//! The real `worker` binary against real SQLite files, over real HTTP on 127.0.0.1.

use std::time::Duration;

use nix::sys::signal::Signal;
use shared::status::VideoStatus;
use testkit::{TestDb, VideoRow, WorkerBuilder, run_worker_to_end, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// Runs worker 0 of 1 on the test's database until it exits; (exit code, its output).
fn run_alone(t: &TestDb, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--worker-id", "0", "--workers", "1", "--port", "0", "--db", t.path.to_str().unwrap()];
    all.extend_from_slice(args);
    run_worker_to_end(&all, t.dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_process_a_thousand_videos_each_once_and_only_in_its_own_shard() {
    let t = TestDb::new().await;
    t.seed(1000).await;
    let args = ["--sleep", "0..2ms", "--concurrency", "16", "--exit-when-done"];
    let mut w0 = WorkerBuilder::new(&t).workers(2).args(args).spawn();
    let mut w1 = WorkerBuilder::new(&t).id(1).workers(2).args(args).spawn();
    assert!(w0.wait_exit(LONG).success(), "{}", w0.log_text());
    assert!(w1.wait_exit(LONG).success(), "{}", w1.log_text());

    assert_eq!(t.by_status().await.get("done"), Some(&1000));
    assert_eq!(t.attempts().await.len(), 1000, "one attempt each");
    assert_eq!(t.attempts_ending("done").await, 1000);
    assert_eq!(t.outside_their_shard(2).await, 0, "every video was run by the worker owning its shard");
    assert!(w0.log_text().contains("shard finished: 500 done, 0 failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_no_video_and_completes_each_once() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let slow = ["--exec", "sleep 0.2", "--concurrency", "4", "--lease", "1s", "--backoff", "10ms"];
    let w = WorkerBuilder::new(&t).args(slow).spawn();
    wait_for(LONG, "some videos done and others running", || async {
        let s = t.by_status().await;
        s.get("done").copied().unwrap_or(0) >= 4 && s.get("running").copied().unwrap_or(0) > 0
    })
    .await;
    w.signal(Signal::SIGKILL);
    drop(w);
    let interrupted = t.counts().await.running as usize;
    assert!(interrupted > 0);

    let mut again = WorkerBuilder::new(&t).sleep("1ms").args(["--lease", "1s", "--exit-when-done"]).spawn();
    assert!(again.wait_exit(LONG).success(), "{}", again.log_text());
    assert_eq!(t.by_status().await.get("done"), Some(&40));
    assert_eq!(t.attempts_ending("expired").await, interrupted);
    assert_eq!(t.done_twice().await, 0, "no video has two successful completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_twice_then_succeeds_ends_done_at_attempt_three() {
    let t = TestDb::new().await;
    t.seed(1).await;
    let script = "sh -c 'echo attempt {attempt} failed >&2; test {attempt} -ge 3 && echo ok'";
    let (code, logs) = run_alone(&t, &["--exec", script, "--backoff", "20ms", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    let VideoRow { status, attempts, result, last_error: error, .. } = t.video(1).await;
    assert_eq!((status.as_str(), attempts, result.as_deref(), error), ("done", 3, Some("ok"), None));
    assert_eq!(t.history(1).await, [(1, "error".into()), (2, "error".into()), (3, "done".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_always_fails_ends_failed_with_its_last_error() {
    let t = TestDb::new().await;
    t.seed(1).await;
    let (code, logs) = run_alone(
        &t,
        &[
            "--exec",
            "sh -c 'echo boom {attempt} >&2; exit 3'",
            "--max-attempts",
            "2",
            "--backoff",
            "10ms",
            "--exit-when-done",
        ],
    );
    assert_eq!(code, 0, "{logs}");
    let VideoRow { status, attempts, last_error: error, .. } = t.video(1).await;
    assert_eq!((status.as_str(), attempts), ("failed", 2));
    assert_eq!(error.as_deref(), Some("exit code 3: boom 2"));
    assert_eq!(t.history(1).await, [(1, "error".into()), (2, "error".into())]);
    assert!(logs.contains("shard finished: 0 done, 1 failed"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_successful_handler_says_on_stderr_is_kept_as_its_warnings_and_cut_to_the_tail() {
    let t = TestDb::new().await;
    t.seed(4).await;
    // Like ffmpeg on a truncated file: exit 0, a warning on stderr. Video 3 floods
    // stderr; video 4 writes only whitespace there, which is no warning.
    let script = r#"sh -c 'echo ok; case {video_id} in
        2) echo "[mov,mp4] File ended prematurely" >&2 ;;
        3) head -c 100000 /dev/zero | tr "\0" x >&2; echo >&2; echo last line >&2 ;;
        4) printf " \n\t\n" >&2 ;;
        esac'"#;
    let (code, logs) = run_alone(&t, &["--exec", script, "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    assert_eq!(t.by_status().await.get("done"), Some(&4), "warnings do not fail a video");

    // (video, the video's warnings, its attempt's warnings): one attempt each.
    let attempts = t.attempts().await;
    let kept: Vec<(i64, Option<String>, Option<String>)> = t
        .videos()
        .await
        .into_iter()
        .map(|v| {
            let attempt = attempts.iter().find(|a| a.video_id == v.video_id).expect("an attempt");
            (v.video_id, v.warnings, attempt.warnings.clone())
        })
        .collect();
    let warned = Some("[mov,mp4] File ended prematurely".to_string());
    assert_eq!(kept[0], (1, None, None));
    assert_eq!(kept[1], (2, warned.clone(), warned));
    assert_eq!(kept[3], (4, None, None), "whitespace is no warning");
    let flood = kept[2].1.clone().unwrap();
    assert_eq!(kept[2].2.as_ref(), Some(&flood), "the history keeps what the video row keeps");
    assert!(flood.len() <= worker::handler::STDERR_TAIL && flood.len() > worker::handler::STDERR_TAIL / 2);
    assert!(flood.starts_with("xxx") && flood.ends_with("x\nlast line"), "the end of stderr is kept: {flood:?}");
    assert_eq!(t.video(3).await.result.as_deref(), Some("ok"), "stdout is still the result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_with_shell_syntax_reach_the_handler_as_literal_arguments() {
    let t = TestDb::new().await;
    let nasty = ["x; touch pwned", "$(id)", "`id`", "a b 'c' \"d\"", "{attempt}"];
    t.seed_sources(nasty.iter().enumerate().map(|(i, s)| (i as i64 + 1, s.to_string())).collect()).await;
    let (code, logs) = run_alone(&t, &["--exec", "printf %s {source}", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    for (i, s) in nasty.iter().enumerate() {
        assert_eq!(t.video(i as i64 + 1).await.result.as_deref(), Some(*s));
    }
    assert!(!t.dir.path().join("pwned").exists(), "no shell ran the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_looks_like_an_option_stays_an_operand_after_a_double_dash() {
    let t = TestDb::new().await;
    t.seed_sources(vec![(1, "--help".into())]).await;
    // As the README shows it: `--` ends the program's options, so `cat` looks for a
    // file named "--help" (and fails the attempt) instead of printing its usage.
    let (code, logs) = run_alone(&t, &["--exec", "cat -- {source}", "--max-attempts", "1", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    let VideoRow { status, result, last_error: error, .. } = t.video(1).await;
    assert_eq!(status, VideoStatus::Failed, "{result:?}");
    assert!(error.unwrap_or_default().contains("--help: No such file"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_goes_to_stdin_and_stdout_becomes_the_result() {
    let t = TestDb::new().await;
    t.seed(3).await;
    let (code, logs) = run_alone(&t, &["--exec", "cat", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    assert_eq!(t.video(2).await.result.as_deref(), Some("{\"n\":2}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_timeout_kills_the_handler_and_the_grandchild_it_left_sleeping() {
    let t = TestDb::new().await;
    t.seed(1).await;
    let pidfile = t.dir.path().join("grandchild.pid");
    let script = format!("sh -c 'sleep 300 & echo $! > {}; wait'", pidfile.display());
    let (code, logs) =
        run_alone(&t, &["--exec", &script, "--job-timeout", "300ms", "--max-attempts", "1", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    let VideoRow { status, last_error: error, .. } = t.video(1).await;
    assert_eq!(status, VideoStatus::Failed);
    assert!(error.unwrap().contains("timed out after 300ms"));
    assert_eq!(t.history(1).await, [(1, "timeout".into())]);
    let pid: i64 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(testkit::all_dead(&[pid], Duration::from_secs(5)), "the grandchild {pid} survived the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics_have_their_shapes() {
    let t = TestDb::new().await;
    t.seed(10).await;
    let w =
        WorkerBuilder::new(&t).id(1).workers(2).exec("sleep 30").concurrency(2).args(["--mem-limit", "250M"]).spawn();
    wait_for(LONG, "two jobs in flight", || async { w.status().await["in_flight"].as_array().unwrap().len() == 2 })
        .await;

    let health = testkit::http().get(w.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let h: serde_json::Value = health.json().await.unwrap();
    assert_eq!((h["ok"].as_bool(), h["worker_id"].as_u64()), (Some(true), Some(1)));

    let s = w.status().await;
    for field in [
        "worker_id",
        "workers",
        "pid",
        "state",
        "shard",
        "in_flight",
        "throughput_per_sec",
        "avg_job_ms",
        "rss_bytes",
        "mem_limit_bytes",
        "uptime_seconds",
        "port",
        "recent_errors",
    ] {
        assert!(s.get(field).is_some(), "/status lacks {field}: {s}");
    }
    assert_eq!(s["state"], "running");
    assert_eq!(s["shard"], serde_json::json!({"pending": 3, "running": 2, "done": 0, "failed": 0}));
    assert_eq!(s["mem_limit_bytes"], 250 << 20);
    assert!(s["rss_bytes"].as_u64().unwrap() > 0 || s["uptime_seconds"].as_f64().unwrap() < 1.5);
    assert_eq!(s["pid"].as_u64().unwrap(), w.child.id() as u64);
    let typed: shared::status::WorkerStatus = serde_json::from_value(s).unwrap();
    assert_eq!(typed.in_flight.iter().map(|f| f.video_id % 2).collect::<Vec<_>>(), [1, 1]);

    let metrics = testkit::http().get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "shardfleet_in_flight{worker=\"1\"} 2",
        "shardfleet_videos_claimed_total",
        "shardfleet_job_duration_seconds_bucket",
        "shardfleet_lease_reclaims_total",
        "shardfleet_db_busy_retries_total",
        "shardfleet_db_lock_waits_total",
        "shardfleet_shard_videos{",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let missing = testkit::http().get(w.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_openmetrics_with_the_memory_limit_and_a_count_of_requests() {
    let t = TestDb::new().await;
    let w = WorkerBuilder::new(&t).sleep("0").args(["--mem-limit", "250M"]).spawn();
    let client = testkit::http();
    for _ in 0..3 {
        client.get(w.url("/status")).send().await.unwrap();
    }
    let r = client.get(w.url("/metrics")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let body = r.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics body ends in # EOF:\n{body}");
    assert!(body.contains(&format!("shardfleet_memory_limit_bytes{{worker=\"0\"}} {}", 250u64 << 20)), "{body}");
    assert!(body.contains("shardfleet_rss_bytes{worker=\"0\"}"), "{body}");
    let statuses = "shardfleet_http_requests_total{worker=\"0\",endpoint=\"/status\"} ";
    let line = body.lines().find(|l| l.starts_with(statuses)).unwrap_or_else(|| panic!("no {statuses}:\n{body}"));
    // The test's three and any its spawn helper made; never fewer than three.
    assert!(line[statuses.len()..].parse::<u64>().unwrap() >= 3, "{line}");

    let unlimited = WorkerBuilder::new(&t).sleep("0").spawn();
    let body = client.get(unlimited.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!body.contains("memory_limit_bytes"), "no limit, no series (a 0 would read as exceeded):\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_claiming_finishes_what_the_worker_holds_and_exits_zero() {
    let t = TestDb::new().await;
    t.seed(10).await;
    let mut w = WorkerBuilder::new(&t).sleep("1500ms").concurrency(2).args(["--control-token", "s3cret-token"]).spawn();
    wait_for(LONG, "two jobs in flight", || async { w.status().await["in_flight"].as_array().unwrap().len() == 2 })
        .await;
    let client = testkit::http();
    assert_eq!(client.post(w.url("/drain")).send().await.unwrap().status(), 401, "drain needs the token");
    let r = client.post(w.url("/drain")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let status = w.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", w.log_text());
    let c = t.counts().await;
    assert_eq!((c.done, c.running, c.pending), (2, 0, 8), "the two held videos finished; nothing more was claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_are_refused_without_the_token_and_work_with_it() {
    let t = TestDb::new().await;
    t.seed(4).await;
    let client = testkit::http();

    let open = WorkerBuilder::new(&t).sleep("10s").concurrency(1).spawn();
    let r = client.post(open.url("/pause")).bearer_auth("anything").send().await.unwrap();
    assert_eq!(r.status(), 403, "no token configured: control is off");
    drop(open);

    let w = WorkerBuilder::new(&t).sleep("10s").concurrency(1).args(["--control-token", "s3cret-token"]).spawn();
    assert_eq!(client.post(w.url("/pause")).send().await.unwrap().status(), 401);
    assert_eq!(client.post(w.url("/pause")).bearer_auth("wrong-token!").send().await.unwrap().status(), 401);
    let ok = client.post(w.url("/pause")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(w.status().await["state"], "paused");
    let ok = client.post(w.url("/resume")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let r = client.post(w.url("/videos/abc/retry")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client.post(w.url("/videos/3/retry")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 409, "video 3 is not failed");
    // Last, on its own client: the server closes a connection whose body it refused.
    let big = testkit::http()
        .post(w.url("/pause"))
        .bearer_auth("s3cret-token")
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413, "oversized bodies are refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_video_can_be_retried_over_http() {
    let t = TestDb::new().await;
    t.seed(1).await;
    t.mark_failed(1, 3, "x").await;
    let w = WorkerBuilder::new(&t).sleep("0").args(["--control-token", "s3cret-token"]).spawn();
    let r = testkit::http().post(w.url("/videos/1/retry")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    wait_for(LONG, "the retried video done", || async { t.video(1).await.status == VideoStatus::Done }).await;
    assert_eq!(t.video(1).await.attempts, 1, "a retry starts a fresh set of attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_zero_hands_back_claims_and_a_restart_finishes() {
    let t = TestDb::new().await;
    t.seed(8).await;
    let mut w = WorkerBuilder::new(&t).exec("sleep 30").concurrency(4).args(["--grace", "200ms"]).spawn();
    wait_for(LONG, "four jobs running", || async { t.by_status().await.get("running") == Some(&4) }).await;
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", w.log_text());
    assert_eq!(t.by_status().await.get("running"), None, "no claim left behind");
    let most = t.videos().await.iter().map(|v| v.attempts).max();
    assert_eq!(most, Some(0), "handed-back attempts do not count");
    assert_eq!(t.attempts_ending("released").await, 4);

    let mut again = WorkerBuilder::new(&t).sleep("0").args(["--exit-when-done"]).spawn();
    assert!(again.wait_exit(LONG).success());
    assert_eq!(t.by_status().await.get("done"), Some(&8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_finish_within_the_grace_period_are_recorded_done() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let mut w = WorkerBuilder::new(&t).exec("sleep 0.5").concurrency(2).args(["--grace", "10s"]).spawn();
    wait_for(LONG, "two jobs running", || async { t.by_status().await.get("running") == Some(&2) }).await;
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(t.by_status().await.get("done"), Some(&2));
}

#[tokio::test]
async fn bad_flags_are_one_clear_sentence_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--worker-id", "0", "--workers", "0", "--sleep", "0"], "--workers must be at least 1"),
        (&["--worker-id", "2", "--workers", "2", "--sleep", "0"], "--worker-id 2 is out of range"),
        (&["--worker-id", "0", "--workers", "1", "--sleep", "5parsecs"], "invalid duration"),
        (&["--worker-id", "0", "--workers", "1", "--sleep", "0", "--mem-limit", "12Q"], "invalid size \"12Q\""),
        (&["--worker-id", "0", "--workers", "1", "--sleep", "0", "--lease", "1ms"], "--lease 1ms is too short"),
        (&["--worker-id", "0", "--workers", "1", "--exec", "echo 'unbalanced"], "cannot be split into words"),
        (&["--worker-id", "0", "--workers", "1"], "--exec"),
        (
            &["--worker-id", "0", "--workers", "1", "--http", "ftp://127.0.0.1/x"],
            "only http:// and https:// URLs are supported",
        ),
        (&["--worker-id", "0", "--workers", "1", "--exec", "/no/such/program"], "does not exist"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_worker_to_end(args, dir.path());
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
        assert!(!stderr.contains("listening on"), "{args:?}: refused before it listens: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!dir.path().join("fleet.db").exists(), "bad flags create no database");
}

#[tokio::test]
async fn a_database_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    std::fs::write(&path, b"PK\x03\x04 this is a zip file").unwrap();
    let (code, stderr) = run_worker_to_end(
        &["--worker-id", "0", "--workers", "1", "--port", "0", "--sleep", "0", "--db", path.to_str().unwrap()],
        dir.path(),
    );
    // The same mistake gets the same code as from the supervisor: 2, which a restart
    // cannot mend (systemd's unit does not restart on it).
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a SQLite database"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), b"PK\x03\x04 this is a zip file");
}

#[tokio::test]
async fn a_database_holding_another_applications_tables_is_refused_with_exit_2_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("theirs.db");
    shared::storage::testing::execute_foreign(&path, "CREATE TABLE notes (x); INSERT INTO notes VALUES (1)")
        .await
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let (code, stderr) = run_worker_to_end(
        &["--worker-id", "0", "--workers", "1", "--port", "0", "--sleep", "0", "--db", path.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("holds another application's tables (notes)"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is unchanged");
}

#[tokio::test]
async fn a_port_in_use_is_named_and_touches_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_worker_to_end(
        &["--worker-id", "0", "--workers", "1", "--port", &port, "--sleep", "0", "--db", "fleet.db"],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")), "{stderr}");
    assert!(!dir.path().join("fleet.db").exists());
}

/// A tiny API on 127.0.0.1. `/analyse` answers 503 (Retry-After: 0) to the first call
/// for each video, then 200 with a body naming the video; video 3 always gets 400.
/// `/ok` always answers 200, `/busy` always 429 with Retry-After: 60. The bodies of
/// `/ok` and `/analyse` calls are kept.
async fn flaky_api() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (log, counted) = (seen.clone(), seen.clone());
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let counted = counted.clone();
                async move {
                    counted.lock().unwrap().push(body);
                    "ok"
                }
            }),
        )
        .route(
            "/busy",
            axum::routing::post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "60")], "slow down") }),
        )
        .route(
            "/analyse",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let log = log.clone();
                async move {
                    let id = body["video_id"].as_i64().unwrap();
                    let mut calls = log.lock().unwrap();
                    let first = !calls.iter().any(|c| c["video_id"] == id);
                    calls.push(body.clone());
                    if id == 3 {
                        (StatusCode::BAD_REQUEST, "video 3 is not a video").into_response()
                    } else if first {
                        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")], "busy").into_response()
                    } else {
                        format!("analysed {id} from {}", body["source"].as_str().unwrap()).into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_handler_retries_push_back_within_the_attempt_and_fails_on_client_errors() {
    let t = TestDb::new().await;
    t.seed(4).await;
    let (port, seen) = flaky_api().await;
    let url = format!("http://127.0.0.1:{port}/analyse");
    let mut w = WorkerBuilder::new(&t).args(["--http", &url, "--max-attempts", "1", "--exit-when-done"]).spawn();
    assert!(w.wait_exit(LONG).success(), "{}", w.log_text());
    let VideoRow { status, attempts, result, .. } = t.video(2).await;
    assert_eq!((status.as_str(), attempts), ("done", 1), "a 503 is push-back, not a failed attempt");
    assert_eq!(result.as_deref(), Some("analysed 2 from src-2"));
    let VideoRow { status, last_error: error, .. } = t.video(3).await;
    assert_eq!(status, VideoStatus::Failed);
    assert!(error.unwrap().starts_with("HTTP 400 Bad Request: video 3 is not a video"));
    let calls = seen.lock().unwrap();
    let first = calls.iter().find(|c| c["video_id"] == 1).unwrap();
    assert_eq!(first["payload"], serde_json::json!({"n": 1}), "the payload travels as JSON");
    assert_eq!((first["attempt"].as_u64(), first["worker_id"].as_u64()), (Some(1), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_show_the_http_handlers_pace_and_push_backs() {
    let t = TestDb::new().await;
    t.seed(6).await;
    let (port, _) = flaky_api().await;
    // Every video's first call is pushed back (503), but video 3's, which fails on a 400.
    let url = format!("http://127.0.0.1:{port}/analyse");
    let w = WorkerBuilder::new(&t).args(["--http", &url, "--max-attempts", "1", "--rate", "50/s"]).spawn();
    wait_for(LONG, "all six videos finished", || async {
        let c = t.counts().await;
        c.done + c.failed == 6
    })
    .await;
    let pacing = w.worker_status().await.pacing.expect("an http worker reports its pacing");
    assert_eq!(pacing.push_backs, 5, "{pacing:?}");
    assert!(pacing.slowdowns >= 1, "{pacing:?}");
    let pace = pacing.calls_per_sec.expect("pushed back: paced");
    assert!(pace > 0.0 && pace <= 50.0, "--rate stays the cap: {pace}");
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("shardfleet_http_push_backs_total{worker=\"0\"} 5"), "{metrics}");
    assert!(metrics.contains("shardfleet_http_slowdowns_total"), "{metrics}");
    assert!(metrics.contains("shardfleet_http_pace_calls_per_second"), "{metrics}");

    // Other handlers have no pace to show.
    let t2 = TestDb::new().await;
    let sleeper = WorkerBuilder::new(&t2).sleep("1ms").spawn();
    assert_eq!(sleeper.worker_status().await.pacing, None);
    let metrics = reqwest::get(sleeper.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("http_pace"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_hands_back_the_http_jobs_waiting_out_a_retry_after_at_once() {
    let t = TestDb::new().await;
    t.seed(4).await;
    let (port, _) = flaky_api().await;
    let url = format!("http://127.0.0.1:{port}/busy");
    let mut w = WorkerBuilder::new(&t).args(["--http", &url, "--grace", "30s"]).spawn();
    wait_for(LONG, "every job pushed back and waiting", || async {
        w.worker_status().await.pacing.is_some_and(|p| p.push_backs >= 4)
    })
    .await;
    let asked = std::time::Instant::now();
    w.signal(Signal::SIGTERM);
    assert!(w.wait_exit(LONG).success(), "{}", w.log_text());
    // Not the 30 s grace, nor the 60 s the server asked for.
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    assert_eq!(t.by_status().await.get("pending"), Some(&4), "handed back, none failed");
    assert_eq!(t.video(1).await.attempts, 0, "a handed-back job does not use up an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_handler_keeps_to_its_rate() {
    let t = TestDb::new().await;
    t.seed(6).await;
    let (port, seen) = flaky_api().await;
    // A route that never pushes back: only --rate can space the calls.
    let url = format!("http://127.0.0.1:{port}/ok");
    let started = std::time::Instant::now();
    let mut w =
        WorkerBuilder::new(&t).concurrency(8).args(["--http", &url, "--rate", "20/s", "--exit-when-done"]).spawn();
    assert!(w.wait_exit(LONG).success(), "{}", w.log_text());
    // 6 calls at 20/s: the last starts 250 ms after the first.
    assert_eq!(seen.lock().unwrap().len(), 6);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
}

/// A worker process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fills the pipe whose write end is `w` until a blocking write to it would block.
fn fill_pipe(w: &impl std::os::fd::AsRawFd) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A second, non-blocking description of the same pipe: the worker's stays blocking.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", w.as_raw_fd()))
        .unwrap();
    while f.write(&[b'.'; 4096]).is_ok_and(|n| n > 0) {}
    while f.write(b".").is_ok_and(|n| n > 0) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_ended_because_the_supervisor_died_are_never_recorded_as_failed_attempts() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let (mut stderr, stderr_w) = std::io::pipe().unwrap();
    let child = std::process::Command::new(testkit::worker_bin())
        .args(["--worker-id", "0", "--workers", "1", "--port", "0", "--db"])
        .arg(&t.path)
        .args(["--exec", "sleep 30", "--concurrency", "2"])
        .env("FLEET_SUPERVISOR_PID", std::process::id().to_string())
        .env("RUST_LOG", shared::logging::DEFAULT_LOG_FILTER)
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(stderr_w.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut w = Killed(child);
    wait_for(LONG, "both jobs running", || async { t.by_status().await.get("running") == Some(&2) }).await;
    // With its stderr full, the worker blocks on the line it writes between killing its
    // handlers and exiting: time enough for the killed jobs to reach the database, if
    // anything let them.
    fill_pipe(&stderr_w);
    drop(stderr_w);
    // What the kernel sends a worker whose supervisor died.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.0.id() as i32), Signal::SIGUSR2).unwrap();
    testkit::holds_for(Duration::from_secs(2), "no job the worker killed is recorded", || async {
        t.attempts().await.is_empty()
    })
    .await;
    let drain = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut out);
        out
    });
    let status = w.0.wait().unwrap();
    let logs = drain.join().unwrap();
    assert_eq!(status.code(), Some(worker::orphan::EXIT_ORPHANED), "{logs}");
    assert!(logs.contains("the supervisor (pid"), "{logs}");
    assert!(t.attempts().await.is_empty(), "{logs}");
    assert_eq!(t.by_status().await.get("running"), Some(&2), "left for the next supervisor to hand back");
}

#[tokio::test]
async fn a_worker_bound_beyond_loopback_warns_that_status_and_metrics_are_open() {
    let t = TestDb::new().await;
    let warning = "readable by anyone who can reach";
    let (code, logs) = run_alone(&t, &["--bind", "0.0.0.0", "--sleep", "0", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    assert_eq!(logs.matches(warning).count(), 1, "one warning line: {logs}");
    assert!(logs.contains("/status and /metrics"), "{logs}");
    let (code, logs) = run_alone(&t, &["--sleep", "0", "--exit-when-done"]);
    assert_eq!(code, 0, "{logs}");
    assert!(!logs.contains(warning), "loopback is not beyond loopback: {logs}");
}

/// Sends `bytes` on a fresh connection and says how long the worker took to close it
/// (None: still open after `patience`).
fn closed_after(port: u16, bytes: &[u8], patience: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = std::time::Instant::now();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(patience)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            // An answer (a 408, say) may come before the close.
            Ok(n) if n > 0 => continue,
            Ok(_) => return Some(started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_half_a_request_are_closed_after_the_header_timeout() {
    let t = TestDb::new().await;
    let w = WorkerBuilder::new(&t).sleep("0").args(["--header-timeout", "1s"]).spawn();
    let port = w.port;
    let patience = Duration::from_secs(5);
    let (half_line, half_headers, silent) = tokio::task::spawn_blocking(move || {
        (
            closed_after(port, b"GET /sta", patience),
            closed_after(port, b"GET /status HTTP/1.1\r\nHost: x\r\n", patience),
            closed_after(port, b"", patience),
        )
    })
    .await
    .unwrap();
    for (what, took) in [("half a request line", half_line), ("half the headers", half_headers), ("nothing", silent)] {
        let took = took.unwrap_or_else(|| panic!("a connection that sent {what} was still open after {patience:?}"));
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{what}: closed after {took:?}");
    }
    // Whole requests are still answered, several on one connection.
    let client = testkit::http();
    for _ in 0..3 {
        assert_eq!(client.get(w.url("/health")).send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn a_worker_that_finds_its_database_damaged_exits_with_code_3_and_says_how_to_recover_it() {
    let t = TestDb::new().await;
    t.seed_and_damage().await;
    let (code, out) = run_alone(&t, &["--sleep", "1ms", "--exit-when-done"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(&format!("sqlite3 {} .recover", t.path.display())), "{out}");
}

/// Runs worker 0 of 1 over `args` to the end, off the runtime's threads (the test's
/// HTTPS API runs on them), with the system's roots read from `system_roots` only:
/// the test decides which CAs "the system" trusts. (exit code, its output).
async fn run_with_system_roots(t: &TestDb, system_roots: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(testkit::worker_bin());
    cmd.args(["--worker-id", "0", "--workers", "1", "--port", "0", "--db"])
        .arg(&t.path)
        .args(args)
        .current_dir(t.dir.path())
        .env("SSL_CERT_FILE", system_roots)
        .env_remove("SSL_CERT_DIR")
        .env_remove("WORKER_CONCURRENCY")
        .env_remove("FLEET_CA_CERT");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), text)
}

/// A CA the test's "system" trusts, written to `dir`: not the one that signs the API's
/// certificate.
fn public_roots(dir: &std::path::Path) -> std::path::PathBuf {
    testkit::tls::TestCa::new("some public CA").write(dir, "system-roots.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_the_private_ca_of_an_https_api_finishes_every_video_through_it() {
    let t = TestDb::new().await;
    t.seed(6).await;
    let ca = testkit::tls::TestCa::new("in-house CA");
    let api = testkit::tls::https_api(ca.server_cert(&["127.0.0.1"])).await;
    let ca_pem = ca.write(t.dir.path(), "in-house-ca.pem");
    let roots = public_roots(t.dir.path());
    let url = api.url("/analyse");
    let args = ["--http", &url, "--ca-cert", ca_pem.to_str().unwrap(), "--max-attempts", "1", "--exit-when-done"];
    let (code, out) = run_with_system_roots(&t, &roots, &args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(t.by_status().await.get("done"), Some(&6), "{out}");
    assert_eq!(t.video(2).await.result.as_deref(), Some("analysed 2"));
    assert_eq!(api.calls.lock().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systems_roots_are_trusted_without_a_ca_cert() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let ca = testkit::tls::TestCa::new("a CA the system has");
    let api = testkit::tls::https_api(ca.server_cert(&["127.0.0.1"])).await;
    let system = ca.write(t.dir.path(), "system-roots.pem");
    let (code, out) = run_with_system_roots(&t, &system, &["--http", &api.url("/"), "--exit-when-done"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(t.by_status().await.get("done"), Some(&2), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_ca_each_attempt_fails_once_naming_the_unknown_issuer_and_is_not_retried_as_push_back() {
    let t = TestDb::new().await;
    t.seed(2).await;
    let ca = testkit::tls::TestCa::new("in-house CA");
    let api = testkit::tls::https_api(ca.server_cert(&["127.0.0.1"])).await;
    let roots = public_roots(t.dir.path());
    let args = ["--http", &api.url("/analyse"), "--max-attempts", "1", "--exit-when-done"];
    let (code, out) = run_with_system_roots(&t, &roots, &args).await;
    assert_eq!(code, 0, "a certificate that does not verify fails attempts, not the worker: {out}");
    for id in [1, 2] {
        let VideoRow { status, attempts, last_error: error, .. } = t.video(id).await;
        assert_eq!((status.as_str(), attempts), ("failed", 1));
        let error = error.unwrap();
        assert!(
            error.starts_with("TLS handshake with 127.0.0.1 failed: its certificate is from an unknown issuer"),
            "{error}"
        );
    }
    assert_eq!(t.history(1).await, [(1, "error".into())]);
    assert_eq!(api.refused_handshakes.load(std::sync::atomic::Ordering::SeqCst), 2, "one handshake per attempt");
    assert!(api.calls.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_fails_the_attempt_naming_the_name_mismatch() {
    let t = TestDb::new().await;
    t.seed(1).await;
    let ca = testkit::tls::TestCa::new("in-house CA");
    let api = testkit::tls::https_api(ca.server_cert(&["api.example.test"])).await;
    let ca_pem = ca.write(t.dir.path(), "in-house-ca.pem");
    let roots = public_roots(t.dir.path());
    // The CA comes from the environment here, as a systemd unit would set it.
    let mut cmd = std::process::Command::new(testkit::worker_bin());
    cmd.args(["--worker-id", "0", "--workers", "1", "--port", "0", "--max-attempts", "1", "--exit-when-done"])
        .args(["--http", &api.url("/analyse"), "--db"])
        .arg(&t.path)
        .env("FLEET_CA_CERT", &ca_pem)
        .env("SSL_CERT_FILE", &roots)
        .env_remove("SSL_CERT_DIR");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let VideoRow { status, last_error: error, .. } = t.video(1).await;
    assert_eq!(status, VideoStatus::Failed);
    let error = error.unwrap();
    assert!(error.contains("its certificate does not match the host name 127.0.0.1"), "{error}");
    assert!(error.contains("api.example.test"), "names what the certificate is for: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails_the_attempt_naming_its_expiry() {
    let t = TestDb::new().await;
    t.seed(1).await;
    let ca = testkit::tls::TestCa::new("in-house CA");
    let api = testkit::tls::https_api(ca.expired_server_cert(&["127.0.0.1"])).await;
    let ca_pem = ca.write(t.dir.path(), "in-house-ca.pem");
    let roots = public_roots(t.dir.path());
    let args =
        ["--http", &api.url("/"), "--ca-cert", ca_pem.to_str().unwrap(), "--max-attempts", "1", "--exit-when-done"];
    let (code, out) = run_with_system_roots(&t, &roots, &args).await;
    assert_eq!(code, 0, "{out}");
    let error = t.video(1).await.last_error.unwrap();
    assert_eq!(error, "TLS handshake with 127.0.0.1 failed: its certificate expired at 2021-01-01T00:00:00.000Z");
}

#[tokio::test]
async fn unusable_ca_certs_are_refused_with_exit_2_before_the_worker_listens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "no certificate here\n").unwrap();
    std::fs::write(d.join("bad.pem"), "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::write(d.join("empty-system-roots.pem"), "").unwrap();
    let https = ["--worker-id", "0", "--workers", "1", "--http", "https://127.0.0.1:9/"];
    let missing = d.join("missing.pem");
    let cases: &[(&[&str], String)] = &[
        (
            &["--ca-cert", missing.to_str().unwrap()],
            format!("--ca-cert {}: the file does not exist", missing.display()),
        ),
        (&["--ca-cert", "notes.txt"], "--ca-cert notes.txt: the file holds no PEM certificate".into()),
        (&["--ca-cert", "bad.pem"], "--ca-cert bad.pem: the file is not valid PEM: a block is not valid base64".into()),
    ];
    for (args, expected) in cases {
        let all: Vec<&str> = https.iter().chain(args.iter()).copied().collect();
        let (code, out) = run_worker_to_end(&all, d);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(expected.as_str()), "{args:?}: expected {expected:?} in {out}");
        assert!(!out.contains("listening on"), "{out}");
    }
    let (code, out) =
        run_worker_to_end(&["--worker-id", "0", "--workers", "1", "--sleep", "1ms", "--ca-cert", "notes.txt"], d);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--ca-cert notes.txt (or FLEET_CA_CERT) goes only with --http"), "{out}");

    // A host without any CA certificate, and none given: https cannot verify anything.
    let out = std::process::Command::new(testkit::worker_bin())
        .args(https)
        .env("SSL_CERT_FILE", d.join("empty-system-roots.pem"))
        .env_remove("SSL_CERT_DIR")
        .env_remove("FLEET_CA_CERT")
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no certificate authority to trust for https"), "{stderr}");
    assert!(!d.join("fleet.db").exists(), "nothing was created");
}
