//! `monitor --json`, `--once` and plain mode against real `worker` processes sharing a
//! SQLite file: what the monitor reports is what the database holds.

use std::io::Write;
use std::time::{Duration, Instant};

use monitor::aggregate::WorkerHealth;
use shared::storage::{FleetRun, FleetWorker, SlotStatus};

use crate::helper::{
    LONG, TestDb, WorkerBuilder, WorkerProc, closed_port, fleet_run, monitor_json, run_monitor, spawn_monitor_lines,
    wait_for, wait_line,
};

/// Waits until the database has nothing pending or running and every worker's own
/// counts agree with it.
async fn wait_settled(t: &TestDb, workers: &[WorkerProc]) {
    let n = workers.len() as u32;
    wait_for(LONG, "the fleet to finish and its workers to agree with the database", || async {
        let all = t.counts().await;
        if all.pending + all.running > 0 {
            return false;
        }
        for (k, w) in workers.iter().enumerate() {
            if w.worker_status().await.shard != t.shard(k as u32, n).await {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_totals_match_the_database_for_two_real_workers() {
    let t = TestDb::new().await;
    t.seed(60).await;
    // Every seventh video fails, once and for all.
    let args = ["--exec", "sh -c 'test $(({video_id} % 7)) -ne 0'", "--max-attempts", "1", "--concurrency", "4"];
    let workers = vec![
        WorkerBuilder::new(&t).workers(2).args(args).spawn(),
        WorkerBuilder::new(&t).id(1).workers(2).args(args).spawn(),
    ];
    wait_settled(&t, &workers).await;

    let targets = format!("{},127.0.0.1:{}", workers[0].url(""), workers[1].port);
    let report = monitor_json(&["--targets", &targets], t.dir.path());

    let db = t.counts().await;
    let totals = &report.totals;
    assert_eq!(
        (totals.pending, totals.running, totals.done, totals.failed),
        (db.pending, db.running, db.done, db.failed)
    );
    assert_eq!((totals.done, totals.failed), (52, 8), "the handler fails videos 7, 14, ... 56");
    assert_eq!(totals.total, 60);
    assert_eq!(totals.eta_seconds, Some(0), "nothing is left");
    assert!(totals.rate > 0.0, "60 videos finished within the last minute");
    assert!(totals.complete);
    assert_eq!(totals.workers_up, 2);
    for (k, w) in report.workers.iter().enumerate() {
        assert_eq!(w.health, WorkerHealth::Up);
        let status = w.status.as_ref().unwrap();
        assert_eq!(status.worker_id, k as u32);
        assert_eq!(status.shard, t.shard(k as u32, 2).await);
        assert!(status.recent_errors.iter().all(|e| e.video_id % 7 == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_one_snapshot_of_a_busy_fleet_whose_totals_match_the_database() {
    let t = TestDb::new().await;
    t.seed(20).await;
    let (workers, base) = WorkerBuilder::new(&t).sleep("60s").concurrency(3).spawn_fleet(2);
    wait_for(LONG, "three videos running on each worker", || async {
        let mut ok = t.counts().await.running == 6;
        for w in &workers {
            let s = w.worker_status().await;
            ok &= s.in_flight.len() == 3 && s.shard.running == 3;
        }
        ok
    })
    .await;

    let out = run_monitor(&["--once", "--base-port", &base.to_string(), "--workers", "2"], t.dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a totals line and one line per worker:\n{text}");
    let db = t.counts().await;
    let expected = format!(
        "{}/{} finished (0%)  done {}  failed {}  running {}  pending {}",
        db.done + db.failed,
        db.pending + db.running + db.done + db.failed,
        db.done,
        db.failed,
        db.running,
        db.pending
    );
    assert!(lines[0].contains(&expected), "expected {expected:?} in:\n{text}");
    assert!(lines[0].contains("workers 2/2 up"), "{text}");
    for (k, line) in lines[1..].iter().enumerate() {
        assert!(line.starts_with(&format!("  worker {k}  :{}", base + k as u16)), "{line}");
        assert!(line.contains(" up ") && line.contains("running") && line.contains("in flight 3"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_db_the_monitor_finds_the_fleet_in_the_supervisors_records_and_counts_a_down_shard_from_the_table() {
    let t = TestDb::new().await;
    t.seed(30).await;
    let (mut workers, base) =
        WorkerBuilder::new(&t).sleep("0").args(["--control-token", "token-for-tests"]).spawn_fleet(2);
    let run = FleetRun {
        bind: "127.0.0.1".into(),
        mem_limit_bytes: Some(256 << 20),
        mem_enforce: "sample".into(),
        control_token: Some("token-for-tests".into()),
        ..fleet_run(2, base)
    };
    let run_id = t.db.insert_run(&run).await.unwrap();
    let slot = |k: i64, restarts: i64, last_reason: Option<&str>| FleetWorker {
        run_id,
        worker_id: k,
        pid: None,
        port: base as i64 + k,
        state: SlotStatus::Running,
        started_at: None,
        restarts,
        last_reason: last_reason.map(String::from),
        last_restart_at: None,
        rss_bytes: None,
        memory_kills: 0,
        updated_at: None,
    };
    t.db.update_worker(&slot(0, 0, None)).await.unwrap();
    t.db.update_worker(&slot(1, 2, Some("exit code 137 (memory limit)"))).await.unwrap();
    wait_settled(&t, &workers).await;

    let db_arg = t.path.to_str().unwrap();
    let report = monitor_json(&["--db", db_arg], t.dir.path());
    assert_eq!(report.totals.done, 30);
    assert_eq!(report.workers.len(), 2);
    assert!(report.workers.iter().all(|w| w.health == WorkerHealth::Up), "{:?}", report.workers);
    let w1 = &report.workers[1];
    assert_eq!((w1.restarts, w1.last_restart_reason.as_deref()), (2, Some("exit code 137 (memory limit)")));
    assert_eq!(w1.supervisor_state, Some(SlotStatus::Running));
    assert_eq!(w1.url, format!("http://127.0.0.1:{}/", base + 1));

    // Worker 1 goes away: it is down, and its shard is counted from the table.
    drop(workers.pop());
    let report = monitor_json(&["--db", db_arg], t.dir.path());
    assert_eq!(report.workers[1].health, WorkerHealth::Down);
    assert!(report.workers[1].status.is_none());
    assert!(report.totals.complete);
    let db = t.counts().await;
    assert_eq!((report.totals.done, report.totals.total), (db.done, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_db_a_new_run_replaces_the_old_fleet_in_a_running_monitor() {
    let t = TestDb::new().await;
    let (_first, first_base) = WorkerBuilder::new(&t).sleep("0").spawn_fleet(1);
    t.db.insert_run(&fleet_run(1, first_base)).await.unwrap();
    let (mut monitor, rx) = spawn_monitor_lines(&["--db", t.path.to_str().unwrap(), "--interval", "200ms"]);
    let wait_line = |wanted: &str| wait_line(&rx, wanted);
    let line = wait_line(&format!("  worker 0  :{first_base}"));
    assert!(line.contains(" up "), "a wildcard bind is reached on loopback: {line}");

    let (_second, second_base) = WorkerBuilder::new(&t).sleep("0").spawn_fleet(2);
    t.db.insert_run(&fleet_run(2, second_base)).await.unwrap();
    let line = wait_line(&format!("  worker 1  :{}", second_base + 1));
    assert!(line.contains(" up "), "{line}");
    wait_line("workers 2/2 up");
    let _ = monitor.kill();
    let _ = monitor.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_db_a_running_monitor_follows_a_fleet_re_partitioned_by_supervisor_scale() {
    let t = TestDb::new().await;
    let (_fleet, base) = WorkerBuilder::new(&t).sleep("0").spawn_fleet(2);
    let mut run = fleet_run(1, base);
    run.run_id = t.db.insert_run(&run).await.unwrap();
    let (mut monitor, rx) = spawn_monitor_lines(&["--db", t.path.to_str().unwrap(), "--interval", "200ms"]);
    let wait_line = |wanted: &str| wait_line(&rx, wanted);
    wait_line(&format!("  worker 0  :{base}"));

    // What the supervisor records when `supervisor scale 2` has re-partitioned the run.
    run.workers = 2;
    t.db.rescaled(&run, shared::storage::now_ms()).await.unwrap();
    let line = wait_line(&format!("  worker 1  :{}", base + 1));
    assert!(line.contains(" up "), "{line}");
    wait_line("workers 2/2 up");
    let _ = monitor.kill();
    let _ = monitor.wait();
}

/// Answers every request with a JSON body that is not a worker's status.
fn impostor() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 2048];
            let _ = std::io::Read::read(&mut conn, &mut request);
            let body = r#"{"hello":"world"}"#;
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_worker_and_an_impostor_are_reported_and_the_real_worker_still_counts() {
    let t = TestDb::new().await;
    t.seed(10).await;
    let worker = WorkerBuilder::new(&t).sleep("0").spawn();
    wait_settled(&t, std::slice::from_ref(&worker)).await;
    let targets = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", worker.port, closed_port(), impostor());

    let report = monitor_json(&["--targets", &targets, "--timeout", "2s"], t.dir.path());
    let health: Vec<_> = report.workers.iter().map(|w| w.health).collect();
    assert_eq!(health, [WorkerHealth::Up, WorkerHealth::Down, WorkerHealth::Error]);
    assert!(report.workers[1].error.as_deref().unwrap().contains("refused"), "{:?}", report.workers[1]);
    assert!(report.workers[2].error.as_deref().unwrap().contains("not a worker's /status"), "{:?}", report.workers[2]);
    assert_eq!(report.totals.done, t.counts().await.done);
    assert_eq!((report.totals.workers_up, report.totals.workers_down, report.totals.workers_error), (1, 1, 1));

    let out = run_monitor(&["--once", "--targets", &targets], t.dir.path());
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("workers 1/3 up"), "{text}");
    assert!(text.contains("down   never seen: connection refused"), "{text}");
    assert!(text.contains("error  unexpected answer: not a worker's /status"), "{text}");
}

#[test]
fn once_with_json_prints_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = monitor_json(&["--once", "--targets", &format!("127.0.0.1:{}", closed_port())], dir.path());
    assert_eq!(report.workers.len(), 1);
    assert_eq!(report.workers[0].health, WorkerHealth::Down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_it_prints_a_snapshot_every_interval_until_interrupted() {
    let t = TestDb::new().await;
    t.seed(5).await;
    let worker = WorkerBuilder::new(&t).sleep("0").spawn();
    let (mut monitor, rx) = spawn_monitor_lines(&["--targets", &worker.url(""), "--interval", "200ms"]);
    let start = Instant::now();
    let mut snapshots = 0;
    let mut worker_lines = 0;
    while snapshots < 4 {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("a line every interval");
        if line.starts_with("  worker 0") {
            worker_lines += 1;
            assert!(line.contains(" up "), "{line}");
        } else if line.contains(" finished (") {
            snapshots += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5), "four snapshots at 200ms took {:?}", start.elapsed());
    assert!(worker_lines >= 3);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = monitor.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the monitor ignored SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    drop(worker);
}
