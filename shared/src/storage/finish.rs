//! How one attempt ended, and its write: finishing is fenced on the claim's token, so a
//! late finisher whose lease was taken over changes nothing. A batch is one statement
//! (SQLite binds chunks of `VALUES`, PostgreSQL arrays: `Conn::batch`).

use super::conn::{Arg, BatchCols, Col, Conn};
use crate::error::DbError;
use crate::status::{Outcome, VideoStatus};

/// How one attempt ended, ready to be written. Its status and `run_after` come from the
/// retry decision (`crate::retry`); the storage writes them as they are.
#[derive(Debug, Clone)]
pub struct Finish {
    pub video_id: i64,
    /// The claim token; the write only lands if the video still carries it.
    pub token: i64,
    /// `done`, `pending` (retry at `run_after`) or `failed`.
    pub status: VideoStatus,
    pub outcome: Outcome,
    pub result: Option<String>,
    /// Kept only for a video that is not done.
    pub error: Option<String>,
    /// What a successful handler said on stderr (its tail); kept only for `done`.
    pub warnings: Option<String>,
    pub run_after: i64,
    pub finished_at: i64,
    pub duration_ms: i64,
}

/// The fenced write of finished attempts: a row changes only while it is still running
/// under the claim's token. The history row is written by the table's trigger, in the
/// same statement.
const FINISH: &str = "UPDATE videos SET \
       status = j.status, last_outcome = j.outcome, result = j.result, last_error = j.error, \
       warnings = j.warnings, run_after = j.run_after, finished_at = j.finished_at, duration_ms = j.duration_ms, \
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
     FROM {rows} \
     WHERE videos.video_id = j.video_id AND videos.status = 'running' AND videos.lease_token = j.token \
     RETURNING videos.video_id";

const FINISH_COLS: BatchCols = BatchCols(&[
    ("video_id", Col::Int),
    ("token", Col::Int),
    ("status", Col::Text),
    ("outcome", Col::Text),
    ("result", Col::Text),
    ("error", Col::Text),
    ("run_after", Col::Int),
    ("finished_at", Col::Int),
    ("duration_ms", Col::Int),
    ("warnings", Col::Text),
]);

/// Writes a batch of finished attempts. Returns the ids of the videos whose write took
/// effect; any other video of the batch had lost its lease.
pub(crate) async fn finish_batch(conn: &mut dyn Conn, batch: &[Finish]) -> Result<Vec<i64>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Vec<Arg>> = batch
        .iter()
        .map(|f| {
            // A done video keeps no error and a failed one no warnings (its stderr is in
            // its error already).
            let done = f.status == VideoStatus::Done;
            vec![
                f.video_id.into(),
                f.token.into(),
                f.status.as_str().into(),
                f.outcome.as_str().into(),
                f.result.as_deref().into(),
                f.error.as_deref().filter(|_| !done).into(),
                f.run_after.into(),
                f.finished_at.into(),
                f.duration_ms.into(),
                f.warnings.as_deref().filter(|_| done).into(),
            ]
        })
        .collect();
    Ok(conn.batch(FINISH, FINISH_COLS, &rows).await?.iter().map(|r| r.int(0)).collect())
}
