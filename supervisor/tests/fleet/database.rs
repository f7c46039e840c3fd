//! Which files are taken for a fleet's database: a missing one, another
//! application's, a damaged one, and the modes of the files a fleet creates.

use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::{TestDb, free_ports, supervisor, text};

use crate::helper::{LONG, start};

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
