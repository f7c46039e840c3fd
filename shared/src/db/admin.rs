//! Changes made by people rather than workers: importing videos and requeueing failed
//! ones. Each is all or nothing.

use sqlx::{Connection, SqlitePool};

use super::lease::parse_status;
use crate::error::DbError;
use crate::status::VideoStatus;

/// What `requeue_video` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    Requeued,
    Missing,
    NotFailed(VideoStatus),
}

const REQUEUE: &str = "UPDATE videos SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL, \
                       last_outcome = NULL WHERE status = 'failed'";

/// Puts a failed video back to pending with a fresh set of attempts, due at once.
pub async fn requeue_video(pool: &SqlitePool, video_id: i64) -> Result<RequeueOutcome, DbError> {
    super::retry_busy(|| async {
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE} AND video_id = ?")))
            .bind(video_id)
            .execute(pool)
            .await?
            .rows_affected();
        if changed == 1 {
            return Ok(RequeueOutcome::Requeued);
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM videos WHERE video_id = ?")
            .bind(video_id)
            .fetch_optional(pool)
            .await?;
        Ok(match status {
            None => RequeueOutcome::Missing,
            Some(s) => RequeueOutcome::NotFailed(parse_status(&s)),
        })
    })
    .await
}

/// Requeues every failed video; returns how many.
pub async fn requeue_all_failed(pool: &SqlitePool) -> Result<u64, DbError> {
    super::retry_busy(|| async { Ok(sqlx::query(REQUEUE).execute(pool).await?.rows_affected()) }).await
}

/// Requeues exactly `ids`, all of which must be failed; if any is missing or not
/// failed, nothing changes and the offenders are returned.
pub async fn requeue_ids(
    pool: &SqlitePool,
    ids: &[i64],
) -> Result<Result<u64, Vec<(i64, Option<VideoStatus>)>>, DbError> {
    super::retry_busy(|| async {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut bad = Vec::new();
        for &id in ids {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM videos WHERE video_id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            match status.as_deref().map(parse_status) {
                Some(VideoStatus::Failed) => {}
                other => bad.push((id, other)),
            }
        }
        if !bad.is_empty() {
            return Ok(Err(bad));
        }
        let mut n = 0;
        for &id in ids {
            n += sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE} AND video_id = ?")))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(Ok(n))
    })
    .await
}

/// A video to import.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVideo {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportReport {
    pub inserted: u64,
    /// Ids already in the table, left as they were.
    pub existing: Vec<i64>,
}

/// Inserts `videos` in one transaction; ids already present are left alone and
/// reported.
pub async fn import_videos(pool: &SqlitePool, videos: &[NewVideo]) -> Result<ImportReport, DbError> {
    const CHUNK: usize = 300;
    super::retry_busy(|| async {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut report = ImportReport::default();
        for chunk in videos.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT video_id FROM videos WHERE video_id IN ({marks}) ORDER BY video_id"
            )));
            for v in chunk {
                q = q.bind(v.video_id);
            }
            report.existing.extend(q.fetch_all(&mut *tx).await?);
            let rows = vec!["(?, ?, ?)"; chunk.len()].join(",");
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO videos (video_id, source, payload) VALUES {rows} ON CONFLICT (video_id) DO NOTHING"
            )));
            for v in chunk {
                insert = insert.bind(v.video_id).bind(&v.source).bind(&v.payload);
            }
            report.inserted += insert.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(report)
    })
    .await
}
