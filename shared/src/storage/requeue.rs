//! Requeueing failed videos (`supervisor retry`, a worker's `POST /videos/{id}/retry`):
//! back to pending with a fresh set of attempts, due at once.

use super::Store;
use super::busy::run;
use super::conn::{Begin, ConnExt, args};
use crate::error::DbError;
use crate::status::VideoStatus;

/// What `requeue_video` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueOutcome {
    Requeued,
    Missing,
    /// Its status word as the table holds it: a refusal names it, even a word this
    /// build does not know (a row another tool wrote).
    NotFailed(String),
}

const REQUEUE: &str = "UPDATE videos SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL, \
                       last_outcome = NULL WHERE status = 'failed'";

impl Store {
    /// Puts a failed video back to pending with a fresh set of attempts, due at once.
    pub async fn requeue_video(&self, video_id: i64) -> Result<RequeueOutcome, DbError> {
        let requeue = format!("{REQUEUE} AND video_id = $1");
        run!(self, |c| {
            if c.execute(&requeue, args![video_id]).await? == 1 {
                return Ok(RequeueOutcome::Requeued);
            }
            let found = c.fetch_optional("SELECT status FROM videos WHERE video_id = $1", args![video_id]).await?;
            Ok(match found {
                None => RequeueOutcome::Missing,
                Some(r) => RequeueOutcome::NotFailed(r.text(0)),
            })
        })
    }

    /// Requeues every failed video; returns how many.
    pub async fn requeue_all_failed(&self) -> Result<u64, DbError> {
        run!(self, |c| c.execute(REQUEUE, &[]).await)
    }

    /// Requeues exactly `ids`, all of which must be failed; if any is missing or not
    /// failed, nothing changes and the offenders are returned with their status. The
    /// rows are checked and requeued in one write transaction (on PostgreSQL, locked
    /// while they are checked), so none can change between the check and the requeue.
    pub async fn requeue_ids(&self, ids: &[i64]) -> Result<Result<u64, Vec<(i64, Option<String>)>>, DbError> {
        let requeue = format!("{REQUEUE} AND video_id = $1");
        run!(self, |c| {
            let check = format!("SELECT status FROM videos WHERE video_id = $1{}", c.backend().sql().lock_rows);
            let mut tx = c.begin(Begin::Write).await?;
            let mut bad = Vec::new();
            for &id in ids {
                match tx.fetch_optional(&check, args![id]).await?.map(|r| r.text(0)) {
                    Some(s) if s == VideoStatus::Failed.as_str() => {}
                    other => bad.push((id, other)),
                }
            }
            if !bad.is_empty() {
                return Ok(Err(bad));
            }
            let mut n = 0;
            for &id in ids {
                n += tx.execute(&requeue, args![id]).await?;
            }
            tx.commit().await?;
            Ok(Ok(n))
        })
    }
}
