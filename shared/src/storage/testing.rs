//! For tests and benchmarks only (the `testing` feature): seeding a database, reading
//! its rows back to assert outcomes, and writing to it as another tool would. The
//! product binaries never use these; they go through the domain verbs.

use std::ops::RangeInclusive;
use std::path::Path;

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Connection, Executor, Row, SqliteConnection, SqlitePool};

use super::sqlite::{MIGRATIONS, Migration};
use super::{FleetRun, NewVideo, Store};
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

fn pool(store: &Store) -> &SqlitePool {
    store.as_sqlite().expect("these helpers read SQLite; PostgreSQL ones are in testing::pg").pool()
}

const VIDEO_COLUMNS: &str = "SELECT video_id, source, payload, status, attempts, result, last_error, last_outcome, \
                             warnings, lease_owner, run_after FROM videos";

fn video_row(r: &SqliteRow) -> Result<VideoRow, DbError> {
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
    let rows = sqlx::query(AssertSqlSafe(format!("{VIDEO_COLUMNS} ORDER BY video_id"))).fetch_all(pool(store)).await?;
    rows.iter().map(video_row).collect()
}

/// Video `id`, if there is one.
pub async fn video(store: &Store, id: i64) -> Result<Option<VideoRow>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!("{VIDEO_COLUMNS} WHERE video_id = ?")))
        .bind(id)
        .fetch_optional(pool(store))
        .await?;
    row.as_ref().map(video_row).transpose()
}

/// Every attempt of the history, in the order they were recorded.
pub async fn attempts(store: &Store) -> Result<Vec<AttemptRow>, DbError> {
    let rows = sqlx::query(
        "SELECT video_id, attempt, worker, outcome, error, warnings, started_at, finished_at FROM attempts ORDER BY id",
    )
    .fetch_all(pool(store))
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AttemptRow {
                video_id: r.try_get(0)?,
                attempt: r.try_get(1)?,
                worker: r.try_get(2)?,
                outcome: r.try_get(3)?,
                error: r.try_get(4)?,
                warnings: r.try_get(5)?,
                started_at: r.try_get(6)?,
                finished_at: r.try_get(7)?,
            })
        })
        .collect()
}

/// Attempts in the history (one count, whatever its size).
pub async fn count_attempts(store: &Store) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM attempts").fetch_one(pool(store)).await?)
}

/// Videos by shard (`video_id % workers`) and status, counted from the table itself,
/// never from the kept counts: a check on them, and on everything else.
pub async fn count_table(store: &Store, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT video_id % ?1, status, count(*) FROM videos GROUP BY 1, 2")
            .bind(workers)
            .fetch_all(pool(store))
            .await?;
    let mut shards = vec![ShardCounts::default(); workers as usize];
    for (shard, status, n) in rows {
        if let (Some(c), Ok(s)) = (shards.get_mut(shard as usize), status.parse()) {
            *c.get_mut(s) = n as u64;
        }
    }
    Ok(shards)
}

/// Every run ever recorded, oldest first.
pub async fn fleet_runs(store: &Store) -> Result<Vec<FleetRun>, DbError> {
    Ok(sqlx::query_as("SELECT * FROM fleet_runs ORDER BY run_id").fetch_all(pool(store)).await?)
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
    sqlx::query(
        "INSERT INTO videos (video_id, source, payload) \
         WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i < ?2) \
         SELECT i, ?3 || i || ?4, CASE WHEN ?5 THEN '{\"n\":' || i || '}' END FROM s",
    )
    .bind(ids.start())
    .bind(ids.end())
    .bind(prefix)
    .bind(suffix)
    .bind(with_payload)
    .execute(pool(store))
    .await?;
    Ok(())
}

/// Adds `videos` in one transaction, as they are.
pub async fn insert_videos(store: &Store, videos: &[NewVideo]) -> Result<(), DbError> {
    let mut tx = pool(store).begin().await?;
    for v in videos {
        sqlx::query("INSERT INTO videos (video_id, source, payload) VALUES (?, ?, ?)")
            .bind(v.video_id)
            .bind(&v.source)
            .bind(&v.payload)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Adds `rows` videos numbered after the highest id there, `per_statement` rows per
/// multi-row `INSERT`, in one transaction: what an insert costs, for the benchmarks.
pub async fn insert_numbered(store: &Store, rows: i64, per_statement: usize) -> Result<(), DbError> {
    let mut conn = pool(store).acquire().await?;
    let sql = format!("INSERT INTO videos (video_id, source) VALUES {}", vec!["(?, ?)"; per_statement].join(","));
    let after: i64 = sqlx::query_scalar("SELECT COALESCE(max(video_id), 0) FROM videos").fetch_one(&mut *conn).await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    for first in (after + 1..=after + rows).step_by(per_statement) {
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for id in first..first + per_statement as i64 {
            q = q.bind(id).bind(format!("https://videos.example/{id}.mp4"));
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Marks video `id` failed after `attempts` attempts with `error`, as if it had run out.
pub async fn mark_failed(store: &Store, id: i64, attempts: i64, error: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE videos SET status = 'failed', attempts = ?, last_error = ? WHERE video_id = ?")
        .bind(attempts)
        .bind(error)
        .bind(id)
        .execute(pool(store))
        .await?;
    Ok(())
}

/// Forgets which layout the shard counts are kept for, so readers count the table as
/// they did before kept counts.
pub async fn forget_count_layout(store: &Store) -> Result<(), DbError> {
    pool(store).execute("DELETE FROM video_counts_layout").await?;
    Ok(())
}

/// Drops the triggers that keep the shard counts, to measure what they cost.
pub async fn drop_count_triggers(store: &Store) -> Result<(), DbError> {
    for t in ["video_counts_insert", "video_counts_update", "video_counts_delete"] {
        pool(store).execute(AssertSqlSafe(format!("DROP TRIGGER {t}"))).await?;
    }
    Ok(())
}

/// Runs `sql` on the SQLite file at `path` as another tool would (the `sqlite3` shell,
/// `wrangler d1 execute`, an app): no migrations, no checks, no fleet. For tests of
/// databases and rows the fleet did not make.
pub async fn execute_foreign(path: &Path, sql: &str) -> Result<(), DbError> {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Applies the migrations before `first_left_out` (all, with None) to the file at
/// `path` the way `sqlite3 fleet.db < migrations/*.sql` would: no bookkeeping.
pub async fn migrate_like_sqlite3(path: &Path, first_left_out: Option<&str>) -> Result<(), DbError> {
    let applied: Vec<&Migration> = MIGRATIONS.iter().take_while(|m| Some(m.name) != first_left_out).collect();
    for m in applied {
        execute_foreign(path, m.sql).await?;
    }
    Ok(())
}
