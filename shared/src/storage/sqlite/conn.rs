//! The SQLite side of the seam: statements run on a `SqliteConnection`, values bound
//! and read back as SQLite's own types, batches as chunks of `VALUES`.

use std::collections::HashMap;
use std::ops::DerefMut;
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Connection, Decode, Sqlite, SqliteConnection};

use super::turns::{Turn, Turns};
use crate::storage::conn::{Arg, Backend, BatchCols, Begin, Conn, End, Fut, Query, Row, Tx, Val, query, rows, typed};

/// A SQLite connection, pooled or borrowed, or a transaction on one; with the
/// database's writer turns, if its writes take them, and for a transaction the turn it
/// holds until it ends.
pub(crate) struct Link<C> {
    conn: C,
    turns: Option<Arc<Turns>>,
    turn: Option<Turn>,
}

impl<C> Link<C> {
    pub(crate) fn new(conn: C, turns: Option<Arc<Turns>>) -> Self {
        Link { conn, turns, turn: None }
    }
}

/// Rows per batch statement: powers of four up to 256 (a handful of statement variants
/// stay in the connection's cache; 10 parameters a row stay far below SQLite's 32,766).
const CHUNK_SIZES: [usize; 5] = [1, 4, 16, 64, 256];

/// The smallest chunk that holds `rows`, else the largest.
fn chunk_size(rows: usize) -> usize {
    CHUNK_SIZES.iter().copied().find(|&n| n >= rows).unwrap_or(CHUNK_SIZES[CHUNK_SIZES.len() - 1])
}

/// Batch statement texts made so far, by (statement, chunk size).
type Made = HashMap<(String, usize), Arc<str>>;

/// The statements are written once with PostgreSQL's `$n`; SQLite reads `?n` as the
/// same numbered parameter.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

fn bind<'q>(q: Query<'q, Sqlite>, arg: &Arg<'_>) -> Query<'q, Sqlite> {
    match *arg {
        Arg::Int(v) => q.bind(v),
        Arg::Text(v) => q.bind(v.map(str::to_owned)),
        Arg::Bool(v) => q.bind(v),
    }
}

/// Reads every column as the type its value has (SQLite types values, not columns).
fn val(r: &SqliteRow, i: usize) -> Val {
    enum Kind {
        Int,
        Real,
        Blob,
        Text,
    }
    let kind = |name: &str| match name {
        "INTEGER" | "BOOLEAN" => Kind::Int,
        "REAL" => Kind::Real,
        "BLOB" => Kind::Blob,
        _ => Kind::Text,
    };
    let Some((raw, kind)) = typed(r, i, kind) else { return Val::Null };
    match kind {
        Kind::Int => <i64 as Decode<Sqlite>>::decode(raw).map_or(Val::Null, Val::Int),
        Kind::Real => <f64 as Decode<Sqlite>>::decode(raw).map_or(Val::Null, Val::Real),
        Kind::Blob => <Vec<u8> as Decode<Sqlite>>::decode(raw).map_or(Val::Null, Val::Bytes),
        Kind::Text => match <&[u8] as Decode<Sqlite>>::decode(raw) {
            Ok(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => Val::Text(s.to_string()),
                Err(_) => Val::Bytes(bytes.to_vec()),
            },
            Err(_) => Val::Null,
        },
    }
}

/// `{rows}` as a chunk of `size` rows of `cols`: a subquery naming VALUES' columns.
/// Chunks come in a few fixed sizes, padded with NULL rows, so the connection's
/// statement cache holds every variant.
fn batch_statement(sql: &str, cols: BatchCols, size: usize) -> String {
    let names: Vec<String> =
        cols.0.iter().enumerate().map(|(i, (name, _))| format!("column{} AS {name}", i + 1)).collect();
    let row = format!("({})", vec!["?"; cols.0.len()].join(","));
    let values = vec![row; size].join(",");
    // The padding rows are all NULL; the first column is a batch's key, never NULL in a
    // real row, so they are left out here (an INSERT ... SELECT would insert them).
    sql.replace(
        "{rows}",
        &format!("(SELECT {} FROM (VALUES {values}) WHERE column1 IS NOT NULL) AS j", names.join(", ")),
    )
}

impl<C: DerefMut<Target = SqliteConnection> + End> Conn for Link<C> {
    fn close<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move { Ok(self.conn.end().await?) })
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn discard(&mut self) {
        self.conn.discard();
    }

    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, Vec<Row>> {
        Box::pin(async move { Ok(rows(query(numbered(sql), args, bind).fetch_all(&mut *self.conn).await?, val)) })
    }

    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Fut<'a, u64> {
        Box::pin(async move { Ok(query(numbered(sql), args, bind).execute(&mut *self.conn).await?.rows_affected()) })
    }

    fn batch<'a>(&'a mut self, sql: &'a str, cols: BatchCols, batch: &'a [Vec<Arg<'a>>]) -> Fut<'a, Vec<Row>> {
        Box::pin(async move {
            // One statement text per (sql, chunk size), made once: the cache of prepared
            // statements is keyed by text.
            static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
            let mut out = Vec::with_capacity(batch.len());
            let mut rest = batch;
            while !rest.is_empty() {
                let size = chunk_size(rest.len());
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                let text = {
                    let mut made = MADE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
                    made.entry((sql.to_string(), size))
                        .or_insert_with(|| numbered(&batch_statement(sql, cols, size)).into())
                        .clone()
                };
                let mut q = sqlx::query(AssertSqlSafe(text.to_string()));
                for r in chunk {
                    for a in r {
                        q = bind(q, a);
                    }
                }
                for _ in 0..(size - chunk.len()) * cols.0.len() {
                    q = q.bind(None::<i64>);
                }
                out.extend(rows(q.fetch_all(&mut *self.conn).await?, val));
                rest = tail;
            }
            Ok(out)
        })
    }

    fn script<'a>(&'a mut self, sql: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&mut *self.conn).await?;
            Ok(())
        })
    }

    fn begin(&mut self, _how: Begin) -> Fut<'_, Box<dyn Tx + '_>> {
        Box::pin(async move {
            // Every transaction here writes or decides: its turn first (`turns.rs`),
            // then the write lock, taken at BEGIN.
            let turn = match &self.turns {
                Some(turns) => turns.take().await,
                None => None,
            };
            let tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
            Ok(Box::new(Link { conn: tx, turns: None, turn }) as Box<dyn Tx + '_>)
        })
    }
}

impl<'c> Tx for Link<sqlx::Transaction<'c, Sqlite>> {
    fn commit<'a>(self: Box<Self>) -> Fut<'a, ()>
    where
        Self: 'a,
    {
        Box::pin(async move {
            let Link { conn, turn, .. } = *self;
            conn.commit().await?;
            // The turn goes once the commit is done.
            drop(turn);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use nix::fcntl::{Flock, FlockArg};

    use crate::storage::Store;
    use crate::storage::conn::Begin;

    /// Whether another writer could take its turn on `store`'s database now.
    fn turn_free(path: &std::path::Path) -> bool {
        let file = std::fs::File::open(path.with_extension("db-writers")).unwrap();
        Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok()
    }

    #[tokio::test]
    async fn a_transaction_holds_its_writers_turn_until_it_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("fleet.db"), 2).await.unwrap();
        let mut conn = store.conn().await.unwrap();
        let mut tx = conn.begin(Begin::Write).await.unwrap();
        tx.execute("INSERT INTO videos (video_id, source) VALUES (1, 'a')", &[]).await.unwrap();
        assert!(!turn_free(&dir.path().join("fleet.db")), "the turn is held while the transaction writes");
        tx.commit().await.unwrap();
        assert!(turn_free(&dir.path().join("fleet.db")), "and let go once it committed");
        drop(conn);
        store.close().await;
    }
}
