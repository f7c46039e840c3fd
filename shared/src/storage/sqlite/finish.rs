//! Finishing attempts on SQLite: recording done, retry-later and failed videos, fenced on
//! the claim token so a late finisher whose lease was taken over changes nothing.
//!
//! A batch is one `UPDATE ... FROM (VALUES ...)` statement per chunk, the values bound
//! as parameters. (Passing the batch as a JSON array cost a third of the writer's CPU
//! in JSON parsing.) Chunks come in a few fixed sizes, padded with NULL rows that match
//! no video, so the connection's statement cache holds every variant.

use std::sync::OnceLock;

use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use crate::error::DbError;
use crate::status::VideoStatus;
use crate::storage::Finish;

/// Parameters a row: the `?`s of one VALUES row, in `finish_batch`'s binding order.
const ROW_PARAMS: usize = 10;

/// Rows per statement variant: powers of four up to 256 (10 parameters a row, far below
/// SQLite's 32766-parameter limit).
pub(super) const CHUNK_SIZES: [usize; 5] = [1, 4, 16, 64, 256];

/// The statement variant for the first chunk of `rows` rows: the smallest that holds
/// them all, else the largest.
pub(super) fn chunk_size(rows: usize) -> usize {
    CHUNK_SIZES.iter().copied().find(|&n| n >= rows).unwrap_or(CHUNK_SIZES[CHUNK_SIZES.len() - 1])
}

fn statement(rows: usize) -> &'static str {
    static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = STATEMENTS.get_or_init(|| {
        CHUNK_SIZES
            .iter()
            .map(|&n| {
                let row = format!("({})", ["?"; ROW_PARAMS].join(","));
                let values = vec![row; n].join(",");
                // VALUES columns are named column1..column10 by SQLite.
                format!(
                    "UPDATE videos SET \
                       status = j.column3, last_outcome = j.column4, result = j.column5, \
                       last_error = j.column6, warnings = j.column10, \
                       run_after = j.column7, finished_at = j.column8, duration_ms = j.column9, \
                       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
                     FROM (VALUES {values}) AS j \
                     WHERE videos.video_id = j.column1 AND videos.status = 'running' AND videos.lease_token = j.column2 \
                     RETURNING videos.video_id"
                )
            })
            .collect()
    });
    let i = CHUNK_SIZES.iter().position(|&n| n == rows).expect("rows is one of CHUNK_SIZES");
    &all[i]
}

/// Writes a batch of finished attempts. Returns the ids of the videos whose write took
/// effect; any other video of the batch had lost its lease.
pub async fn finish_batch(conn: &mut SqliteConnection, batch: &[Finish]) -> Result<Vec<i64>, DbError> {
    let mut applied = Vec::with_capacity(batch.len());
    let mut rest = batch;
    while !rest.is_empty() {
        let size = chunk_size(rest.len());
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        let mut q = sqlx::query(AssertSqlSafe(statement(size)));
        for f in chunk {
            // A done video keeps no error and a failed one no warnings (its stderr is in
            // its error already).
            let done = f.status == VideoStatus::Done;
            q = q
                .bind(f.video_id)
                .bind(f.token)
                .bind(f.status.as_str())
                .bind(f.outcome.as_str())
                .bind(f.result.as_deref())
                .bind(f.error.as_deref().filter(|_| !done))
                .bind(f.run_after)
                .bind(f.finished_at)
                .bind(f.duration_ms)
                .bind(f.warnings.as_deref().filter(|_| done));
        }
        for _ in 0..(size - chunk.len()) * ROW_PARAMS {
            q = q.bind(None::<i64>);
        }
        for r in q.fetch_all(&mut *conn).await? {
            applied.push(r.get(0));
        }
        rest = tail;
    }
    Ok(applied)
}
