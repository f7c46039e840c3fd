//! The supervisor's view of its database while the run goes on: an outage (a restart, a
//! failover, a full disk) is ridden out, with one line when it begins and one when it
//! ends, not a line per failed beat. Shared by the heartbeat, the record writer and the
//! loop's done check.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use shared::DbError;
use shared::disk::Disk;
use shared::location::DbLocation;
use shared::status::DbState;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DbWatch {
    db: Arc<DbLocation>,
    /// The outage going on, and since when.
    away: Arc<Mutex<Option<(DbState, Instant)>>>,
}

impl DbWatch {
    pub fn new(db: &DbLocation) -> DbWatch {
        DbWatch { db: Arc::new(db.clone()), away: Arc::default() }
    }

    /// A database step failed: true when `e` is an outage, which is waited out (said
    /// once, when it begins); false when it is something else, for the caller to say.
    pub fn failed(&self, e: &DbError) -> bool {
        let Some(kind) = e.outage() else { return false };
        let mut away = self.away.lock().unwrap_or_else(|p| p.into_inner());
        if away.is_none_or(|(was, _)| was != kind) {
            let disk = match (kind, &*self.db) {
                (DbState::Full, DbLocation::Sqlite(path)) => {
                    Disk::of(path).map(|d| format!(": {} is full", d.describe()))
                }
                _ => None,
            };
            tracing::warn!(
                "the database is {kind}{} ({e}); the workers keep their jobs running and the run waits for it \
                 (SIGTERM still stops the fleet; `supervisor stop` needs the database)",
                disk.unwrap_or_default()
            );
            *away = Some((kind, away.map_or_else(Instant::now, |(_, since)| since)));
        }
        true
    }

    /// Whether the database is away now.
    pub fn is_away(&self) -> bool {
        self.away.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// A database step succeeded: says so once if it ends an outage.
    pub fn answered(&self) {
        let mut away = self.away.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, since)) = away.take() {
            tracing::info!("the database answers again, after {:.1}s", since.elapsed().as_secs_f64());
        }
    }
}

/// Runs `open` until the database answers, waiting out an outage on a try a second (said
/// once), until `shutdown`. Returns what `open` gave and whether it had to wait; an
/// error that is not an outage, at once.
pub async fn patiently<T, F, Fut>(shutdown: &CancellationToken, mut open: F) -> anyhow::Result<(T, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut waited = false;
    loop {
        match open().await {
            Ok(v) => {
                if waited {
                    tracing::info!("the database answers; starting");
                }
                return Ok((v, waited));
            }
            Err(e) if e.outage().is_some() => {
                if !waited {
                    tracing::warn!(
                        "the database is {} ({e}); waiting for it to start the run (Ctrl-C gives up)",
                        e.outage().unwrap_or(DbState::Unreachable)
                    );
                }
                waited = true;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot use the database")),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the database"),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> DbError {
        DbError::Unreachable { db: "postgres://h/f".into(), reason: "connection refused".into() }
    }

    #[test]
    fn an_outage_is_waited_out_and_other_errors_are_not() {
        let watch = DbWatch::new(&"postgres://h/f".parse().unwrap());
        assert!(watch.failed(&refused()));
        assert!(watch.failed(&refused()));
        assert!(watch.away.lock().unwrap().is_some());
        watch.answered();
        assert!(watch.away.lock().unwrap().is_none());
        assert!(!watch.failed(&DbError::NotFleet { db: "x".into() }));
    }
}
