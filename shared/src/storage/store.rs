//! The handle every caller holds: an open fleet database, an enum over the backends.
//! Opening, closing and the few questions about the database itself live here; each
//! concern adds its verbs from a module of its own (`shard.rs`, `fleet.rs`, ...).

use std::time::{SystemTime, UNIX_EPOCH};

use super::busy::run;
use super::conn::{Backend, Conn, ConnExt};
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use crate::error::DbError;
use crate::location::DbLocation;

/// What an open may do to the database, and so which checks it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Created if it is new and migrated, and checked to be writable; refused if it
    /// holds another application's tables, so a `--db` naming the wrong database never
    /// gets our schema added to it: `import`, `start` and the workers.
    Create,
    /// Changes rows of a database that must already be a fleet's (`retry`), migrating
    /// it: a typo in `--db` neither leaves an empty database behind nor adds our tables.
    Existing,
    /// Only reads a fleet's database, never migrating it, every transaction read-only,
    /// so a reader can change nothing whatever it runs: `status`, `export`, `stop`,
    /// `logs` and the monitor.
    ReadOnly,
}

/// An open, migrated (or, read-only, recognised) fleet database. Cheap to clone: clones
/// share the connections. Which backend it is stays inside `storage`.
#[derive(Clone, Debug)]
pub struct Store(Pool);

/// The backend's connections: what opening and closing differ in. Every verb runs on
/// a connection from it, through the seam (`conn.rs`).
#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the database at `path`, creating and migrating it if it is new, and checks
    /// that it can be written. `max_connections` bounds the pool.
    pub async fn open(db: impl Into<DbLocation>, max_connections: u32) -> Result<Store, DbError> {
        Store::open_for(db.into(), Access::Create, max_connections).await
    }

    /// Opens an existing fleet database for commands that change rows (`retry`); refuses
    /// to create one, and refuses a database that is not a fleet's, so a typo in `--db`
    /// neither leaves an empty database behind nor adds our tables to someone else's.
    pub async fn open_existing(db: impl Into<DbLocation>, max_connections: u32) -> Result<Store, DbError> {
        Store::open_for(db.into(), Access::Existing, max_connections).await
    }

    /// Opens an existing fleet database read-only, without migrating it: for `status`,
    /// `export`, `stop`, `logs` and the monitor, which only read.
    pub async fn open_read_only(db: impl Into<DbLocation>) -> Result<Store, DbError> {
        Store::open_for(db.into(), Access::ReadOnly, 1).await
    }

    async fn open_for(db: DbLocation, access: Access, max_connections: u32) -> Result<Store, DbError> {
        Ok(Store(match db {
            DbLocation::Sqlite(path) => Pool::Sqlite(SqliteStore::open(&path, access, max_connections).await?),
            DbLocation::Postgres(url) => Pool::Postgres(PgStore::open(&url, access, max_connections).await?),
        }))
    }

    /// Closes every connection (on SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        match &self.0 {
            Pool::Sqlite(s) => s.close().await,
            Pool::Postgres(s) => s.close().await,
        }
    }

    /// A cheap round trip, for `/health`.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.conn().await?.fetch("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Number of videos (a full count; not for hot paths).
    pub async fn count_videos(&self) -> Result<i64, DbError> {
        Ok(run!(self, |c| c.scalar("SELECT count(*) FROM videos", &[]).await)?.int().unwrap_or(0))
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    /// Which database this is.
    pub(crate) fn backend(&self) -> Backend {
        match &self.0 {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// How many connections the pool holds, open or lent.
    #[cfg(test)]
    pub(crate) fn pool_size(&self) -> u32 {
        match &self.0 {
            Pool::Sqlite(s) => s.pool().size(),
            Pool::Postgres(s) => s.pool().size(),
        }
    }

    /// A connection from the pool, for one verb.
    pub(crate) async fn conn(&self) -> Result<Box<dyn Conn>, DbError> {
        Ok(match &self.0 {
            Pool::Sqlite(s) => Box::new(super::sqlite::Link::new(s.pool().acquire().await?, s.turns())),
            Pool::Postgres(s) => Box::new(super::postgres::Link::new(s.pool().acquire().await?, s.route())),
        })
    }

    /// A connection of the pool's, taken out of it: closed, not returned, when dropped.
    pub(crate) async fn detached_conn(&self) -> Result<Box<dyn Conn>, DbError> {
        Ok(match &self.0 {
            Pool::Sqlite(s) => {
                Box::new(super::sqlite::Link::new(Box::new(s.pool().acquire().await?.detach()), s.turns()))
            }
            Pool::Postgres(s) => {
                Box::new(super::postgres::Link::new(Box::new(s.pool().acquire().await?.detach()), s.route()))
            }
        })
    }
}

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
