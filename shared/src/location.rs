//! Where the fleet's database is (what `--db` says, before anything is opened): a file path (SQLite, the default) or a PostgreSQL URL,
//! as every command's `--db` (env `FLEET_DB`, or `DATABASE_URL`) names it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The database a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (`postgres://user@host:port/dbname`).
    Postgres(String),
}

impl DbLocation {
    /// The SQLite file, if the database is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DbLocation::Sqlite(p) => Some(p),
            DbLocation::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, DbLocation::Postgres(_))
    }

    /// What a worker is given to reach the same database: the file made absolute (its
    /// working directory may differ), or the URL as it is.
    pub fn absolute(&self) -> std::io::Result<DbLocation> {
        Ok(match self {
            DbLocation::Sqlite(p) => DbLocation::Sqlite(std::path::absolute(p)?),
            DbLocation::Postgres(u) => DbLocation::Postgres(u.clone()),
        })
    }

    /// The server connections a worker or a supervisor may hold: the URL's
    /// `connections=N`, else [`DEFAULT_CONNECTIONS`]; None for a SQLite file, which has
    /// no server to spare.
    pub fn connections(&self) -> Option<u32> {
        let DbLocation::Postgres(url) = self else { return None };
        Some(pg_params(url).ok().and_then(|(_, p)| p.connections).unwrap_or(DEFAULT_CONNECTIONS))
    }

    /// The text a child process is given as `--db`: the path or the whole URL.
    pub fn as_arg(&self) -> std::ffi::OsString {
        match self {
            DbLocation::Sqlite(p) => p.as_os_str().to_owned(),
            DbLocation::Postgres(u) => u.into(),
        }
    }
}

/// The `--db` of a command given neither `--db` nor `FLEET_DB`: `DATABASE_URL` if it is
/// set (the variable PostgreSQL tools and hosted platforms use), else `fleet.db`.
pub fn default_db() -> &'static str {
    static DEFAULT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "fleet.db".to_string())
    })
}

/// Why a `--db` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("--db is empty; give a file path (SQLite) or a postgres:// URL")]
    Empty,
    #[error("--db {scheme}://... is not a database this build can use; give a file path (SQLite) or a postgres:// URL")]
    Scheme { scheme: String },
    #[error("--db {url} is not a valid PostgreSQL URL: {reason}")]
    BadUrl { url: String, reason: String },
}

impl FromStr for DbLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<DbLocation, LocationError> {
        if s.is_empty() {
            return Err(LocationError::Empty);
        }
        let Some((scheme, _)) = s.split_once("://") else {
            return Ok(DbLocation::Sqlite(PathBuf::from(s)));
        };
        // A path may hold "://" (a folder named "a:"), but never before its first '/'.
        if scheme.contains('/') {
            return Ok(DbLocation::Sqlite(PathBuf::from(s)));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => {
                let bad = |reason: String| LocationError::BadUrl { url: redact(s), reason };
                let (url, _) = pg_params(s).map_err(bad)?;
                sqlx::postgres::PgConnectOptions::from_str(&url).map_err(|e| bad(e.to_string()))?;
                Ok(DbLocation::Postgres(s.to_string()))
            }
            "sqlite" | "file" => Ok(DbLocation::Sqlite(PathBuf::from(&s[scheme.len() + 3..]))),
            _ => Err(LocationError::Scheme { scheme: scheme.to_string() }),
        }
    }
}

/// Shown with any password replaced, so logs and errors never carry it.
impl fmt::Display for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbLocation::Sqlite(p) => write!(f, "{}", p.display()),
            DbLocation::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl From<&Path> for DbLocation {
    fn from(p: &Path) -> DbLocation {
        DbLocation::Sqlite(p.to_path_buf())
    }
}

impl From<&PathBuf> for DbLocation {
    fn from(p: &PathBuf) -> DbLocation {
        DbLocation::Sqlite(p.clone())
    }
}

impl From<PathBuf> for DbLocation {
    fn from(p: PathBuf) -> DbLocation {
        DbLocation::Sqlite(p)
    }
}

impl From<&DbLocation> for DbLocation {
    fn from(l: &DbLocation) -> DbLocation {
        l.clone()
    }
}

/// The server connections a worker or a supervisor holds at most unless the URL says
/// `connections=N`: a worker's claims keep one, everything else shares the other (a
/// supervisor: its heartbeat one, its records and reads the other). The monitor holds 1.
pub const DEFAULT_CONNECTIONS: u32 = 2;

/// What a PostgreSQL URL's parameters of ours (not the driver's) ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgParams {
    /// `pool_mode=transaction`: a pooler (PgBouncer) in front hands each transaction to
    /// any server connection, so no statement, setting or lock may outlive its
    /// transaction. (`pool_mode=session` is accepted and changes nothing.)
    pub transaction_pooling: bool,
    /// `connections=N` (at least 2): the server connections a worker or supervisor holds.
    pub connections: Option<u32>,
}

/// `url` without the parameters of ours, which the driver would warn about, and what
/// they say.
pub fn pg_params(url: &str) -> Result<(String, PgParams), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), PgParams::default())) };
    let mut params = PgParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("pool_mode", "transaction") => params.transaction_pooling = true,
            ("pool_mode", "session") => {}
            ("pool_mode", other) => {
                return Err(format!("pool_mode={other}: give transaction or session (PgBouncer's pool_mode)"));
            }
            ("connections", n) => match n.parse::<u32>() {
                Ok(n) if n >= DEFAULT_CONNECTIONS => params.connections = Some(n),
                _ => return Err(format!("connections={n}: give a number of at least {DEFAULT_CONNECTIONS}")),
            },
            _ => kept.push(pair),
        }
    }
    Ok((if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) }, params))
}

/// The URL with the password of its user part (and a `password=` parameter) replaced.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out = format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
    }
    if let Some((head, query)) = out.split_once('?') {
        let params: Vec<String> = query
            .split('&')
            .map(|p| if p.to_ascii_lowercase().starts_with("password=") { "password=***".into() } else { p.into() })
            .collect();
        out = format!("{head}?{}", params.join("&"));
    }
    out
}

/// `server` naming database `name` instead: its parameters (`?sslmode=verify-full&
/// sslrootcert=/path/ca.crt`) kept, and a path among them (which holds `/` too) left
/// alone, so the query is split off before the database name is looked for.
pub fn with_database(server: &str, name: &str) -> String {
    let (url, query) = server.split_once('?').map_or((server, None), |(u, q)| (u, Some(q)));
    let host_at = url.find("://").map_or(0, |i| i + 3);
    let base = url[host_at..].find('/').map_or(url, |i| &url[..host_at + i]);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_sqlite_and_a_postgres_url_in_any_case_is_postgres() {
        assert_eq!("fleet.db".parse(), Ok(DbLocation::Sqlite("fleet.db".into())));
        assert_eq!("./a://b".parse(), Ok(DbLocation::Sqlite("./a://b".into())));
        assert_eq!("sqlite://x/fleet.db".parse(), Ok(DbLocation::Sqlite("x/fleet.db".into())));
        for url in ["postgres://u@h/db", "POSTGRESQL://u@h:5433/db", "postgres:///db?host=/tmp"] {
            assert_eq!(url.parse(), Ok(DbLocation::Postgres(url.into())), "{url}");
        }
    }

    #[test]
    fn the_parameters_of_ours_are_taken_off_the_url_and_read() {
        let (url, p) = pg_params("postgres://u@h/db?sslmode=require&pool_mode=transaction&connections=3").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require");
        assert_eq!(p, PgParams { transaction_pooling: true, connections: Some(3) });
        assert_eq!(pg_params("postgres://u@h/db?pool_mode=session").unwrap().0, "postgres://u@h/db");
        let at = |u: &str| u.parse::<DbLocation>().unwrap().connections();
        assert_eq!(at("postgres://u@h/db"), Some(DEFAULT_CONNECTIONS));
        assert_eq!(at("postgres://u@h/db?connections=5"), Some(5));
        assert_eq!(at("fleet.db"), None);
        for bad in ["pool_mode=statement", "connections=1", "connections=x"] {
            let e = format!("postgres://u@h/db?{bad}").parse::<DbLocation>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn an_unknown_scheme_an_empty_value_and_a_bad_url_are_named() {
        let e = "mysql://u@h/db".parse::<DbLocation>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "--db mysql://... is not a database this build can use; give a file path (SQLite) or a postgres:// URL"
        );
        assert_eq!("".parse::<DbLocation>(), Err(LocationError::Empty));
        let e = "postgres://u:secret@h:notaport/db".parse::<DbLocation>().unwrap_err();
        assert!(e.to_string().starts_with("--db postgres://u:***@h:notaport/db is not a valid PostgreSQL URL"), "{e}");
    }

    #[test]
    fn passwords_never_show() {
        let l: DbLocation = "postgres://fleet:s3cret@db.internal:5432/jobs?password=x&sslmode=require".parse().unwrap();
        assert_eq!(l.to_string(), "postgres://fleet:***@db.internal:5432/jobs?password=***&sslmode=require");
        assert_eq!(redact("postgres://fleet@h/db"), "postgres://fleet@h/db");
    }

    #[test]
    fn a_server_url_names_the_new_database_and_keeps_its_parameters() {
        let cases = [
            ("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/t1"),
            ("postgres://127.0.0.1:5432", "postgres://127.0.0.1:5432/t1"),
            ("postgres://127.0.0.1:5432/", "postgres://127.0.0.1:5432/t1"),
            ("postgres://127.0.0.1:5432?sslmode=require", "postgres://127.0.0.1:5432/t1?sslmode=require"),
            (
                "postgres://u:p@localhost/postgres?sslmode=verify-full&sslrootcert=/tmp/pg/ca.crt",
                "postgres://u:p@localhost/t1?sslmode=verify-full&sslrootcert=/tmp/pg/ca.crt",
            ),
        ];
        for (server, want) in cases {
            assert_eq!(with_database(server, "t1"), want, "{server}");
        }
    }
}
