//! The schema holds every state, outcome and kind to the words the code writes: each of
//! the Rust types' words is accepted, anything else is refused by the database itself
//! (CHECK constraints on PostgreSQL, checking triggers on SQLite), so a tool writing
//! around the fleet cannot leave a row the fleet would misread.

use shared::status::Outcome;
use shared::storage::{EventKind, RunState, SlotStatus, Store, testing};

const MEM_ENFORCE: [&str; 4] = ["cgroup-v2", "cgroup-v1", "sample", "none"];

/// One `fleet_runs` row with this state and enforcement.
fn run_row(id: i64, state: &str, mem_enforce: &str) -> String {
    format!(
        "INSERT INTO fleet_runs (run_id, supervisor_pid, started_at, state, workers, base_port, bind, mem_enforce, \
         handler, concurrency) VALUES ({id}, 1, 0, '{state}', 2, 3001, '127.0.0.1', '{mem_enforce}', 'sleep', 1)"
    )
}

/// Runs `sql` on the fleet database at `path` as another tool would; Err with the
/// database's words.
async fn write(path: &std::path::Path, sql: &str) -> Result<(), String> {
    testing::execute_foreign(path, sql).await.map_err(|e| e.to_string())
}

async fn refused(path: &std::path::Path, sql: &str) {
    let e = write(path, sql).await.expect_err(sql);
    assert!(e.contains("CHECK constraint failed"), "{sql}: {e}");
}

#[tokio::test]
async fn every_word_the_code_writes_is_accepted_and_any_other_is_refused_by_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    Store::open(&path, 1).await.unwrap().close().await;

    let mut id = 0;
    for state in RunState::ALL {
        for enforce in MEM_ENFORCE {
            id += 1;
            write(&path, &run_row(id, state.as_str(), enforce)).await.unwrap();
        }
    }
    refused(&path, &run_row(1000, "paused", "none")).await;
    refused(&path, &run_row(1001, "running", "cgroup-v3")).await;
    refused(&path, "UPDATE fleet_runs SET state = 'Running' WHERE run_id = 1").await;
    refused(
        &path,
        "INSERT INTO fleet_runs (supervisor_pid, started_at, state, workers, base_port, bind, mem_enforce, handler, \
         concurrency) VALUES (1, 0, 'running', 0, 3001, '127.0.0.1', 'none', 'sleep', 1)",
    )
    .await;

    for (k, state) in SlotStatus::ALL.iter().enumerate() {
        let sql =
            format!("INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (1, {k}, 3001, '{state}')");
        write(&path, &sql).await.unwrap();
    }
    refused(&path, "INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (1, 99, 3001, 'sleeping')").await;
    refused(&path, "UPDATE fleet_workers SET state = 'gone' WHERE worker_id = 0").await;

    for kind in EventKind::ALL {
        let sql =
            format!("INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (1, 0, 0, '{kind}', 'r')");
        write(&path, &sql).await.unwrap();
    }
    refused(&path, "INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (1, 0, 0, 'unhealthy', 'r')")
        .await;

    // Outcomes: in the history (plus 'unknown', which the history trigger writes for a
    // row some tool moved out of running without one) and as a video's last outcome.
    write(&path, "INSERT INTO videos (video_id, source) VALUES (1, 's')").await.unwrap();
    for outcome in Outcome::ALL.iter().map(|o| o.as_str()).chain(["unknown"]) {
        let sql = format!("INSERT INTO attempts (video_id, attempt, outcome) VALUES (1, 1, '{outcome}')");
        write(&path, &sql).await.unwrap();
        if outcome != "unknown" {
            write(&path, &format!("UPDATE videos SET last_outcome = '{outcome}' WHERE video_id = 1")).await.unwrap();
        }
    }
    refused(&path, "INSERT INTO attempts (video_id, attempt, outcome) VALUES (1, 1, 'ok')").await;
    refused(&path, "UPDATE videos SET last_outcome = 'unknown' WHERE video_id = 1").await;
    refused(&path, "UPDATE videos SET attempts = -1 WHERE video_id = 1").await;
    refused(&path, "UPDATE videos SET status = 'paused' WHERE video_id = 1").await;
}
