//! Whole fleets on PostgreSQL: real supervisors and workers against the test server in
//! FLEET_TEST_POSTGRES_URL (`.ci/run` starts one; without it these tests say why and
//! pass). The questions are the SQLite suite's: is anything lost or done twice when any
//! process is killed, and do the commands read the same database.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helper::seed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::{all_dead, free_ports, psql, supervisor, text, wait_for};

use crate::helper::{LONG, pg_done_twice, spawn};

fn start(dir: &Path, url: &str, base: u16, args: &[&str]) -> Command {
    let mut cmd = supervisor(dir);
    cmd.args(["start", "--workers", "2", "--mem-limit", "250M", "--base-port", &base.to_string(), "--db", url])
        .args(args);
    cmd
}

fn done(url: &str) -> i64 {
    psql(url, "SELECT count(*) FROM videos WHERE status = 'done'").parse().unwrap()
}

fn worker_pids(url: &str) -> Vec<i64> {
    psql(
        url,
        "SELECT pid FROM fleet_workers WHERE run_id = (SELECT max(run_id) FROM fleet_runs) AND pid IS NOT NULL \
         AND state = 'running' ORDER BY worker_id",
    )
    .lines()
    .filter_map(|l| l.parse().ok())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_fleet_loses_nothing_when_a_worker_and_then_its_supervisor_are_sigkilled() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    seed(&url, 300).await;
    let mut first = spawn(start(dir.path(), &url, free_ports(2), &["--sleep", "20ms", "--concurrency", "4"]));

    wait_for(LONG, "30 videos done", || async { done(&url) >= 30 }).await;
    let pids = worker_pids(&url);
    assert_eq!(pids.len(), 2, "both workers running");
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    wait_for(LONG, "worker 0 back and 120 videos done", || async {
        let now = worker_pids(&url);
        done(&url) >= 120 && now.len() == 2 && now[0] != pids[0]
    })
    .await;
    let crashed: i64 = psql(&url, "SELECT count(*) FROM attempts WHERE outcome = 'crashed'").parse().unwrap();
    assert!(crashed >= 1, "the dead worker's claims were handed back as crashed attempts");

    let pids = worker_pids(&url);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(all_dead(&pids, Duration::from_secs(5)), "workers outlived their supervisor: {pids:?}");

    let out = start(dir.path(), &url, free_ports(2), &["--sleep", "1ms", "--concurrency", "8", "--exit-when-done"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(done(&url), 300);
    assert_eq!(pg_done_twice(&url), "0", "no video was completed twice");
    assert_eq!(psql(&url, "SELECT state FROM fleet_runs ORDER BY run_id LIMIT 1"), "crashed");
    let kept = psql(&url, "SELECT sum(videos) FROM video_counts WHERE status = 'done'");
    assert_eq!(kept, "300", "the kept counts agree with the rows");

    // The read-only commands read the same database.
    let status = supervisor(dir.path()).args(["status", "--db", &url]).output().unwrap();
    assert!(text(&status).contains("300 done"), "{}", text(&status));
    let export = supervisor(dir.path()).args(["export", "--db", &url, "--status", "done"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 301, "a header and 300 rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_url_that_cannot_be_used_is_refused_in_one_sentence_and_creates_nothing() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // A database that exists but is not a fleet's: read-only commands refuse it and
    // leave it without our tables.
    let out = supervisor(dir.path()).args(["status", "--db", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not a shardfleet one"), "{}", text(&out));
    assert_eq!(psql(&url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"), "0");
    // The advice in the message works when followed.
    let csv = dir.path().join("videos.csv");
    std::fs::write(&csv, "video_id,source\n1,a.mp4\n").unwrap();
    let import = supervisor(dir.path()).args(["import"]).arg(&csv).args(["--db", &url]).output().unwrap();
    assert_eq!(import.status.code(), Some(0), "{}", text(&import));
    let out = supervisor(dir.path()).args(["status", "--db", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::remove_file(&csv).unwrap();

    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/no_such_database_here");
    let out = supervisor(dir.path()).args(["export", "--db", &missing]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("database \"no_such_database_here\" does not exist"), "{}", text(&out));

    let out = supervisor(dir.path()).args(["status", "--db", "mysql://u@127.0.0.1/db"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not a database this build can use"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was created");
}

/// Every command's exit code for a `--db` of each kind of trouble on PostgreSQL: the
/// same mistake, the same code, whichever command meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_database_trouble_exits_with_its_own_code_from_every_command() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("videos.csv");
    std::fs::write(&csv, "video_id,source\n1,a.mp4\n").unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let free = free_ports(1);
    // A port that answers the TCP handshake and then says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();

    psql(&url, "CREATE TABLE invoices (id BIGINT PRIMARY KEY)");
    let cases: [(&str, String, i32, &str); 6] = [
        ("another application's database", url.clone(), 2, "holds another application's tables (invoices)"),
        ("a malformed URL", format!("{scheme}://{host}:notaport/x"), 2, "is not a valid PostgreSQL URL"),
        ("a rejected login", format!("{scheme}://no_such_role@{host}/postgres"), 2, "no_such_role"),
        ("no such database", format!("{base}/no_such_database_here"), 2, "does not exist"),
        ("a refused connection", format!("{scheme}://postgres@127.0.0.1:{free}/postgres"), 1, "cannot reach database"),
        ("no answer", format!("{scheme}://postgres@127.0.0.1:{silent_port}/postgres"), 1, "cannot reach database"),
    ];
    for (kind, db, code, says) in cases {
        for cmd in [&["status"][..], &["export"], &["retry", "--failed"], &["import", csv.to_str().unwrap()]] {
            let began = Instant::now();
            let out = supervisor(dir.path()).args(cmd).args(["--db", &db]).output().unwrap();
            assert_eq!(out.status.code(), Some(code), "{kind}, {cmd:?}: {}", text(&out));
            assert!(text(&out).contains(says), "{kind}, {cmd:?}: {}", text(&out));
            assert!(began.elapsed() < Duration::from_secs(15), "{kind}, {cmd:?} answered within the 5 s limit");
        }
    }
    assert_eq!(psql(&url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"), "1");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reaches_postgres_over_verified_tls_and_a_server_it_cannot_verify_is_refused() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let Ok(ca) = std::env::var("FLEET_TEST_POSTGRES_CA") else {
        testkit::skip(
            "postgres-tls",
            "FLEET_TEST_POSTGRES_CA is not set (.ci/postgres turns TLS on where openssl is found)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("videos.csv");
    let rows: String = (1..=20).map(|i| format!("{i},v{i}\n")).collect();
    std::fs::write(&csv, format!("video_id,source\n{rows}")).unwrap();
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");

    // The CA the test server's certificate is signed by is not among the system's roots.
    let unverified = supervisor(dir.path())
        .args(["import"])
        .arg(&csv)
        .args(["--db", &format!("{url}?sslmode=verify-full")])
        .output()
        .unwrap();
    // A server that cannot be verified with the CA given is for the user to fix, as a
    // rejected login is: a usage error (2) from every command.
    assert_eq!(unverified.status.code(), Some(2), "{}", text(&unverified));
    assert!(text(&unverified).contains("UnknownIssuer"), "{}", text(&unverified));

    let import = supervisor(dir.path()).args(["import"]).arg(&csv).args(["--db", &verified]).output().unwrap();
    assert_eq!(import.status.code(), Some(0), "{}", text(&import));
    // The workers are handed the same URL, its TLS parameters included.
    let run = start(dir.path(), &verified, free_ports(2), &["--sleep", "1ms", "--exit-when-done"]).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    assert_eq!(done(&url), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_splits_the_new_size_among_the_supervisors_of_a_postgres_fleet_and_nothing_runs_twice() {
    let Some(url) = testkit::fresh_postgres_url().await else { return };
    let dir = tempfile::tempdir().unwrap();
    seed(&url, 200).await;
    let base = free_ports(4);
    let part = |ids: &str| {
        spawn(start(
            dir.path(),
            &url,
            base,
            &["--sleep", "50ms", "--concurrency", "1", "--exit-when-done", "--worker-ids", ids],
        ))
    };
    let (mut a, mut b) = (part("0"), part("1"));
    wait_for(LONG, "10 videos done", || async { done(&url) >= 10 }).await;

    let out = supervisor(dir.path()).args(["scale", "4", "--db", &url]).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("now 4 shards, running workers 0-1"), "{said}");
    assert!(said.contains("now 4 shards, running workers 2-3"), "{said}");
    wait_for(LONG, "worker 3 of 4 to finish a video", || async {
        psql(&url, "SELECT count(*) FROM attempts WHERE worker LIKE 'worker-3/%' AND outcome = 'done'") != "0"
    })
    .await;
    let out = supervisor(dir.path()).args(["scale", "2", "--db", &url]).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("now 2 shards, running workers 0") && said.contains("now 2 shards, running workers 1"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());

    assert_eq!(done(&url), 200);
    assert_eq!(pg_done_twice(&url), "0", "no video was completed twice");
    assert_eq!(
        psql(&url, "SELECT string_agg(workers::text, ',' ORDER BY layout_id) FROM fleet_layouts"),
        "2,2,4,4,2,2"
    );
    let by_new: i64 = psql(&url, "SELECT count(*) FROM attempts WHERE worker LIKE 'worker-3/%'").parse().unwrap();
    assert!(by_new > 0, "worker 3 of the new layout ran videos");
}
