//! Retrying what the database refused for now ("database is locked", a stale snapshot,
//! a serialization failure): with jittered, growing sleeps, in this one place, so no
//! verb writes its own loop, no caller ever loops on a lock, and no lock ever becomes a
//! failed video. [`retry`] lends a borrowed connection to each try.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;

use super::conn::Conn;
use crate::backoff::Doubling;
use crate::error::DbError;

/// Busy errors retried since the process started (for `/metrics`).
pub static BUSY_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Backoff between tries of a statement that SQLite refused as locked. Loops that hold
/// a connection of their own use it directly:
///
/// ```ignore
/// let mut busy = BusyRetry::new();
/// let rows = loop {
///     match claim(&mut conn).await {
///         Err(e) => busy.wait(e).await?,
///         Ok(rows) => break rows,
///     }
/// };
/// ```
#[derive(Debug)]
pub struct BusyRetry {
    tries: u32,
}

impl BusyRetry {
    const MAX_TRIES: u32 = 200;
    /// 1 ms, doubling to 100 ms: a lock is usually free again within a commit or two.
    const DELAYS: Doubling = Doubling { first: Duration::from_millis(1), max: Duration::from_millis(100) };

    pub fn new() -> BusyRetry {
        BusyRetry { tries: 0 }
    }

    /// Sleeps a jittered, growing interval if `e` is "database is locked" and tries are
    /// left; otherwise hands the error back.
    pub async fn wait(&mut self, e: DbError) -> Result<(), DbError> {
        self.tries += 1;
        if !e.is_busy() {
            return Err(e);
        }
        if self.tries >= Self::MAX_TRIES {
            return Err(DbError::Busy { attempts: self.tries });
        }
        BUSY_RETRIES.fetch_add(1, Ordering::Relaxed);
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(Self::DELAYS.after(self.tries - 1).mul_f64(jitter)).await;
        Ok(())
    }
}

impl Default for BusyRetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `$body` with `$c` bound to the connection `$conn` lends it, again while the
/// database refuses it for now; evaluates to its `Result`. Each try gets the connection
/// anew, so the body may begin a transaction on it, and `?` and `return` inside the
/// body end that try, not the caller. (A macro, not a function taking a closure: a
/// closure lent a `&mut dyn Conn` makes a future the compiler cannot prove `Send` for
/// every lifetime, and the workers run these futures in spawned tasks.)
macro_rules! retrying {
    ($conn:expr, |$c:ident| $body:expr) => {{
        let mut busy = $crate::storage::busy::BusyRetry::new();
        loop {
            let $c: &mut dyn $crate::storage::conn::Conn = &mut *$conn;
            match async { $body }.await {
                Err(e) => {
                    if let Err(e) = busy.wait(e).await {
                        break Err(e);
                    }
                }
                ok => break ok,
            }
        }
    }};
}
pub(crate) use retrying;

/// [`retrying`] on a connection from `$store`'s pool, for one verb.
macro_rules! run {
    ($store:expr, |$c:ident| $body:expr) => {
        async {
            let mut conn = $store.conn().await?;
            let result = $crate::storage::busy::retrying!(conn, |$c| $body);
            $crate::storage::busy::discard_if_broken(&mut *conn, &result);
            result
        }
        .await
    };
}
pub(crate) use run;

/// Whether `result` says the database went away under `conn` (`DbError::outage`); if
/// so, `conn` is closed when dropped rather than handed back to its pool. A PostgreSQL
/// connection is then likely dead, and a SQLite one whose read came back short (a full
/// disk) may go on failing where a fresh one would not. A lock that stayed taken (busy,
/// a serialization failure) says nothing against the connection, which is kept.
pub(crate) fn discard_if_broken<T>(conn: &mut dyn Conn, result: &Result<T, DbError>) -> bool {
    let broken = result.as_ref().is_err_and(|e| e.outage().is_some() && !e.is_busy());
    if broken {
        conn.discard();
    }
    broken
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::storage::Store;
    use crate::storage::conn::ConnExt;

    /// The pool's connections, open or lent, once the count settles (a connection
    /// closed on drop closes in a task of its own).
    async fn settled_size(store: &Store, want: u32) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.pool_size() != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.pool_size()
    }

    #[tokio::test]
    async fn a_connection_the_database_went_away_under_is_closed_and_not_pooled_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("fleet.db"), 4).await.unwrap();
        run!(store, |c| c.scalar("SELECT 1", &[]).await).unwrap();
        let open = store.pool_size();
        assert!(open >= 1);

        let gone = || DbError::Sql(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        let away: Result<(), DbError> = run!(store, |c| {
            c.scalar("SELECT 1", &[]).await?;
            Err(gone())
        });
        assert!(away.unwrap_err().outage().is_some());
        assert_eq!(settled_size(&store, open - 1).await, open - 1, "the connection that saw it is closed");

        // Any other error hands the connection back as good as it was.
        let before = store.pool_size();
        let refused: Result<u64, DbError> =
            run!(store, |c| c.execute("INSERT INTO videos (video_id, source) VALUES (1, 'a'), (1, 'b')", &[]).await);
        assert!(refused.unwrap_err().outage().is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.pool_size(), before.max(1), "a constraint's refusal keeps its connection");
        store.close().await;
    }
}
