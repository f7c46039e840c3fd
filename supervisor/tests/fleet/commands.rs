//! The commands over a fleet's records: import, export, retry, status and logs.

use std::process::Command;

use shared::status::VideoStatus;
use shared::storage::{FleetRun, RunState, testing};
use testkit::{TestDb, bin, supervisor, text};

use crate::helper::{run_to_end, start};

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
async fn status_and_logs_end_quietly_when_their_reader_goes_away() {
    let t = TestDb::new().await;
    t.seed(10).await;
    // Enough workers and log lines that the output passes a pipe buffer.
    let run = FleetRun {
        started_at: 0,
        state: RunState::Stopped,
        mem_enforce: "sample".into(),
        handler: "sleep: 1ms".into(),
        log_dir: Some(t.dir.path().join("logs").display().to_string()),
        ..FleetRun::example(3000, 3001)
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

#[tokio::test]
async fn logs_of_a_worker_without_a_log_name_the_workers_that_have_one() {
    let t = TestDb::new().await;
    let logs = t.dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    for k in [0, 1] {
        std::fs::write(logs.join(format!("worker-{k}.log")), format!("2026-01-01T00:00:0{k}.000Z line of {k}\n"))
            .unwrap();
    }
    let logs_of = |args: &[&str]| supervisor(t.dir.path()).arg("logs").args(args).arg("--log-dir").arg(&logs).output();

    let out = logs_of(&["--worker", "9"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no log of worker 9 in") && said.contains("the logs of workers 0, 1"), "{said}");

    let out = logs_of(&["--worker", "1"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2026-01-01T00:00:01.000Z [worker-1] line of 1\n");

    let out = supervisor(t.dir.path()).args(["logs", "--log-dir"]).arg(t.dir.path().join("none")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the log directory"), "{}", text(&out));
}

#[tokio::test]
async fn logs_of_a_fleet_started_with_a_relative_log_directory_are_found_from_any_directory() {
    let t = TestDb::new().await;
    t.seed(4).await;
    let name = t.path.file_name().unwrap().to_str().unwrap().to_string();
    let base = testkit::free_ports(1).to_string();
    let args = ["start", "--workers", "1", "--base-port", &base, "--mem-limit", "250M", "--sleep", "1ms"];
    let out = supervisor(t.dir.path())
        .args(args)
        .args(["--exit-when-done", "--log-dir", "logs", "--db", &name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recorded = t.db.latest_run().await.unwrap().unwrap().log_dir.unwrap();
    assert!(std::path::Path::new(&recorded).is_absolute(), "{recorded}");

    let elsewhere = tempfile::tempdir().unwrap();
    let out = supervisor(elsewhere.path()).args(["logs", "--worker", "0", "--db"]).arg(&t.path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[worker-0]"), "{}", text(&out));
}
