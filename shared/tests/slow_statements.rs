//! sqlx warns about any statement slower than a second. Long statements are expected
//! here (an export of millions of rows, a status count), and the warning only alarms
//! the user, so the fleet's connections log none. One test in its own binary: it
//! installs the process-wide subscriber that sqlx's connection threads log to.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::storage::Store;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a counting query, growing it until one run takes longer than sqlx's threshold,
/// so the test cannot pass on a machine too fast to be slow.
async fn run_a_slow_statement(db: &Store) {
    let mut rows: i64 = 2_000_000;
    loop {
        let began = Instant::now();
        let sql = format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT count(*) FROM c"
        );
        let n = shared::storage::testing::scalar(db, &sql).await.unwrap();
        assert_eq!(n, rows);
        if began.elapsed() > Duration::from_millis(1300) {
            return;
        }
        rows *= 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_slower_than_a_second_log_no_warning() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let db = Store::open(&path, 1).await.unwrap();
    run_a_slow_statement(&db).await;
    db.close().await;
    let reader = Store::open_read_only(&path).await.unwrap();
    run_a_slow_statement(&reader).await;
    reader.close().await;
    tracing::warn!("the capture works");
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("the capture works"), "{logged}");
    assert!(!logged.to_lowercase().contains("slow statement"), "{logged}");
}
