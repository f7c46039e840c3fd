//! Finishing attempts: recording done, retry-later and failed videos, fenced on the
//! claim token so a late finisher whose lease was taken over changes nothing.

use serde::Serialize;
use sqlx::{Row, SqliteConnection};

use super::lease::parse_status;
use crate::error::DbError;
use crate::status::{Outcome, VideoStatus};

/// How one attempt ended, ready to be written.
#[derive(Debug, Clone, Serialize)]
pub struct Finish {
    #[serde(rename = "id")]
    pub video_id: i64,
    /// The claim token; the write only lands if the video still carries it.
    pub token: i64,
    /// `done`, `pending` (retry at `run_after`) or `failed`.
    pub status: VideoStatus,
    pub outcome: Outcome,
    pub result: Option<String>,
    pub error: Option<String>,
    pub run_after: i64,
    pub finished_at: i64,
    pub duration_ms: i64,
}

/// Writes a batch of finished attempts in one statement. Returns the videos whose write
/// took effect, with their new status; any other video of the batch had lost its lease.
pub async fn finish_batch(
    conn: &mut SqliteConnection,
    batch: &[Finish],
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let json =
        serde_json::to_string(batch).map_err(|e| DbError::Sql(sqlx::Error::Encode(Box::new(e))))?;
    let rows = sqlx::query(
        "UPDATE videos SET \
           status = j.status, last_outcome = j.outcome, result = j.result, \
           last_error = CASE WHEN j.status = 'done' THEN NULL ELSE j.error END, \
           run_after = j.run_after, finished_at = j.finished_at, duration_ms = j.duration_ms, \
           lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.token') AS token, \
                      json_extract(value, '$.status') AS status, json_extract(value, '$.outcome') AS outcome, \
                      json_extract(value, '$.result') AS result, json_extract(value, '$.error') AS error, \
                      json_extract(value, '$.run_after') AS run_after, json_extract(value, '$.finished_at') AS finished_at, \
                      json_extract(value, '$.duration_ms') AS duration_ms \
               FROM json_each(?1)) AS j \
         WHERE videos.video_id = j.id AND videos.status = 'running' AND videos.lease_token = j.token \
         RETURNING videos.video_id, videos.status",
    )
    .bind(json)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), parse_status(r.get(1))))
        .collect())
}
