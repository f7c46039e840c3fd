//! For tests and benchmarks only (the `testing` feature): seeding a database, reading
//! its rows back to assert outcomes, and writing to it as another tool would. The
//! product binaries never use these; they go through the domain verbs.

use std::ops::RangeInclusive;
use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, Decode, Executor, Row, SqliteConnection, Type};

use super::sqlite::{MIGRATIONS, Migration};
use super::{DbLocation, FleetRun, NewVideo, Store};
use crate::error::DbError;
use crate::status::{ShardCounts, VideoStatus};

/// A video's row, as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoRow {
    pub video_id: i64,
    /// None when it is not UTF-8 text (rows written by other tools may hold anything).
    pub source: Option<String>,
    pub payload: Option<String>,
    pub status: VideoStatus,
    pub attempts: i64,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub last_outcome: Option<String>,
    pub warnings: Option<String>,
    pub lease_owner: Option<String>,
    pub run_after: i64,
}

/// One attempt of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub video_id: i64,
    pub attempt: i64,
    /// The lease owner that ran it.
    pub worker: Option<String>,
    pub outcome: String,
    pub error: Option<String>,
    pub warnings: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever backend it is. The
/// helpers below write SQL both backends understand (`$1` placeholders work on SQLite
/// too), so one text serves both; the body is type-checked once per backend.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
            Store::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}

const VIDEO_COLUMNS: &str = "SELECT video_id, source, payload, status, attempts, result, last_error, last_outcome, \
                             warnings, lease_owner, run_after FROM videos";

/// Decodes a row of `VIDEO_COLUMNS` from either backend.
fn video_row<R>(r: &R) -> Result<VideoRow, DbError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    String: Type<R::Database> + for<'r> Decode<'r, R::Database>,
{
    let status: String = r.try_get(3)?;
    Ok(VideoRow {
        video_id: r.try_get(0)?,
        source: r.try_get(1).ok(),
        payload: r.try_get(2).ok().flatten(),
        status: status.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        attempts: r.try_get(4)?,
        result: r.try_get(5)?,
        last_error: r.try_get(6)?,
        last_outcome: r.try_get(7)?,
        warnings: r.try_get(8)?,
        lease_owner: r.try_get(9)?,
        run_after: r.try_get(10)?,
    })
}

/// Every video, by id.
pub async fn videos(store: &Store) -> Result<Vec<VideoRow>, DbError> {
    let sql = format!("{VIDEO_COLUMNS} ORDER BY video_id");
    with_pool!(store, |pool| {
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await?;
        rows.iter().map(video_row).collect()
    })
}

/// Video `id`, if there is one.
pub async fn video(store: &Store, id: i64) -> Result<Option<VideoRow>, DbError> {
    let sql = format!("{VIDEO_COLUMNS} WHERE video_id = $1");
    with_pool!(store, |pool| {
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
        row.as_ref().map(video_row).transpose()
    })
}

/// Every attempt of the history, in the order they were recorded.
pub async fn attempts(store: &Store) -> Result<Vec<AttemptRow>, DbError> {
    type Attempt = (i64, i64, Option<String>, String, Option<String>, Option<String>, Option<i64>, Option<i64>);
    let sql =
        "SELECT video_id, attempt, worker, outcome, error, warnings, started_at, finished_at FROM attempts ORDER BY id";
    let rows: Vec<Attempt> = with_pool!(store, |pool| sqlx::query_as(sql).fetch_all(pool).await?);
    Ok(rows
        .into_iter()
        .map(|(video_id, attempt, worker, outcome, error, warnings, started_at, finished_at)| AttemptRow {
            video_id,
            attempt,
            worker,
            outcome,
            error,
            warnings,
            started_at,
            finished_at,
        })
        .collect())
}

/// Attempts in the history (one count, whatever its size).
pub async fn count_attempts(store: &Store) -> Result<i64, DbError> {
    Ok(with_pool!(store, |pool| sqlx::query_scalar("SELECT count(*) FROM attempts").fetch_one(pool).await?))
}

/// Videos by shard (`video_id % workers`) and status, counted from the table itself,
/// never from the kept counts: a check on them, and on everything else.
pub async fn count_table(store: &Store, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    let mut shards = vec![ShardCounts::default(); workers as usize];
    for (shard, status, n) in table_counts(store, workers).await? {
        if let (Some(c), Ok(s)) = (usize::try_from(shard).ok().and_then(|k| shards.get_mut(k)), status.parse()) {
            *c.get_mut(s) = n as u64;
        }
    }
    Ok(shards)
}

/// `(video_id % workers, status, videos)` counted from the table, every group with a
/// video (negative ids in negative shards), in order: what the kept counts must equal.
pub async fn table_counts(store: &Store, workers: u32) -> Result<Vec<(i64, String, i64)>, DbError> {
    let sql = "SELECT video_id % $1, status, count(*) FROM videos GROUP BY 1, 2 ORDER BY 1, 2";
    Ok(with_pool!(store, |pool| sqlx::query_as(sql).bind(i64::from(workers)).fetch_all(pool).await?))
}

/// The layout the shard counts are kept for (None if forgotten) and the kept
/// `(shard, status, videos)` rows that are not zero, in order, as the triggers left
/// them: read back to compare with [`table_counts`].
pub async fn kept_counts(store: &Store) -> Result<(Option<i64>, Vec<(i64, String, i64)>), DbError> {
    let layout = "SELECT workers FROM video_counts_layout";
    let kept = "SELECT shard, status, videos FROM video_counts WHERE videos <> 0 ORDER BY 1, 2";
    with_pool!(store, |pool| {
        let layout: Option<i64> = sqlx::query_scalar(layout).fetch_optional(pool).await?;
        Ok((layout, sqlx::query_as(kept).fetch_all(pool).await?))
    })
}

/// Every run ever recorded, oldest first.
pub async fn fleet_runs(store: &Store) -> Result<Vec<FleetRun>, DbError> {
    Ok(with_pool!(store, |pool| sqlx::query_as("SELECT * FROM fleet_runs ORDER BY run_id").fetch_all(pool).await?))
}

/// Runs `sql` (one or more statements, no parameters) on the store's database as
/// another tool would: around the domain verbs, through the triggers. For writes a test
/// needs that no verb makes (a video not due yet, a skewed count, a delete).
pub async fn execute(store: &Store, sql: &str) -> Result<(), DbError> {
    with_pool!(store, |pool| {
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    });
    Ok(())
}

/// Adds videos `ids` in one statement, whatever their number: source
/// `{prefix}{id}{suffix}`, and, `with_payload`, the payload `{"n":<id>}`.
pub async fn seed_numbered(
    store: &Store,
    ids: RangeInclusive<i64>,
    (prefix, suffix): (&str, &str),
    with_payload: bool,
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    // SQLite has no generate_series without an extension; PostgreSQL would type a
    // recursive CTE's column as the bound parameter's, fine too, but reads better so.
    let sql = match store {
        Store::Sqlite(_) => {
            "INSERT INTO videos (video_id, source, payload) \
             WITH RECURSIVE s(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM s WHERE i < $2) \
             SELECT i, $3 || i || $4, CASE WHEN $5 THEN '{\"n\":' || i || '}' END FROM s"
        }
        Store::Postgres(_) => {
            "INSERT INTO videos (video_id, source, payload) \
             SELECT i, $3 || i || $4, CASE WHEN $5 THEN '{\"n\":' || i || '}' END FROM generate_series($1, $2) AS i"
        }
    };
    with_pool!(store, |pool| {
        sqlx::query(sql)
            .bind(ids.start())
            .bind(ids.end())
            .bind(prefix)
            .bind(suffix)
            .bind(with_payload)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Adds `videos` in one transaction, as they are.
pub async fn insert_videos(store: &Store, videos: &[NewVideo]) -> Result<(), DbError> {
    with_pool!(store, |pool| {
        let mut tx = pool.begin().await?;
        for v in videos {
            sqlx::query("INSERT INTO videos (video_id, source, payload) VALUES ($1, $2, $3)")
                .bind(v.video_id)
                .bind(&v.source)
                .bind(&v.payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?
    });
    Ok(())
}

/// Adds `rows` videos numbered after the highest id there, `per_statement` rows per
/// multi-row `INSERT`, in one transaction: what an insert costs, for the benchmarks.
pub async fn insert_numbered(store: &Store, rows: i64, per_statement: usize) -> Result<(), DbError> {
    let values: Vec<String> = (0..per_statement).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
    let sql = format!("INSERT INTO videos (video_id, source) VALUES {}", values.join(","));
    let highest = "SELECT COALESCE(max(video_id), 0) FROM videos";
    with_pool!(store, |pool| {
        let mut conn = pool.acquire().await?;
        let after: i64 = sqlx::query_scalar(highest).fetch_one(&mut *conn).await?;
        // SQLite takes the write lock up front (BEGIN IMMEDIATE), as the fleet's own
        // writers do; PostgreSQL locks rows as it writes them.
        let begin = if store.is_postgres() { "BEGIN" } else { "BEGIN IMMEDIATE" };
        let mut tx = conn.begin_with(begin).await?;
        for first in (after + 1..=after + rows).step_by(per_statement) {
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for id in first..first + per_statement as i64 {
                q = q.bind(id).bind(format!("https://videos.example/{id}.mp4"));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?
    });
    Ok(())
}

/// Marks video `id` failed after `attempts` attempts with `error`, as if it had run out.
pub async fn mark_failed(store: &Store, id: i64, attempts: i64, error: &str) -> Result<(), DbError> {
    let sql = "UPDATE videos SET status = 'failed', attempts = $1, last_error = $2 WHERE video_id = $3";
    with_pool!(store, |pool| {
        sqlx::query(sql).bind(attempts).bind(error).bind(id).execute(pool).await?;
    });
    Ok(())
}

/// Forgets which layout the shard counts are kept for, so readers count the table as
/// they did before kept counts.
pub async fn forget_count_layout(store: &Store) -> Result<(), DbError> {
    with_pool!(store, |pool| {
        pool.execute("DELETE FROM video_counts_layout").await?;
    });
    Ok(())
}

/// SQLite only: drops the triggers that keep the shard counts, to measure what they
/// cost. (PostgreSQL's one update trigger also writes the history, so it cannot be
/// dropped for the counts alone.)
pub async fn drop_count_triggers(store: &Store) -> Result<(), DbError> {
    let pool = store.as_sqlite().expect("drop_count_triggers is for SQLite databases").pool();
    for t in ["video_counts_insert", "video_counts_update", "video_counts_delete"] {
        pool.execute(AssertSqlSafe(format!("DROP TRIGGER {t}"))).await?;
    }
    Ok(())
}

/// A new, empty database on the PostgreSQL server at `server` (a URL naming any
/// database there, such as `postgres://postgres@127.0.0.1:5432/postgres`), named
/// uniquely for this process: its URL.
pub async fn create_postgres_database(server: &str) -> Result<DbLocation, DbError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The pid tells processes (test binaries run at once) apart, the counter this
    // process's databases, the time runs of a process that reused a pid.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let name = format!("fleet_test_{}_{}_{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos as u64);
    let mut admin = sqlx::PgConnection::connect(server).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    admin.close().await?;
    with_database(server, &name)
        .parse()
        .map_err(|e: super::LocationError| DbError::Sql(sqlx::Error::Configuration(e.to_string().into())))
}

/// `server` naming database `name` instead: its parameters (`?sslmode=verify-full&
/// sslrootcert=/path/ca.crt`) kept, and a path among them (which holds `/` too) left
/// alone, so the query is split off before the database name is looked for.
fn with_database(server: &str, name: &str) -> String {
    let (url, query) = server.split_once('?').map_or((server, None), |(u, q)| (u, Some(q)));
    let host_at = url.find("://").map_or(0, |i| i + 3);
    let base = url[host_at..].find('/').map_or(url, |i| &url[..host_at + i]);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The claim statement a PostgreSQL shard session `worker_id` of `workers` runs for a
/// batch of `want` (rounded down to a power of two), as its text: for `EXPLAIN`.
/// Parameters: $1 owner, $2 token, $3 lease expiry, $4 now.
pub fn postgres_claim_sql(workers: u32, worker_id: u32, want: usize) -> String {
    super::postgres::claim_statement(workers, worker_id, want)
}

/// The advisory lock every PostgreSQL migration runs under: a test holds it to line
/// openers up behind it.
pub const POSTGRES_MIGRATE_LOCK: i64 = super::postgres::MIGRATE_LOCK;

/// SQLite only: runs `sql` on the SQLite file at `path` as another tool would (the
/// `sqlite3` shell, `wrangler d1 execute`, an app): no migrations, no checks, no fleet.
/// For tests of files the fleet did not make (on an open store of either backend,
/// [`execute`]).
pub async fn execute_foreign(path: &Path, sql: &str) -> Result<(), DbError> {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// SQLite only: applies the migrations before `first_left_out` (all, with None) to the
/// file at `path` the way `sqlite3 fleet.db < migrations/*.sql` would: no bookkeeping.
pub async fn migrate_like_sqlite3(path: &Path, first_left_out: Option<&str>) -> Result<(), DbError> {
    let applied: Vec<&Migration> = MIGRATIONS.iter().take_while(|m| Some(m.name) != first_left_out).collect();
    for m in applied {
        execute_foreign(path, m.sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_database;

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
