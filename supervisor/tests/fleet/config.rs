//! Flags, the config file and the environment: what `start` refuses before anything
//! is written, and which source wins.

use testkit::{TestDb, free_ports, supervisor, text};

use crate::helper::{run_to_end, start};

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
