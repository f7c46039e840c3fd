//! Bad input: one sentence on stderr naming what is wrong, a non-zero exit, no panic.

use crate::helper::{TestDb, run_monitor};

fn refused(args: &[&str], cwd: &std::path::Path) -> String {
    let out = run_monitor(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "monitor {args:?} should exit 2; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&out.stdout));
    stderr.lines().next().unwrap_or_default().to_string()
}

#[test]
fn bad_input_is_one_sentence_and_a_non_zero_exit() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path();
    let cases: [(&[&str], &str); 7] = [
        (&[], "monitor: no workers to watch: pass --db PATH|URL, --workers N"),
        (&["--workers", "0"], "monitor: --workers must be at least 1"),
        (&["--targets", "ftp://127.0.0.1:3001"], "only http:// is supported"),
        (&["--targets", "http://127.0.0.1:3001,http://"], "invalid target \"http://\""),
        (&["--workers", "2", "--interval", "soon"], "invalid duration \"soon\""),
        (&["--workers", "2", "--interval", "10ms"], "--interval 10ms is too short"),
        (&["--db", "missing.db"], "cannot open database missing.db: no such database"),
    ];
    for (args, expected) in cases {
        let first = refused(args, dir);
        assert!(first.contains(expected), "monitor {args:?}: expected {expected:?} in {first:?}");
    }
    assert!(!dir.join("missing.db").exists(), "a typo in --db leaves no file behind");
}

#[tokio::test]
async fn a_database_without_a_fleet_run_says_how_to_start_one() {
    let t = TestDb::new().await;
    let first = refused(&["--db", t.path.to_str().unwrap()], t.dir.path());
    assert!(first.contains("has no fleet run recorded: start one with `supervisor start`"), "{first}");
}

/// A database that cannot be reached now is a runtime failure: `--once` and `--json`
/// answer with one sentence and exit 1, and never hang, whether the server refuses the
/// connection or answers the handshake and then says nothing.
#[test]
fn a_database_that_cannot_be_reached_is_one_sentence_and_exit_1_from_once_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = testkit::closed_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [refusing, silent_port] {
        let db = format!("postgres://postgres@127.0.0.1:{port}/fleet");
        for mode in ["--once", "--json"] {
            let began = std::time::Instant::now();
            let out = run_monitor(&[mode, "--db", &db], dir.path());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(1), "monitor {mode} --db {db}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
            assert!(stderr.contains("cannot reach database"), "{stderr}");
            assert!(out.stdout.is_empty());
            // The bound is the connect limit plus room for a loaded machine; the limit
            // itself is the 5 s in storage/postgres/open.rs.
            assert!(began.elapsed() < std::time::Duration::from_secs(15), "monitor {mode} answered without hanging");
        }
    }
    drop(silent);
}
