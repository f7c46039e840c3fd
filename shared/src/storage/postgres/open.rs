//! Connecting to a PostgreSQL fleet database: a pool, a refusal of a database that
//! holds another application's tables, and the migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

use super::conn::{Link, Route};
use crate::error::DbError;
use crate::location::{pg_params, redact};
use crate::storage::schema;
use crate::storage::store::Access;

/// An open PostgreSQL fleet database: its URL (shown redacted), a pool, and how its
/// statements travel.
#[derive(Clone, Debug)]
pub struct PgStore {
    url: String,
    pool: PgPool,
    route: Route,
}

/// How long a command waits for a connection before saying the server cannot be
/// reached: long enough for a server that is starting, short enough for a typo, and
/// under the 5 s in which `status` and `monitor --once` promise an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection unused this long goes back to the server: the budget is a ceiling, and
/// a fleet that waits holds less.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl PgStore {
    /// Connects with at most `max_connections`, judges the database's tables for
    /// `access`, applies what migrations are missing (not read-only) and returns it.
    pub(crate) async fn open(url: &str, access: Access, max_connections: u32) -> Result<PgStore, DbError> {
        let db = PgStore::connect(url, access, max_connections).await?;
        let prepared =
            async { schema::prepare(&mut Link::new(db.pool.acquire().await?, db.route), &db.url, access).await };
        if let Err(e) = prepared.await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    async fn connect(url: &str, access: Access, max_connections: u32) -> Result<PgStore, DbError> {
        let shown = redact(url);
        let bad = |e: sqlx::Error| connect_error(&shown, e);
        let (url, params) = pg_params(url).map_err(|reason| DbError::Open { db: shown.clone(), reason })?;
        let read_only = access == Access::ReadOnly;
        let route = if params.transaction_pooling { Route::Pooled { read_only } } else { Route::Direct };
        let mut options = PgConnectOptions::from_str(&url).map_err(bad)?.disable_statement_logging();
        options = options.application_name("shardfleet");
        if route != Route::Direct {
            // A pooler in transaction mode hands each transaction to any server
            // connection: a named statement prepared on one is missing, or already
            // there, on the next (`prepared statement "sqlx_s_1" already exists`).
            // Unnamed statements, each kept inside a transaction (`Link`), are not.
            options = options.statement_cache_capacity(0);
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
        let mut pool = PgPoolOptions::new();
        if route == Route::Direct {
            // Plan each statement for the values it is run with. A prepared claim's
            // generic plan cannot see that `run_after <= $4` keeps nearly every row, and
            // chose a bitmap scan of the whole pending shard and a sort over the ordered
            // index scan that stops after the batch: 20 ms a claim instead of 0.1
            // (fleet-bench postgres). Planning anew costs far less. SETs once per
            // connection, not start-up options, which PgBouncer refuses. Through a
            // transaction-mode pooler there is no session to set: the statements are
            // unnamed, and PostgreSQL plans an unnamed statement for its values; and
            // `Link` begins every transaction READ ONLY.
            pool = pool.after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_custom_plan").await?;
                    if read_only {
                        conn.execute("SET default_transaction_read_only = on").await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool
            .max_connections(max_connections.max(1))
            .min_connections(0)
            .idle_timeout(IDLE_TIMEOUT)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(bad)?;
        Ok(PgStore { url: shown, pool, route })
    }

    /// How the seam's connections send their statements.
    pub(crate) fn route(&self) -> Route {
        self.route
    }

    /// The pool, for the seam's connections.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// A connection that failed, by kind: no answer, a refusal or a server shutting down
/// may pass (exit 1); a malformed URL, a rejected login, no such database or a server
/// that cannot be verified are for the user to fix (exit 2).
fn connect_error(url: &str, e: sqlx::Error) -> DbError {
    // The same errors a running process waits out (`crate::error::outage`), a disk full
    // on the server among them; the rest are for the user.
    let passing = crate::error::outage(&e).is_some();
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
