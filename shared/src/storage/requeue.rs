//! Requeueing failed videos (`supervisor retry`, a worker's `POST /videos/{id}/retry`):
//! back to pending with a fresh set of attempts, due at once.

use super::Store;
use crate::error::DbError;
use crate::status::VideoStatus;

/// What `requeue_video` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    Requeued,
    Missing,
    NotFailed(VideoStatus),
}

impl Store {
    /// Puts a failed video back to pending with a fresh set of attempts, due at once.
    pub async fn requeue_video(&self, video_id: i64) -> Result<RequeueOutcome, DbError> {
        match self {
            Store::Sqlite(s) => s.requeue_video(video_id).await,
            Store::Postgres(s) => s.requeue_video(video_id).await,
        }
    }

    /// Requeues every failed video; returns how many.
    pub async fn requeue_all_failed(&self) -> Result<u64, DbError> {
        match self {
            Store::Sqlite(s) => s.requeue_all_failed().await,
            Store::Postgres(s) => s.requeue_all_failed().await,
        }
    }

    /// Requeues exactly `ids`, all of which must be failed; if any is missing or not
    /// failed, nothing changes and the offenders are returned with their status.
    pub async fn requeue_ids(&self, ids: &[i64]) -> Result<Result<u64, Vec<(i64, Option<VideoStatus>)>>, DbError> {
        match self {
            Store::Sqlite(s) => s.requeue_ids(ids).await,
            Store::Postgres(s) => s.requeue_ids(ids).await,
        }
    }
}
