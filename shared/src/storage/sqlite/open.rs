//! Opening a SQLite fleet database: refusing files that are not SQLite (or are another
//! application's), creating and migrating a new one (and setting WAL once, at creation),
//! and a pool whose connections all wait for locks with the polling busy handler.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Executor};

use super::Link;
use super::busy;
use super::turns::Turns;
use crate::error::DbError;
use crate::storage::busy::retrying;
use crate::storage::conn::{Begin, Conn};
use crate::storage::schema;
use crate::storage::store::Access;

/// An open SQLite fleet database: its file and a pool whose connections all wait for
/// locks with the polling busy handler.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    path: PathBuf,
    pool: SqlitePool,
    /// The turns its writers take (`turns.rs`); None for a read-only store.
    turns: Option<Arc<Turns>>,
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

impl SqliteStore {
    /// Opens the database at `path` for `access`. `max_connections` bounds a writer's
    /// pool.
    pub(crate) async fn open(path: &Path, access: Access, max_connections: u32) -> Result<SqliteStore, DbError> {
        if access != Access::Create && !std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            let reason = "no such database (run `supervisor import` or `supervisor start` first)";
            return Err(DbError::Open { db: shown(path), reason: reason.into() });
        }
        let is_new = inspect(path)?;
        if is_new {
            create_private(path)?;
        }
        let writer = access != Access::ReadOnly;
        // Long reads (an export of millions of rows) are expected; sqlx's "slow
        // statement" warnings would only alarm the user.
        let mut options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(!writer)
            .create_if_missing(writer)
            .busy_timeout(Duration::from_secs(5))
            .disable_statement_logging();
        if writer {
            options = options.synchronous(SqliteSynchronous::Full);
        }
        // Creating the file is the one moment the journal mode is chosen: WAL lets
        // readers (status, monitor) run beside the writers. Later opens keep whatever the
        // file has, so a wrangler-made database is not switched under wrangler's feet.
        if is_new {
            options = options.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(if writer { max_connections.max(1) } else { 1 })
            .min_connections(0)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    busy::install(conn).await?;
                    // NORMAL is durable across crashes in WAL mode (only a power loss can
                    // undo the last commits); in rollback mode keep SQLite's FULL.
                    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await?;
                    if writer && mode.eq_ignore_ascii_case("wal") {
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| open_error(path, !writer, e))?;
        let turns = writer.then(|| Arc::new(Turns::of(path)));
        let db = SqliteStore { path: path.to_path_buf(), pool, turns };
        if let Err(e) = db.prepare(access).await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Judges and migrates the file (`schema::prepare`), then checks that a writer can
    /// write it.
    async fn prepare(&self, access: Access) -> Result<(), DbError> {
        let mut conn: Box<dyn Conn> = Box::new(Link::new(self.pool.acquire().await?, None));
        let reading = access == Access::ReadOnly;
        schema::prepare(&mut *conn, &shown(&self.path), access).await.map_err(|e| match e {
            // A migration of a file this process may not write: said as the writable
            // check says it.
            DbError::Sql(sqlx::Error::Database(d)) if !reading && is_read_only_code(d.code().as_deref()) => {
                DbError::ReadOnly { db: shown(&self.path) }
            }
            DbError::Sql(e) => open_error(&self.path, reading, e),
            other => other,
        })?;
        if reading { Ok(()) } else { self.check_writable(conn).await }
    }

    /// The turns its writers take, for the seam's connections.
    pub(crate) fn turns(&self) -> Option<Arc<Turns>> {
        self.turns.clone()
    }

    /// The pool, for the seam's connections.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Takes the write lock and lets it go, so an unwritable database is reported at
    /// start, not as a failure of the first video.
    async fn check_writable(&self, mut conn: Box<dyn Conn>) -> Result<(), DbError> {
        // Begun and dropped: the write lock taken and let go (the drop rolls back).
        let result = retrying!(conn, |c| c.begin(Begin::Write).await.map(drop));
        match result {
            Err(DbError::Sql(sqlx::Error::Database(e))) if is_read_only_code(e.code().as_deref()) => {
                Err(DbError::ReadOnly { db: shown(&self.path) })
            }
            other => other,
        }
    }

    /// Closes every connection, checkpointing the WAL.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the empty file a new database starts as, readable by its owner only: it
/// holds the sources, the results and the control token. SQLite gives its -wal and
/// -shm files the same mode. Someone who created the file in the meantime wins.
fn create_private(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DbError::Open { db: shown(path), reason: e.to_string() }),
    }
}

/// How a path is named in messages.
fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Returns whether `path` is a new database, or why it cannot be one.
fn inspect(path: &Path) -> Result<bool, DbError> {
    use std::io::Read;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = parent
                && !dir.is_dir()
            {
                return Err(DbError::Open {
                    db: shown(path),
                    reason: format!("directory {} does not exist", dir.display()),
                });
            }
            Ok(true)
        }
        Err(e) => Err(DbError::Open { db: shown(path), reason: e.to_string() }),
        Ok(m) if m.is_dir() => Err(DbError::Open { db: shown(path), reason: "it is a directory".into() }),
        Ok(m) if m.len() == 0 => Ok(true),
        Ok(_) => {
            let mut header = [0u8; 16];
            let mut file =
                std::fs::File::open(path).map_err(|e| DbError::Open { db: shown(path), reason: e.to_string() })?;
            match file.read_exact(&mut header) {
                Ok(()) if &header == SQLITE_MAGIC => Ok(false),
                _ => Err(DbError::NotSqlite { path: path.into() }),
            }
        }
    }
}

/// SQLITE_READONLY and its extended codes (1032, 1288, 1544, ...): the low byte is 8.
fn is_read_only_code(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 8)
}

/// SQLITE_NOTADB (26) is left as it is: `inspect` has seen SQLite's header by now, so
/// it means a damaged file, which `DbError::is_corrupt` recognises.
fn open_error(path: &Path, reading: bool, e: sqlx::Error) -> DbError {
    let reason = match &e {
        // A WAL database needs its -shm file, which a reader creates next to the file.
        sqlx::Error::Database(d) if reading && is_read_only_code(d.code().as_deref()) => {
            "it is in WAL mode and its directory cannot be written (readers need its -shm file)".to_string()
        }
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("8") | Some("14")) => d.message().to_string(),
        _ => return DbError::Sql(e),
    };
    DbError::Open { db: shown(path), reason }
}
