//! Waiting for SQLite's write lock without millisecond sleeps.
//!
//! SQLite's default busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries. With two
//! processes writing, the one that holds the lock takes it again while the other sleeps,
//! and the sleeper's shard starves. We install a handler that polls every few tens of
//! microseconds instead, so the lock changes hands as soon as it is free. What is still
//! refused after the deadline (and SQLITE_BUSY_SNAPSHOT, which no handler can wait out)
//! is retried by `storage::busy` with jittered backoff; it never reaches a video.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use sqlx::SqliteConnection;

/// How long one statement waits for the lock inside SQLite before it gives up.
const HANDLER_DEADLINE: Duration = Duration::from_secs(5);

/// Waits for the write lock that SQLite's busy handler absorbed since the process
/// started (one per statement that had to wait, however long), for `/metrics`: these
/// never reach the retries that `storage::busy` counts.
pub static LOCK_WAITS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// When the current wait began. The handler runs on the connection's own thread
    /// (sqlx gives each SQLite connection one), so a thread-local is per connection.
    static WAIT_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

unsafe extern "C" fn busy_handler(_arg: *mut c_void, count: c_int) -> c_int {
    let now = Instant::now();
    let started = WAIT_STARTED.with(|s| {
        if count == 0 || s.get().is_none() {
            s.set(Some(now));
            LOCK_WAITS.fetch_add(1, Ordering::Relaxed);
        }
        s.get().unwrap_or(now)
    });
    let waited = now - started;
    if waited >= HANDLER_DEADLINE {
        return 0;
    }
    // Poll fast while the wait is young (a commit takes tens of microseconds), then back
    // off so a long holder does not cost a core.
    let micros = if waited < Duration::from_millis(20) {
        rand::rng().random_range(10..60)
    } else if waited < Duration::from_millis(500) {
        rand::rng().random_range(100..400)
    } else {
        rand::rng().random_range(1000..3000)
    };
    std::thread::sleep(Duration::from_micros(micros));
    1
}

/// Replaces SQLite's sleeping busy handler on this connection with the polling one.
pub(crate) async fn install(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: the locked handle guarantees sqlx's worker thread is not using the
    // connection; the callback is a plain function with no captured state.
    let rc = unsafe { libsqlite3_sys::sqlite3_busy_handler(raw, Some(busy_handler), std::ptr::null_mut()) };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!("sqlite3_busy_handler returned {rc}")));
    }
    Ok(())
}
