//! Fleets behind PgBouncer (Debian's 1.18, from the shipped `deploy/pgbouncer/
//! pgbouncer.ini`), in transaction and in session pooling, and the server connections a
//! fleet holds without one. Against the test server in FLEET_TEST_POSTGRES_URL; without
//! it, or without pgbouncer, these tests say why and pass (unless FLEET_TEST_REQUIRE
//! names `postgres` or `pgbouncer`).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use shared::storage::{DbLocation, Store};
use testkit::pgbouncer::PgBouncer;
use testkit::{free_ports, psql, supervisor, wait_for};

const LONG: Duration = Duration::from_secs(120);

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `supervisor import` of videos 1..=n through `url`.
fn import(dir: &Path, url: &str, n: i64) {
    let csv = dir.join("videos.csv");
    let rows: String = (1..=n).map(|id| format!("{id},v{id}.mp4\n")).collect();
    std::fs::write(&csv, format!("video_id,source\n{rows}")).unwrap();
    let out = supervisor(dir).arg("import").arg(&csv).args(["--db", url]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Every one of the `n` videos is done, with exactly one attempt recorded, and it done.
fn assert_exactly_once(direct: &str, n: i64) {
    let counts = psql(
        direct,
        "SELECT (SELECT count(*) FROM videos WHERE status = 'done'), count(*), \
         count(DISTINCT video_id) FILTER (WHERE outcome = 'done'), count(*) FILTER (WHERE outcome <> 'done') \
         FROM attempts",
    );
    assert_eq!(counts, format!("{n}|{n}|{n}|0"), "done videos | attempts | videos done | other attempts");
}

/// A whole batch through PgBouncer in `mode`: import, a fleet of 2 workers to the end,
/// then the read-only commands, all through it.
async fn a_batch_through(mode: &str) {
    let Some(direct) = testkit::fresh_postgres_url().await else { return };
    let Some(bouncer) = PgBouncer::start(mode) else { return };
    let url = bouncer.url(&direct);
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), &url, 300);
    let out = supervisor(dir.path())
        .args(["start", "--workers", "2", "--mem-limit", "250M", "--base-port", &free_ports(2).to_string()])
        .args(["--sleep", "10ms", "--concurrency", "4", "--exit-when-done", "--db", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\nPgBouncer:\n{}", text(&out), bouncer.log());
    assert_exactly_once(&direct, 300);

    let status = supervisor(dir.path()).args(["status", "--db", &url]).output().unwrap();
    assert!(text(&status).contains("300 done"), "{}", text(&status));
    let export = supervisor(dir.path()).args(["export", "--db", &url, "--status", "done"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 301, "a header and 300 rows");

    // A reader through the pooler changes nothing, whatever it runs: with no session
    // to set, its transactions begin READ ONLY.
    let reader = Store::open_read_only(url.parse::<DbLocation>().unwrap()).await.unwrap();
    let refused = reader.requeue_all_failed().await.expect_err("a read-only store wrote");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_through_pgbouncer_in_transaction_pooling_does_every_video_exactly_once() {
    a_batch_through("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_through_pgbouncer_in_session_pooling_does_every_video_exactly_once() {
    a_batch_through("session").await;
}

/// The server connections of the fleet's processes on `direct`'s database (psql's own
/// is named psql).
fn fleet_connections(direct: &str) -> i64 {
    psql(
        direct,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'shardfleet'",
    )
    .parse()
    .unwrap()
}

/// The most server connections a running fleet of 1 supervisor and 2 workers holds on
/// `url`, sampled until it has done all `n` videos.
async fn most_connections_of_a_running_fleet(direct: &str, url: &str, n: i64) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), url, n);
    let mut fleet = supervisor(dir.path())
        .args(["start", "--workers", "2", "--mem-limit", "250M", "--base-port", &free_ports(2).to_string()])
        .args(["--sleep", "20ms", "--concurrency", "4", "--exit-when-done", "--db", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut most = 0;
    let mut samples = 0;
    wait_for(LONG, "the fleet to finish", || {
        most = most.max(fleet_connections(direct));
        samples += 1;
        let exited = fleet.try_wait().unwrap();
        async move { exited.is_some() }
    })
    .await;
    assert_eq!(fleet.wait().unwrap().code(), Some(0));
    assert!(samples >= 10, "the fleet ran long enough to be counted {samples} times");
    assert_exactly_once(direct, n);
    eprintln!("at most {most} server connections in {samples} samples");
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_a_supervisor_and_two_workers_holds_at_most_two_server_connections_a_process() {
    let Some(direct) = testkit::fresh_postgres_url().await else { return };
    let most = most_connections_of_a_running_fleet(&direct, &direct, 300).await;
    assert!((3..=6).contains(&most), "{most} server connections; the budget is 2 per worker and 2 for the supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_given_the_connections_parameter_stays_within_it_and_fewer_than_two_are_refused() {
    let Some(direct) = testkit::fresh_postgres_url().await else { return };
    // 3 each: the fleet may hold up to 9; it must still hold no more.
    let url = format!("{direct}?connections=3");
    let most = most_connections_of_a_running_fleet(&direct, &url, 150).await;
    assert!(most <= 9, "{most} server connections; the budget is 3 a process");
    let refused = supervisor(Path::new("/")).args(["status", "--db", &format!("{direct}?connections=1")]).output();
    let refused = refused.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("connections=1"), "{}", text(&refused));
}

/// Behind a transaction-mode pooler, a URL without `pool_mode=transaction` cannot start
/// a fleet (our named statements meet on another client's server connection): the
/// refusal says what is in front and which parameter to add, and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_pooler_without_its_url_parameter_is_named_with_the_fix() {
    let Some(direct) = testkit::fresh_postgres_url().await else { return };
    let Some(bouncer) = PgBouncer::start("transaction") else { return };
    let url = bouncer.url(&direct);
    let bare = url.split_once('?').map_or(url.as_str(), |(u, _)| u).to_string();
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), &url, 10);
    let out = supervisor(dir.path())
        .args(["start", "--workers", "2", "--mem-limit", "250M", "--base-port", &free_ports(2).to_string()])
        .args(["--sleep", "10ms", "--exit-when-done", "--db", &bare])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("add pool_mode=transaction to the URL"), "{}", text(&out));
}
