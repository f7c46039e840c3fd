//! For tests and benchmarks only (the `testing` feature): seeding a database, reading
//! its rows back to assert outcomes, and writing to it as another tool would. The
//! product binaries never use these; they go through the domain verbs.

use std::ops::RangeInclusive;
use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, SqliteConnection};

use super::busy::run;
use super::conn::{Arg, Backend, Begin, ConnExt, Row, Val, args, word};
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

const VIDEO_COLUMNS: &str = "SELECT video_id, source, payload, status, attempts, result, last_error, last_outcome, \
                             warnings, lease_owner, run_after FROM videos";

fn video_row(r: &Row) -> Result<VideoRow, DbError> {
    Ok(VideoRow {
        video_id: r.int(0),
        source: r.opt_text(1),
        payload: r.opt_text(2),
        status: word(r.text(3))?,
        attempts: r.int(4),
        result: r.opt_text(5),
        last_error: r.opt_text(6),
        last_outcome: r.opt_text(7),
        warnings: r.opt_text(8),
        lease_owner: r.opt_text(9),
        run_after: r.int(10),
    })
}

/// Every video's row, by id.
pub async fn videos(store: &Store) -> Result<Vec<VideoRow>, DbError> {
    let sql = format!("{VIDEO_COLUMNS} ORDER BY video_id");
    run!(store, |c| c.fetch(&sql, &[]).await)?.iter().map(video_row).collect()
}

/// Video `id`'s row, if there is one.
pub async fn video(store: &Store, id: i64) -> Result<Option<VideoRow>, DbError> {
    let sql = format!("{VIDEO_COLUMNS} WHERE video_id = $1");
    run!(store, |c| c.fetch_optional(&sql, args![id]).await)?.as_ref().map(video_row).transpose()
}

/// The first column of every row of a query of the test's own, as text.
pub async fn column(store: &Store, sql: &str) -> Result<Vec<String>, DbError> {
    Ok(query(store, sql).await?.into_iter().map(|r| r.into_iter().next().flatten().unwrap_or_default()).collect())
}

/// The one number a query of the test's own returns (a count).
pub async fn scalar(store: &Store, sql: &str) -> Result<i64, DbError> {
    Ok(run!(store, |c| c.scalar(sql, &[]).await)?.int().unwrap_or(0))
}

/// Every attempt, in the order recorded.
pub async fn attempts(store: &Store) -> Result<Vec<AttemptRow>, DbError> {
    let sql = "SELECT video_id, attempt, worker, outcome, error, warnings, started_at, finished_at FROM attempts \
               ORDER BY id";
    let rows = run!(store, |c| c.fetch(sql, &[]).await)?;
    Ok(rows
        .iter()
        .map(|r| AttemptRow {
            video_id: r.int(0),
            attempt: r.int(1),
            worker: r.opt_text(2),
            outcome: r.text(3),
            error: r.opt_text(4),
            warnings: r.opt_text(5),
            started_at: r.opt_int(6),
            finished_at: r.opt_int(7),
        })
        .collect())
}

/// The rows of one query of the test's own, as text (NULL as None), for checks of the
/// SQL itself (the schema, the plans, the pragmas).
pub async fn query(store: &Store, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
    let rows = run!(store, |c| c.fetch(sql, &[]).await)?;
    Ok(rows
        .iter()
        .map(|r| {
            r.vals
                .iter()
                .map(|v| match v {
                    Val::Null => None,
                    Val::Int(i) => Some(i.to_string()),
                    Val::Real(f) => Some(f.to_string()),
                    Val::Text(t) => Some(t.clone()),
                    Val::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                })
                .collect()
        })
        .collect())
}

/// Attempts in the history (one count, whatever its size).
pub async fn count_attempts(store: &Store) -> Result<i64, DbError> {
    Ok(run!(store, |c| c.scalar("SELECT count(*) FROM attempts", &[]).await)?.int().unwrap_or(0))
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
    let rows = run!(store, |c| c.fetch(sql, args![workers]).await)?;
    Ok(rows.iter().map(|r| (r.int(0), r.text(1), r.int(2))).collect())
}

/// The layout the shard counts are kept for (None if forgotten) and the kept
/// `(shard, status, videos)` rows that are not zero, in order, as the triggers left
/// them: read back to compare with [`table_counts`].
pub async fn kept_counts(store: &Store) -> Result<(Option<i64>, Vec<(i64, String, i64)>), DbError> {
    let layout = "SELECT workers FROM video_counts_layout";
    let kept = "SELECT shard, status, videos FROM video_counts WHERE videos <> 0 ORDER BY 1, 2";
    run!(store, |c| {
        let layout = c.fetch_optional(layout, &[]).await?.map(|r| r.int(0));
        let rows = c.fetch(kept, &[]).await?;
        Ok((layout, rows.iter().map(|r| (r.int(0), r.text(1), r.int(2))).collect()))
    })
}

/// Every run ever recorded, oldest first.
pub async fn fleet_runs(store: &Store) -> Result<Vec<FleetRun>, DbError> {
    let rows = run!(store, |c| c.fetch("SELECT * FROM fleet_runs ORDER BY run_id", &[]).await)?;
    rows.iter().map(FleetRun::from_row).collect()
}

/// Runs `sql` (one or more statements, no parameters) on the store's database as
/// another tool would: around the domain verbs, through the triggers. For writes a test
/// needs that no verb makes (a video not due yet, a skewed count, a delete).
pub async fn execute(store: &Store, sql: &str) -> Result<(), DbError> {
    run!(store, |c| c.script(sql).await)
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
    let sql = match store.backend() {
        Backend::Sqlite => {
            "INSERT INTO videos (video_id, source, payload) \
             WITH RECURSIVE s(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM s WHERE i < $2) \
             SELECT i, $3 || i || $4, CASE WHEN $5 THEN '{\"n\":' || i || '}' END FROM s"
        }
        Backend::Postgres => {
            "INSERT INTO videos (video_id, source, payload) \
             SELECT i, $3 || i || $4, CASE WHEN $5 THEN '{\"n\":' || i || '}' END FROM generate_series($1, $2) AS i"
        }
    };
    let (first, last) = (*ids.start(), *ids.end());
    run!(store, |c| c.execute(sql, args![first, last, prefix, suffix, with_payload]).await)?;
    Ok(())
}

/// Adds `videos` in one transaction, as they are.
pub async fn insert_videos(store: &Store, videos: &[NewVideo]) -> Result<(), DbError> {
    run!(store, |c| {
        let mut tx = c.begin(Begin::Write).await?;
        for v in videos {
            let sql = "INSERT INTO videos (video_id, source, payload) VALUES ($1, $2, $3)";
            tx.execute(sql, args![v.video_id, &v.source, &v.payload]).await?;
        }
        tx.commit().await
    })
}

/// Adds `rows` videos numbered after the highest id there, `per_statement` rows per
/// multi-row `INSERT`, in one transaction: what an insert costs, for the benchmarks.
pub async fn insert_numbered(store: &Store, rows: i64, per_statement: usize) -> Result<(), DbError> {
    let values: Vec<String> = (0..per_statement).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
    let sql = format!("INSERT INTO videos (video_id, source) VALUES {}", values.join(","));
    let highest = "SELECT COALESCE(max(video_id), 0) FROM videos";
    run!(store, |c| {
        let after = c.scalar(highest, &[]).await?.int().unwrap_or(0);
        // A write transaction, as the fleet's own writers take (on SQLite the write
        // lock up front).
        let mut tx = c.begin(Begin::Write).await?;
        for first in (after + 1..=after + rows).step_by(per_statement) {
            let ids: Vec<i64> = (first..first + per_statement as i64).collect();
            let sources: Vec<String> = ids.iter().map(|id| format!("https://videos.example/{id}.mp4")).collect();
            let args: Vec<Arg> =
                ids.iter().zip(&sources).flat_map(|(&id, src)| [Arg::from(id), Arg::from(src)]).collect();
            tx.execute(&sql, &args).await?;
        }
        tx.commit().await
    })
}

/// Marks video `id` failed after `attempts` attempts with `error`, as if it had run out.
pub async fn mark_failed(store: &Store, id: i64, attempts: i64, error: &str) -> Result<(), DbError> {
    let sql = "UPDATE videos SET status = 'failed', attempts = $1, last_error = $2 WHERE video_id = $3";
    run!(store, |c| c.execute(sql, args![attempts, error, id]).await)?;
    Ok(())
}

/// Forgets which layout the shard counts are kept for, so readers count the table as
/// they did before kept counts.
pub async fn forget_count_layout(store: &Store) -> Result<(), DbError> {
    run!(store, |c| c.execute("DELETE FROM video_counts_layout", &[]).await)?;
    Ok(())
}

/// SQLite only: drops the triggers that keep the shard counts, to measure what they
/// cost. (PostgreSQL's one update trigger also writes the history, so it cannot be
/// dropped for the counts alone.)
pub async fn drop_count_triggers(store: &Store) -> Result<(), DbError> {
    assert_eq!(store.backend(), Backend::Sqlite, "drop_count_triggers is for SQLite databases");
    execute(
        store,
        "DROP TRIGGER video_counts_insert; DROP TRIGGER video_counts_update; DROP TRIGGER video_counts_delete",
    )
    .await
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
    crate::location::with_database(server, &name)
        .parse()
        .map_err(|e: super::LocationError| DbError::Sql(sqlx::Error::Configuration(e.to_string().into())))
}

/// The claim statement a PostgreSQL shard session `worker_id` of `workers` runs for a
/// batch of `want` (rounded down to a power of two), as its text: for `EXPLAIN`.
/// Parameters: $1 owner, $2 token, $3 lease expiry, $4 now.
pub fn postgres_claim_sql(workers: u32, worker_id: u32, want: usize) -> String {
    super::claim::postgres_claim_statement(workers, worker_id, want)
}

pub use super::dialect::Migration;
/// The migrations of each backend, in order, as this build applies them.
pub use super::postgres::PG_MIGRATIONS as POSTGRES_MIGRATIONS;
pub use super::sqlite::MIGRATIONS as SQLITE_MIGRATIONS;

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
    let applied: Vec<&Migration> = SQLITE_MIGRATIONS.iter().take_while(|m| Some(m.name) != first_left_out).collect();
    for m in applied {
        execute_foreign(path, m.sql).await?;
    }
    Ok(())
}
