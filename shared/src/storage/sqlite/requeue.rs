//! Requeueing failed videos on SQLite: one video, a list (all or nothing), or all.

use sqlx::Connection;

use super::SqliteStore;
use super::lease::parse_status;
use crate::error::DbError;
use crate::status::VideoStatus;
use crate::storage::RequeueOutcome;
use crate::storage::busy::retry_busy;

const REQUEUE: &str = "UPDATE videos SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL, \
                       last_outcome = NULL WHERE status = 'failed'";

impl SqliteStore {
    /// Puts a failed video back to pending with a fresh set of attempts, due at once.
    pub(crate) async fn requeue_video(&self, video_id: i64) -> Result<RequeueOutcome, DbError> {
        retry_busy(|| async {
            let changed = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE} AND video_id = ?")))
                .bind(video_id)
                .execute(self.pool())
                .await?
                .rows_affected();
            if changed == 1 {
                return Ok(RequeueOutcome::Requeued);
            }
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM videos WHERE video_id = ?")
                .bind(video_id)
                .fetch_optional(self.pool())
                .await?;
            Ok(match status {
                None => RequeueOutcome::Missing,
                Some(s) => RequeueOutcome::NotFailed(parse_status(&s)),
            })
        })
        .await
    }

    /// Requeues every failed video; returns how many.
    pub(crate) async fn requeue_all_failed(&self) -> Result<u64, DbError> {
        retry_busy(|| async { Ok(sqlx::query(REQUEUE).execute(self.pool()).await?.rows_affected()) }).await
    }

    /// Requeues exactly `ids`, all of which must be failed; if any is missing or not
    /// failed, nothing changes and the offenders are returned.
    pub(crate) async fn requeue_ids(
        &self,
        ids: &[i64],
    ) -> Result<Result<u64, Vec<(i64, Option<VideoStatus>)>>, DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
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
}
