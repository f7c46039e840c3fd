//! The seam between the storage logic and a backend: a connection that runs one
//! statement with plain values and hands back plain rows, opens a transaction of the
//! kind asked for, and writes a batch of rows as one statement. Every verb of the
//! storage is written once over [`Conn`]; `sqlite/` and `postgres/` each implement it
//! and supply their own SQL where the dialects differ ([`Sql`]).
//!
//! Values cross the seam as [`Arg`] and [`Val`], not as driver types, so no verb is
//! generic over a driver and nothing outside `storage` sees a connection type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::DbError;

/// A boxed future of a storage call: what a `dyn Conn` method returns.
pub(crate) type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, DbError>> + Send + 'a>>;

/// Which database a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The statements that differ between the dialects.
    pub(crate) fn sql(self) -> &'static super::dialect::Sql {
        match self {
            Backend::Sqlite => &super::sqlite::SQL,
            Backend::Postgres => &super::postgres::SQL,
        }
    }
}

/// A value bound to a statement. Nulls are typed, since PostgreSQL checks a parameter's
/// type against its column's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Bool(bool),
}

/// How each Rust value binds: `$variant($convert(value))`.
macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr;)+) => {
        $(impl<'a> From<$t> for Arg<'a> {
            fn from($v: $t) -> Self {
                $e
            }
        })+
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v));
    u32 => |v| Arg::Int(Some(i64::from(v)));
    Option<i64> => |v| Arg::Int(v);
    bool => |v| Arg::Bool(v);
    &'a str => |v| Arg::Text(Some(v));
    &'a String => |v| Arg::Text(Some(v));
    Option<&'a str> => |v| Arg::Text(v);
    &'a Option<String> => |v| Arg::Text(v.as_deref());
}

/// Binds a list of values: `args![a, b, c]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::storage::conn::Arg::from($v)),*] };
}
pub(crate) use args;

/// A value read back. Text that is not UTF-8 (SQLite keeps whatever a writer put) comes
/// back as bytes, so it reads as absent, never as a panic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One row: its values, and the result's column names for reads by name.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub names: Arc<[String]>,
    pub vals: Vec<Val>,
}

impl Row {
    fn at(&self, i: usize) -> &Val {
        self.vals.get(i).unwrap_or(&Val::Null)
    }

    /// The value of column `name`; null if the result has no such column (a database
    /// an older build migrated).
    pub fn named(&self, name: &str) -> &Val {
        self.names.iter().position(|n| n == name).map_or(&Val::Null, |i| self.at(i))
    }

    pub fn int(&self, i: usize) -> i64 {
        self.at(i).int().unwrap_or(0)
    }
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        self.at(i).int()
    }
    pub fn real(&self, i: usize) -> Option<f64> {
        self.at(i).real()
    }
    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }
    pub fn opt_text(&self, i: usize) -> Option<String> {
        self.at(i).text()
    }
    pub fn bool(&self, i: usize) -> bool {
        self.int(i) != 0
    }
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(v) => Some(*v),
            Val::Real(v) => Some(*v as i64),
            _ => None,
        }
    }
    pub fn real(&self) -> Option<f64> {
        match self {
            Val::Int(v) => Some(*v as f64),
            Val::Real(v) => Some(*v),
            _ => None,
        }
    }
    pub fn text(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
    /// Moves the text out (claims hand sources and payloads on without a copy).
    pub fn take_text(&mut self) -> Option<String> {
        match std::mem::replace(self, Val::Null) {
            Val::Text(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// The rows of a result, each value read by the backend's `val`, the column names
/// shared.
pub(crate) fn rows<R: sqlx::Row>(rs: Vec<R>, val: fn(&R, usize) -> Val) -> Vec<Row> {
    use sqlx::Column;
    let Some(first) = rs.first() else { return Vec::new() };
    let names: Arc<[String]> = first.columns().iter().map(|c| c.name().to_string()).collect();
    rs.iter().map(|r| Row { names: names.clone(), vals: (0..r.len()).map(|i| val(r, i)).collect() }).collect()
}

/// Column `i`'s raw value and its kind, as `kind` reads the name of its type (no copy
/// of the name: this runs for every value of every row), or None for NULL (or a
/// column that cannot be read): what a backend's `val` decodes from.
pub(crate) fn typed<R: sqlx::Row, K>(
    r: &R,
    i: usize,
    kind: fn(&str) -> K,
) -> Option<(<R::Database as sqlx::Database>::ValueRef<'_>, K)>
where
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::{TypeInfo, ValueRef};
    let raw = r.try_get_raw(i).ok()?;
    if raw.is_null() {
        return None;
    }
    let k = kind(raw.type_info().name());
    Some((raw, k))
}

/// A statement with `args` bound by the backend's `bind`.
pub(crate) fn query<DB: sqlx::Database>(
    sql: String,
    args: &[Arg<'_>],
    bind: for<'q> fn(Query<'q, DB>, &Arg<'_>) -> Query<'q, DB>,
) -> Query<'static, DB> {
    args.iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind)
}

/// A statement of backend `DB`, being bound.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>;

/// A word the records hold that this build does not know: the row cannot be read.
pub(crate) fn word<T: std::str::FromStr<Err = crate::words::UnknownWord>>(text: String) -> Result<T, DbError> {
    text.parse().map_err(|e: crate::words::UnknownWord| DbError::Sql(sqlx::Error::Decode(Box::new(e))))
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// It will write: on SQLite the write lock is taken at BEGIN (a deferred transaction
    /// that reads and then writes gets SQLITE_BUSY at once, without waiting).
    Write,
    /// It decides from what it reads, and every read must see what committed before its
    /// lock was granted: READ COMMITTED on PostgreSQL whatever the server's default.
    Decide,
}

/// The columns of a batch: the names the statement reads as `j.<name>`, with the type
/// PostgreSQL's arrays are declared with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchCols(pub &'static [(&'static str, Col)]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    Int,
    Text,
}

/// A connection (or a transaction on one) that runs statements.
pub(crate) trait Conn: Send {
    fn backend(&self) -> Backend;

    /// Runs one statement (placeholders `$1`, `$2`, ...) and returns its rows.
    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Vec<Row>>;

    /// Runs one statement; returns how many rows it changed.
    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, u64>;

    /// Runs `sql` once over `rows`, in as few statements as the backend needs: `{rows}`
    /// in `sql` stands for the rows as a table `j` with the columns `cols` (SQLite binds
    /// chunks of `VALUES`, PostgreSQL one array per column). The first column is the
    /// batch's key and never NULL. Returns every statement's rows.
    fn batch<'a>(&'a mut self, sql: &'a str, cols: BatchCols, rows: &'a [Vec<Arg<'a>>]) -> Fut<'a, Vec<Row>>;

    /// Runs a script of one or more statements without parameters, unprepared (a
    /// migration, a test's setup).
    fn script<'a>(&'a mut self, sql: &'a str) -> Fut<'a, ()>;

    /// Begins a transaction; it rolls back unless committed.
    fn begin(&mut self, how: Begin) -> Fut<'_, Box<dyn Tx + '_>>;

    /// Closes a pooled connection when it is dropped instead of handing it back to its
    /// pool (`busy::discard_if_broken`); nothing for any other.
    fn discard(&mut self) {}

    /// Ends the connection: one taken out of its pool is closed (on SQLite the last to
    /// close checkpoints the WAL into the file), a pooled one goes back to its pool, a
    /// transaction rolls back.
    fn close<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a;
}

/// How each kind of connection a backend's `Link` wraps ends ([`Conn::close`]), and is
/// kept from going back to a pool ([`Conn::discard`]).
pub(crate) trait End: Send {
    fn end(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn discard(&mut self) {}
}

impl<DB: sqlx::Database> End for sqlx::pool::PoolConnection<DB> {
    async fn end(self) -> Result<(), sqlx::Error> {
        drop(self);
        Ok(())
    }
    fn discard(&mut self) {
        self.close_on_drop();
    }
}

impl<C: sqlx::Connection> End for Box<C> {
    fn end(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        (*self).close()
    }
}

impl<DB: sqlx::Database> End for sqlx::Transaction<'_, DB> {
    fn end(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.rollback()
    }
}

/// An open transaction: a connection that is committed at the end.
pub(crate) trait Tx: Conn {
    fn commit<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a;
}

/// Convenience over [`Conn`].
pub(crate) trait ConnExt: Conn {
    /// Begins a transaction and runs `locks` first in it: the backend's lock for a
    /// decision made once however many processes make it at the same moment
    /// (`Sql::decide_lock`, `Sql::index_lock`, ...).
    fn begin_under<'a>(&'a mut self, how: Begin, locks: &'a [&'a str]) -> Fut<'a, Box<dyn Tx + 'a>> {
        Box::pin(async move {
            let mut tx = self.begin(how).await?;
            for lock in locks {
                tx.execute(lock, &[]).await?;
            }
            Ok(tx)
        })
    }

    /// The first row, if any.
    fn fetch_optional<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Option<Row>> {
        Box::pin(async move { Ok(self.fetch(sql, args).await?.into_iter().next()) })
    }

    /// The first column of the first row: a count, an id, a flag.
    fn scalar<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Val> {
        Box::pin(async move {
            let row = self.fetch(sql, args).await?.into_iter().next();
            Ok(row.and_then(|mut r| (!r.vals.is_empty()).then(|| r.vals.swap_remove(0))).unwrap_or(Val::Null))
        })
    }
}

impl<C: Conn + ?Sized> ConnExt for C {}
