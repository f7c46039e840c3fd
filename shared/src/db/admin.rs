//! Changes made by people rather than workers: requeueing failed videos.

use sqlx::SqlitePool;

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

/// Puts a failed video back to pending with a fresh set of attempts, due at once.
pub async fn requeue_video(pool: &SqlitePool, video_id: i64) -> Result<RequeueOutcome, DbError> {
    super::retry_busy(|| async {
        let changed = sqlx::query(
            "UPDATE videos SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL, last_outcome = NULL \
             WHERE video_id = ? AND status = 'failed'",
        )
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
