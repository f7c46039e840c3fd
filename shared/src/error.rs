//! Typed errors of the shared crate. Messages are lowercase sentences a user can act on;
//! the binaries add context at their edges and map them to exit codes.

use std::path::PathBuf;

use crate::status::DbState;

/// A flag or config value that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid size {input:?}: {reason} (examples: 250M, 250MiB, 1G, 1.5GiB, 1048576)")]
    Size { input: String, reason: &'static str },
    #[error("invalid duration {input:?}: {reason} (examples: 500ms, 30s, 5m, 1h, 1.5s)")]
    Duration { input: String, reason: &'static str },
    #[error("invalid duration range {input:?}: {reason} (example: 50ms..200ms)")]
    Range { input: String, reason: &'static str },
    #[error("invalid rate {input:?}: {reason} (examples: 5/s, 300/m, 2/100ms)")]
    Rate { input: String, reason: &'static str },
}

/// Anything that went wrong talking to the database. One variant per kind of trouble,
/// whichever backend met it; `db` names the database as a user gave it (a path, or a
/// URL with its password hidden).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{path} is not a SQLite database")]
    NotSqlite { path: PathBuf },
    /// The database cannot be opened or connected to as given: a missing directory, a
    /// malformed URL, a rejected login, no such database. The user must fix `--db`.
    #[error("cannot open database {db}: {reason}")]
    Open { db: String, reason: String },
    /// The server did not answer, refused the connection or is shutting down: it may
    /// answer later.
    #[error("cannot reach database {db}: {reason}")]
    Unreachable { db: String, reason: String },
    #[error(
        "the database {db} is not a shardfleet one (it has no videos, attempts and fleet_runs tables); `supervisor import` or `supervisor start` with this --db makes it one"
    )]
    NotFleet { db: String },
    #[error(
        "the database {db} holds another application's tables ({tables}) and no shardfleet ones; it was left as it is: give the fleet a database of its own with --db"
    )]
    Foreign { db: String, tables: String },
    #[error("database {db} is read-only or its directory cannot be written")]
    ReadOnly { db: String },
    #[error(
        "database {db} has a partial schema: migration {migration} is not recorded and only part of what it adds is present (it adds {adds}; found {found})"
    )]
    PartialSchema { db: String, migration: String, adds: String, found: String },
    #[error(
        "database {db} was migrated by a newer shardfleet: it records migration {migration}, which this build does not know"
    )]
    UnknownMigration { db: String, migration: String },
    #[error("migration {migration} failed: {source}")]
    Migration { migration: String, source: sqlx::Error },
    #[error("line {line}: video {video_id} holds a NUL character, which PostgreSQL cannot store; nothing was imported")]
    NulInText { line: u64, video_id: i64 },
    #[error("database is locked: gave up after {attempts} tries")]
    Busy { attempts: u32 },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl DbError {
    /// Whether the user must fix what `--db` names before anything can run: a file that
    /// is not a database, another application's database, a login refused, a newer
    /// schema. Commands exit 2 (usage) for these, 1 for anything else.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DbError::NotSqlite { .. }
                | DbError::Open { .. }
                | DbError::NotFleet { .. }
                | DbError::Foreign { .. }
                | DbError::ReadOnly { .. }
                | DbError::PartialSchema { .. }
                | DbError::UnknownMigration { .. }
        )
    }

    /// SQLite's SQLITE_BUSY (5) and SQLITE_BUSY_SNAPSHOT (517): another connection holds
    /// the lock, or our read snapshot went stale. Both are retried, never surfaced as a
    /// failed video.
    pub fn is_busy(&self) -> bool {
        match self {
            DbError::Sql(e) => is_busy(e),
            DbError::Busy { .. } => true,
            _ => false,
        }
    }

    /// SQLITE_CORRUPT (11, and its extended codes) or SQLITE_NOTADB (26): the file is
    /// damaged. Nothing a retry or a restart can mend.
    /// Whether this is the database being away or full for a while, which a running
    /// process waits out (issue: a blip costs no work), and which way: a refused, reset
    /// or timed-out connection, a server shutting down or out of connections, a lock
    /// held past every retry (unreachable); a disk that is full (full). A damaged file,
    /// a rejected login, no such database: none, as before.
    pub fn outage(&self) -> Option<DbState> {
        match self {
            DbError::Unreachable { .. } | DbError::Busy { .. } => Some(DbState::Unreachable),
            DbError::Sql(e) | DbError::Migration { source: e, .. } => outage(e),
            _ => None,
        }
    }

    pub fn is_corrupt(&self) -> bool {
        match self {
            DbError::Sql(e) | DbError::Migration { source: e, .. } => is_corrupt(e),
            _ => false,
        }
    }
}

/// Whether anything in an error's chain of causes says the database file is damaged.
pub fn chain_is_corrupt(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<DbError>().is_some_and(DbError::is_corrupt)
            || c.downcast_ref::<sqlx::Error>().is_some_and(is_corrupt)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether an sqlx error is SQLite saying the file is damaged or not a database.
/// Whether an error chain holds PostgreSQL refusing a named statement of ours as
/// already there (42P05, `sqlx_s_N`): a transaction-mode pooler handed our connection's
/// statements to another client's server connection. The URL lacks `pool_mode=transaction`.
pub fn chain_is_pooler_clash(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let sql = c.downcast_ref::<sqlx::Error>().or_else(|| match c.downcast_ref::<DbError>() {
            Some(DbError::Sql(s)) => Some(s),
            _ => None,
        });
        if let Some(sqlx::Error::Database(db)) = sql
            && db.code().as_deref() == Some("42P05")
            && db.message().contains("\"sqlx_s_")
        {
            return true;
        }
        cause = c.source();
    }
    false
}

pub fn is_corrupt(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 11 || c & 0xff == 26)
        }
        _ => false,
    }
}

/// Whether an sqlx error is the database refusing for now what it will take later:
/// SQLite's "database is locked" (and a stale snapshot), PostgreSQL's serialization
/// failure, deadlock (one side is rolled back) and lock not available.
/// The outage an sqlx error says, if any ([`DbError::outage`]).
pub fn outage(e: &sqlx::Error) -> Option<DbState> {
    use std::io::ErrorKind::*;
    match e {
        // Not a certificate that does not verify (InvalidData): that is for the user.
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
                | StorageFull
        )
        .then(|| if io.kind() == StorageFull { DbState::Full } else { DbState::Unreachable }),
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => Some(DbState::Unreachable),
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            match code.as_ref() {
                // PostgreSQL: disk full; SQLite: SQLITE_FULL (13).
                "53100" | "13" => Some(DbState::Full),
                // PostgreSQL: shutting down (admin, crash, cannot connect now), a lost
                // connection (class 08), too many connections.
                "57P01" | "57P02" | "57P03" | "53300" => Some(DbState::Unreachable),
                c if c.starts_with("08") => Some(DbState::Unreachable),
                // SQLite: SQLITE_IOERR (10) and its extended codes, SQLITE_BUSY (5) and
                // its own (locked past every retry). SQLite's codes have at most four
                // digits; a SQLSTATE always has five.
                c if c.len() >= 5 => None,
                c => c.parse::<i32>().ok().and_then(|n| match n & 0xff {
                    10 | 5 => Some(DbState::Unreachable),
                    13 => Some(DbState::Full),
                    _ => None,
                }),
            }
        }
        _ => None,
    }
}

pub fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            matches!(
                code.as_deref(),
                Some("5") | Some("517") | Some("261") | Some("6") | Some("40001") | Some("40P01") | Some("55P03")
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error with a code, as a server or SQLite gives one.
    #[derive(Debug)]
    struct Coded(&'static str, &'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "code {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn coded(code: &'static str) -> Option<DbState> {
        DbError::Sql(sqlx::Error::Database(Box::new(Coded(code, "coded")))).outage()
    }

    fn io(kind: std::io::ErrorKind) -> Option<DbState> {
        DbError::Sql(sqlx::Error::Io(kind.into())).outage()
    }

    #[test]
    fn our_named_statement_refused_as_already_there_is_a_pooler_in_transaction_mode() {
        let clash =
            |code, message| chain_is_pooler_clash(&DbError::Sql(sqlx::Error::Database(Box::new(Coded(code, message)))));
        assert!(clash("42P05", "prepared statement \"sqlx_s_1\" already exists"));
        assert!(!clash("42P05", "prepared statement \"theirs\" already exists"), "not ours: not a pooler's doing");
        assert!(!clash("42P07", "relation \"sqlx_s_1\" already exists"));
    }

    #[test]
    fn a_database_that_is_away_or_full_is_an_outage_and_a_mistake_is_not() {
        use std::io::ErrorKind::*;
        // PostgreSQL: shutting down, a lost connection, too many clients, disk full.
        for code in ["57P01", "57P02", "57P03", "08006", "08001", "53300"] {
            assert_eq!(coded(code), Some(DbState::Unreachable), "{code}");
        }
        assert_eq!(coded("53100"), Some(DbState::Full));
        // SQLite: FULL, IOERR (and an extended code of it), BUSY past every retry.
        assert_eq!(coded("13"), Some(DbState::Full));
        assert_eq!(coded("10"), Some(DbState::Unreachable));
        assert_eq!(coded("3338"), Some(DbState::Unreachable), "SQLITE_IOERR_FSYNC");
        assert_eq!(coded("5"), Some(DbState::Unreachable));
        assert_eq!(io(ConnectionRefused), Some(DbState::Unreachable));
        assert_eq!(io(StorageFull), Some(DbState::Full));
        assert_eq!(DbError::Busy { attempts: 200 }.outage(), Some(DbState::Unreachable));
        // Not waited out: a damaged file, a rejected login, no such database, a bad
        // statement, a certificate that does not verify.
        assert_eq!(coded("11"), None, "SQLITE_CORRUPT");
        assert_eq!(coded("28P01"), None, "invalid password");
        assert_eq!(coded("3D000"), None, "no such database");
        assert_eq!(coded("42601"), None, "syntax error");
        assert_eq!(coded("10250"), None, "five digits are a SQLSTATE, never a SQLite code (10250 & 0xff = 10)");
        assert_eq!(io(InvalidData), None);
        assert_eq!(DbError::Open { db: "x".into(), reason: "no such database".into() }.outage(), None);
    }
}
