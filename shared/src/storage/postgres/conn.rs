//! The PostgreSQL side of the seam: statements run on a `PgConnection`, values bound
//! as PostgreSQL's types, batches as one array per column (`unnest`).

use std::ops::DerefMut;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, Decode, PgConnection, Postgres};

use crate::storage::conn::{
    Arg, Backend, BatchCols, Begin, Col, Conn, End, Fut, Query, Row, Tx, Val, query, rows, typed,
};

/// A PostgreSQL connection, pooled or borrowed, or a transaction on one; how its
/// statements travel; and whether a transaction is open on it.
pub(crate) struct Link<C> {
    conn: C,
    route: Route,
    open: bool,
}

impl<C> Link<C> {
    pub(crate) fn new(conn: C, route: Route) -> Self {
        Link { conn, route, open: false }
    }
}

/// How statements reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight, or through a session-mode pooler: named statements cached per
    /// connection, and session settings (`open.rs`).
    Direct,
    /// Through a transaction-mode pooler (`pool_mode=transaction`): unnamed statements,
    /// each inside a transaction, since sqlx sends Parse, Describe, Sync and then Bind,
    /// Execute, Sync, and between the Syncs of a statement outside a transaction the
    /// pooler may hand the Bind to a server connection whose unnamed statement is
    /// another's. Read-only stores begin each transaction READ ONLY.
    Pooled { read_only: bool },
}

/// Text PostgreSQL can store: it refuses the NUL character, which a handler's output may
/// hold (SQLite keeps it). Replaced rather than failing the write, which would fail the
/// same write again at every try.
fn storable(text: &str) -> String {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}") } else { text.to_owned() }
}

fn bind<'q>(q: Query<'q, Postgres>, arg: &Arg<'_>) -> Query<'q, Postgres> {
    match *arg {
        Arg::Int(v) => q.bind(v),
        Arg::Text(v) => q.bind(v.map(storable)),
        Arg::Bool(v) => q.bind(v),
    }
}

/// Reads every column by its declared type.
fn val(r: &PgRow, i: usize) -> Val {
    enum Kind {
        Int8,
        Int4,
        Int2,
        Bool,
        Float8,
        Float4,
        Bytea,
        Text,
    }
    let kind = |name: &str| match name {
        "INT8" => Kind::Int8,
        "INT4" => Kind::Int4,
        "INT2" => Kind::Int2,
        "BOOL" => Kind::Bool,
        "FLOAT8" => Kind::Float8,
        "FLOAT4" => Kind::Float4,
        "BYTEA" => Kind::Bytea,
        _ => Kind::Text,
    };
    let Some((raw, kind)) = typed(r, i, kind) else { return Val::Null };
    match kind {
        Kind::Int8 => <i64 as Decode<Postgres>>::decode(raw).map_or(Val::Null, Val::Int),
        Kind::Int4 => <i32 as Decode<Postgres>>::decode(raw).map_or(Val::Null, |v| Val::Int(v.into())),
        Kind::Int2 => <i16 as Decode<Postgres>>::decode(raw).map_or(Val::Null, |v| Val::Int(v.into())),
        Kind::Bool => <bool as Decode<Postgres>>::decode(raw).map_or(Val::Null, |v| Val::Int(v.into())),
        Kind::Float8 => <f64 as Decode<Postgres>>::decode(raw).map_or(Val::Null, Val::Real),
        Kind::Float4 => <f32 as Decode<Postgres>>::decode(raw).map_or(Val::Null, |v| Val::Real(v.into())),
        Kind::Bytea => <Vec<u8> as Decode<Postgres>>::decode(raw).map_or(Val::Null, Val::Bytes),
        Kind::Text => <String as Decode<Postgres>>::decode(raw).map_or(Val::Null, Val::Text),
    }
}

/// `{rows}` as `unnest` of one array per column, named `j`.
fn batch_statement(sql: &str, cols: BatchCols) -> String {
    let arrays: Vec<String> = cols
        .0
        .iter()
        .enumerate()
        .map(|(i, (_, col))| format!("${}::{}[]", i + 1, if *col == Col::Int { "BIGINT" } else { "TEXT" }))
        .collect();
    let names: Vec<&str> = cols.0.iter().map(|(name, _)| *name).collect();
    sql.replace("{rows}", &format!("unnest({}) AS j({})", arrays.join(", "), names.join(", ")))
}

/// Runs `q` on `conn`: its rows, or (`rows` false) how many it changed.
async fn run(q: Query<'_, Postgres>, conn: &mut PgConnection, rows: bool) -> Result<(Vec<PgRow>, u64), sqlx::Error> {
    Ok(if rows { (q.fetch_all(conn).await?, 0) } else { (Vec::new(), q.execute(conn).await?.rows_affected()) })
}

impl<C: DerefMut<Target = PgConnection> + End> Link<C> {
    /// Runs `q` as the route needs ([`Route::Pooled`]: outside a transaction, in one).
    async fn send(&mut self, q: Query<'_, Postgres>, rows: bool) -> Result<(Vec<PgRow>, u64), sqlx::Error> {
        let Route::Pooled { read_only } = self.route else { return run(q, &mut self.conn, rows).await };
        if self.open {
            return run(q, &mut self.conn, rows).await;
        }
        let mut tx = self.conn.begin_with(if read_only { "BEGIN READ ONLY" } else { "BEGIN" }).await?;
        let out = run(q, &mut tx, rows).await?;
        tx.commit().await?;
        Ok(out)
    }
}

impl<C: DerefMut<Target = PgConnection> + End> Conn for Link<C> {
    fn close<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move { Ok(self.conn.end().await?) })
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn discard(&mut self) {
        self.conn.discard();
    }

    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Vec<Row>> {
        Box::pin(async move { Ok(rows(self.send(query(sql.to_owned(), args, bind), true).await?.0, val)) })
    }

    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, u64> {
        Box::pin(async move {
            // An import holds its transaction across calls with a bare BEGIN ... COMMIT:
            // each sent whole, as one simple query, and remembered, so the statements
            // between are not put in transactions of their own.
            if matches!(sql, "BEGIN" | "COMMIT" | "ROLLBACK") {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&mut *self.conn).await?;
                self.open = sql == "BEGIN";
                return Ok(0);
            }
            Ok(self.send(query(sql.to_owned(), args, bind), false).await?.1)
        })
    }

    fn batch<'a>(&'a mut self, sql: &'a str, cols: BatchCols, batch: &'a [Vec<Arg<'a>>]) -> Fut<'a, Vec<Row>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let mut q = sqlx::query(AssertSqlSafe(batch_statement(sql, cols)));
            for (i, (_, col)) in cols.0.iter().enumerate() {
                let column = batch.iter().map(|r| r.get(i).copied().unwrap_or(Arg::Int(None)));
                q = match col {
                    Col::Int => q.bind(
                        column
                            .map(|a| match a {
                                Arg::Int(v) => v,
                                Arg::Bool(b) => Some(i64::from(b)),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    ),
                    Col::Text => q.bind(
                        column
                            .map(|a| match a {
                                Arg::Text(v) => v.map(storable),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    ),
                };
            }
            Ok(rows(self.send(q, true).await?.0, val))
        })
    }

    fn script<'a>(&'a mut self, sql: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&mut *self.conn).await?;
            Ok(())
        })
    }

    fn begin(&mut self, how: Begin) -> Fut<'_, Box<dyn Tx + '_>> {
        Box::pin(async move {
            let read_only = self.route == Route::Pooled { read_only: true };
            let conn = match (how, read_only) {
                (Begin::Write, false) => self.conn.begin().await?,
                (Begin::Write, true) => self.conn.begin_with("BEGIN READ ONLY").await?,
                // The rows a decision reads must be read after its lock is granted, not
                // from a snapshot taken while waiting for it.
                (Begin::Decide, false) => self.conn.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?,
                (Begin::Decide, true) => self.conn.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY").await?,
            };
            Ok(Box::new(Link { conn, route: self.route, open: true }) as Box<dyn Tx + '_>)
        })
    }
}

impl<'c> Tx for Link<sqlx::Transaction<'c, Postgres>> {
    fn commit<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move { Ok(self.conn.commit().await?) })
    }
}
