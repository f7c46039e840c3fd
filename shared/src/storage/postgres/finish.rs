//! Finishing attempts on PostgreSQL: one `UPDATE ... FROM unnest(...)` for the whole
//! batch, its columns bound as arrays, fenced on each claim's token so a late finisher
//! whose lease was taken over changes nothing. The history row is written by the
//! statement's trigger, in the same statement.

use sqlx::PgConnection;

use crate::error::DbError;
use crate::status::VideoStatus;
use crate::storage::Finish;

const FINISH: &str = "UPDATE videos v SET \
       status = j.status, last_outcome = j.outcome, result = j.result, last_error = j.error, \
       warnings = j.warnings, run_after = j.run_after, finished_at = j.finished_at, duration_ms = j.duration_ms, \
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
     FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], \
                 $8::BIGINT[], $9::BIGINT[], $10::TEXT[]) \
          AS j(video_id, token, status, outcome, result, error, run_after, finished_at, duration_ms, warnings) \
     WHERE v.video_id = j.video_id AND v.status = 'running' AND v.lease_token = j.token \
     RETURNING v.video_id";

/// Writes a batch of finished attempts. Returns the ids of the videos whose write took
/// effect; any other video of the batch had lost its lease.
pub async fn finish_batch(conn: &mut PgConnection, batch: &[Finish]) -> Result<Vec<i64>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // A done video keeps no error and a failed one no warnings (its stderr is in its
    // error already).
    let done = |f: &Finish| f.status == VideoStatus::Done;
    let ids: Vec<i64> = batch.iter().map(|f| f.video_id).collect();
    Ok(sqlx::query_scalar(FINISH)
        .bind(&ids)
        .bind(batch.iter().map(|f| f.token).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.status.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.outcome.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.result.as_deref().map(storable)).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.error.as_deref().filter(|_| !done(f)).map(storable)).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.run_after).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.finished_at).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.duration_ms).collect::<Vec<_>>())
        .bind(batch.iter().map(|f| f.warnings.as_deref().filter(|_| done(f)).map(storable)).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?)
}

/// Text PostgreSQL can store: it refuses the NUL character, which a handler's output may
/// hold (SQLite keeps it). Replaced rather than failing the write, which would fail the
/// batch again at every try.
pub(super) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}").into() } else { text.into() }
}
