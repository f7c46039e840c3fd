//! Connecting to a PostgreSQL fleet database: a pool, a refusal of a database that
//! holds another application's tables, and the migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

use super::migrate;
use crate::error::DbError;
use crate::location::redact;
use crate::storage::schema;

/// An open PostgreSQL fleet database: its URL (shown redacted) and a pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    url: String,
    pool: PgPool,
}

/// How long a command waits for a connection before saying the server cannot be
/// reached: long enough for a server that is starting, short enough for a typo.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Connects, refuses another application's database, applies what migrations are
    /// missing and returns the store.
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<PgStore, DbError> {
        let db = PgStore::connect(url, max_connections, false).await?;
        // The check first and the migrations only if it passes: `check.and(migrate)`
        // would run the migrations before looking at the check's answer.
        let checked_then_migrated = async {
            db.refuse_foreign().await?;
            migrate::run(&db).await
        };
        if let Err(e) = checked_then_migrated.await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Connects to a database that must already be a fleet's, and migrates it.
    pub(crate) async fn open_existing(url: &str, max_connections: u32) -> Result<PgStore, DbError> {
        let db = PgStore::connect(url, max_connections, false).await?;
        let checked_then_migrated = async {
            db.require_fleet().await?;
            migrate::run(&db).await
        };
        if let Err(e) = checked_then_migrated.await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Connects to a fleet database for reading: every transaction is read-only, so a
    /// reader can change nothing whatever it runs.
    pub(crate) async fn open_read_only(url: &str) -> Result<PgStore, DbError> {
        let db = PgStore::connect(url, 2, true).await?;
        if let Err(e) = db.require_fleet().await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    async fn connect(url: &str, max_connections: u32, read_only: bool) -> Result<PgStore, DbError> {
        let shown = redact(url);
        let bad = |e: sqlx::Error| connect_error(&shown, e);
        let mut options = PgConnectOptions::from_str(url).map_err(bad)?.disable_statement_logging();
        options = options.application_name("shardfleet");
        if read_only {
            options = options.options([("default_transaction_read_only", "on")]);
        }
        // One connection first, so a server that is not there, or a database that does
        // not exist, is reported as the server put it, at once: the pool would retry
        // until its timeout and then say only that it timed out.
        match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Err(_) => return Err(bad(sqlx::Error::PoolTimedOut)),
            Ok(Err(e)) => return Err(bad(e)),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        let pool = PgPoolOptions::new()
            // Plan each statement for the values it is run with. A prepared claim's
            // generic plan cannot see that `run_after <= $4` keeps nearly every row, and
            // chose a bitmap scan of the whole pending shard and a sort over the ordered
            // index scan that stops after the batch: 20 ms a claim instead of 0.1
            // (fleet-bench postgres). Planning anew costs far less. A SET once per
            // connection, not a start-up option, which poolers such as PgBouncer refuse.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_custom_plan").await?;
                    Ok(())
                })
            })
            .max_connections(max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(bad)?;
        Ok(PgStore { url: shown, pool })
    }

    /// The pool, for the seam's connections.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// The tables of the schema the connection works in (`search_path`'s first).
    pub(super) async fn tables(&self) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn require_fleet(&self) -> Result<(), DbError> {
        schema::judge(&self.url, &self.tables().await?, true)
    }

    /// Refuses a database that holds other tables and none of ours, so a `--db` naming
    /// the wrong database never gets our schema added to it.
    async fn refuse_foreign(&self) -> Result<(), DbError> {
        schema::judge(&self.url, &self.tables().await?, false)
    }
}

/// A connection that failed, by kind: no answer, a refusal or a server shutting down
/// may pass (exit 1); a malformed URL, a rejected login, no such database or a server
/// that cannot be verified are for the user to fix (exit 2).
fn connect_error(url: &str, e: sqlx::Error) -> DbError {
    use std::io::ErrorKind::*;
    let passing = match &e {
        // Not a certificate that does not verify (InvalidData): that stays as it is.
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | TimedOut
                | UnexpectedEof
                | BrokenPipe
                | HostUnreachable
                | NetworkUnreachable
                | AddrNotAvailable
        ),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300")
        }
        _ => false,
    };
    let reason = connect_reason(e);
    if passing { DbError::Unreachable { db: url.into(), reason } } else { DbError::Open { db: url.into(), reason } }
}

/// The part of a connection error a user can act on.
fn connect_reason(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}
