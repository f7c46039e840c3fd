//! The handle every caller holds: an open fleet database, an enum over the backends.
//! Opening, closing and the few questions about the database itself live here; each
//! concern adds its verbs from a module of its own (`shard.rs`, `fleet.rs`, ...).

use std::time::{SystemTime, UNIX_EPOCH};

use super::location::DbLocation;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use crate::error::DbError;

/// An open, migrated (or, read-only, recognised) fleet database. Cheap to clone: clones
/// share the connections.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the database at `path`, creating and migrating it if it is new, and checks
    /// that it can be written. `max_connections` bounds the pool.
    pub async fn open(db: impl Into<DbLocation>, max_connections: u32) -> Result<Store, DbError> {
        Ok(match db.into() {
            DbLocation::Sqlite(path) => Store::Sqlite(SqliteStore::open(&path, max_connections).await?),
            DbLocation::Postgres(url) => Store::Postgres(PgStore::open(&url, max_connections).await?),
        })
    }

    /// Opens an existing fleet database for commands that change rows (`retry`); refuses
    /// to create one, and refuses a database that is not a fleet's, so a typo in `--db`
    /// neither leaves an empty database behind nor adds our tables to someone else's.
    pub async fn open_existing(db: impl Into<DbLocation>, max_connections: u32) -> Result<Store, DbError> {
        Ok(match db.into() {
            DbLocation::Sqlite(path) => Store::Sqlite(SqliteStore::open_existing(&path, max_connections).await?),
            DbLocation::Postgres(url) => Store::Postgres(PgStore::open_existing(&url, max_connections).await?),
        })
    }

    /// Opens an existing fleet database read-only, without migrating it: for `status`,
    /// `export`, `stop`, `logs` and the monitor, which only read.
    pub async fn open_read_only(db: impl Into<DbLocation>) -> Result<Store, DbError> {
        Ok(match db.into() {
            DbLocation::Sqlite(path) => Store::Sqlite(SqliteStore::open_read_only(&path).await?),
            DbLocation::Postgres(url) => Store::Postgres(PgStore::open_read_only(&url).await?),
        })
    }

    /// Closes every connection (on SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// A cheap round trip, for `/health`.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Number of videos (a full count; not for hot paths).
    pub async fn count_videos(&self) -> Result<i64, DbError> {
        match self {
            Store::Sqlite(s) => s.count_videos().await,
            Store::Postgres(s) => s.count_videos().await,
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The SQLite backend, for shared's own tests, which check the SQL itself.
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }
}

/// The binaries' default log filter: info, with the database driver's own chatter (every
/// statement at debug, any slower than a second at warn) kept to its warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// Milliseconds since the Unix epoch: the clock every time column uses.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What to tell a user whose database is damaged: one sentence naming it and how to get
/// its rows back.
pub fn corrupt_advice(db: &DbLocation) -> String {
    let DbLocation::Sqlite(path) = db else {
        return format!(
            "the database {db} reports damaged data; stop everything that uses it and have PostgreSQL's own tools (amcheck, a restore from backup) look at it"
        );
    };
    let p = path.display();
    format!(
        "the database {p} is damaged (SQLite reports it as corrupt); stop everything that uses it, recover its rows with `sqlite3 {p} .recover | sqlite3 {p}.recovered`, and start again on the recovered file"
    )
}
