//! The PostgreSQL side of the seam: statements run on a `PgConnection`, values bound
//! as PostgreSQL's types, batches as one array per column (`unnest`).

use std::ops::DerefMut;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, Decode, PgConnection, Postgres};

use crate::storage::conn::{
    Arg, Backend, BatchCols, Begin, Col, Conn, End, Fut, Query, Row, Tx, Val, query, rows, typed,
};

/// A PostgreSQL connection, pooled or borrowed, or a transaction on one.
pub(crate) struct Link<C>(pub C);

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

impl<C: DerefMut<Target = PgConnection> + End> Conn for Link<C> {
    fn close<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move { Ok(self.0.end().await?) })
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Vec<Row>> {
        Box::pin(async move { Ok(rows(query(sql.to_owned(), args, bind).fetch_all(&mut *self.0).await?, val)) })
    }

    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, u64> {
        Box::pin(async move { Ok(query(sql.to_owned(), args, bind).execute(&mut *self.0).await?.rows_affected()) })
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
            Ok(rows(q.fetch_all(&mut *self.0).await?, val))
        })
    }

    fn script<'a>(&'a mut self, sql: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&mut *self.0).await?;
            Ok(())
        })
    }

    fn begin(&mut self, how: Begin) -> Fut<'_, Box<dyn Tx + '_>> {
        Box::pin(async move {
            let tx = match how {
                Begin::Write => self.0.begin().await?,
                // The rows a decision reads must be read after its lock is granted, not
                // from a snapshot taken while waiting for it.
                Begin::Decide => self.0.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?,
            };
            Ok(Box::new(Link(tx)) as Box<dyn Tx + '_>)
        })
    }
}

impl<'c> Tx for Link<sqlx::Transaction<'c, Postgres>> {
    fn commit<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move { Ok(self.0.commit().await?) })
    }
}
