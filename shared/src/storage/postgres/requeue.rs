//! Requeueing failed videos on PostgreSQL: one video, a list (all or nothing), or all.

use sqlx::Acquire;

use super::PgStore;
use crate::error::DbError;
use crate::status::VideoStatus;
use crate::storage::RequeueOutcome;
use crate::storage::busy::retry_busy;

const REQUEUE: &str = "UPDATE videos SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL, \
                       last_outcome = NULL WHERE status = 'failed'";

impl PgStore {
    pub(crate) async fn requeue_video(&self, video_id: i64) -> Result<RequeueOutcome, DbError> {
        retry_busy(|| async {
            let changed = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE} AND video_id = $1")))
                .bind(video_id)
                .execute(self.pool())
                .await?
                .rows_affected();
            if changed == 1 {
                return Ok(RequeueOutcome::Requeued);
            }
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM videos WHERE video_id = $1")
                .bind(video_id)
                .fetch_optional(self.pool())
                .await?;
            Ok(match status {
                None => RequeueOutcome::Missing,
                Some(s) => RequeueOutcome::NotFailed(s.parse().unwrap_or(VideoStatus::Pending)),
            })
        })
        .await
    }

    pub(crate) async fn requeue_all_failed(&self) -> Result<u64, DbError> {
        retry_busy(|| async { Ok(sqlx::query(REQUEUE).execute(self.pool()).await?.rows_affected()) }).await
    }

    /// The listed rows are locked while they are checked, so none can change between
    /// the check and the requeue.
    pub(crate) async fn requeue_ids(
        &self,
        ids: &[i64],
    ) -> Result<Result<u64, Vec<(i64, Option<VideoStatus>)>>, DbError> {
        retry_busy(|| async {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            let found: std::collections::HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>(
                "SELECT video_id, status FROM videos WHERE video_id = ANY($1) FOR UPDATE",
            )
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            let bad: Vec<(i64, Option<VideoStatus>)> = ids
                .iter()
                .filter_map(|id| match found.get(id).map(|s| s.parse().unwrap_or(VideoStatus::Pending)) {
                    Some(VideoStatus::Failed) => None,
                    other => Some((*id, other)),
                })
                .collect();
            if !bad.is_empty() {
                return Ok(Err(bad));
            }
            let n = sqlx::query(sqlx::AssertSqlSafe(format!("{REQUEUE} AND video_id = ANY($1)")))
                .bind(ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(Ok(n))
        })
        .await
    }
}
