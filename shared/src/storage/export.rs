//! Exporting videos: their rows in id order, streamed from the database, never all in
//! memory. How they are written (CSV, JSON lines) is `supervisor export`'s business.

use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;

use super::Store;
use super::conn::{ConnExt, Row, args, word};
use crate::error::DbError;
use crate::status::VideoStatus;

/// Which videos to export.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportFilter<'a> {
    /// Only these statuses; all when empty.
    pub statuses: &'a [VideoStatus],
    /// Only videos that succeeded with warnings.
    pub warned: bool,
}

/// One exported video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportRow {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    pub status: VideoStatus,
    pub attempts: i64,
    pub result: Option<String>,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// The stderr tail of the successful attempt that finished the video, if it wrote
    /// one: set only on done videos.
    pub warnings: Option<String>,
}

/// Rows read per page: the export reads in keyset pages (`video_id > last`), so it
/// holds one page in memory however many videos there are, on every backend.
const PAGE: i64 = 1000;

impl Store {
    /// The videos `filter` selects, in id order, as a stream.
    pub async fn export_rows(
        &self,
        filter: ExportFilter<'_>,
    ) -> Result<BoxStream<'_, Result<ExportRow, DbError>>, DbError> {
        let mut conn = self.conn().await?;
        // Export reads without migrating: a SQLite database that no build with migration
        // 0004 has opened has no warnings column, and kept no warnings.
        let column_exists = conn.backend().sql().column_exists;
        let has_warnings = conn.scalar(column_exists, args!["videos", "warnings"]).await?.int() == Some(1);
        let warnings = if has_warnings { "warnings" } else { "NULL" };
        let mut conditions = vec!["video_id > $1".to_string()];
        if !filter.statuses.is_empty() {
            // The statuses come from an enum, never from free text.
            let list: Vec<String> = filter.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
            conditions.push(format!("status IN ({})", list.join(",")));
        }
        if filter.warned {
            conditions.push(format!("status = 'done' AND {warnings} IS NOT NULL"));
        }
        let sql = format!(
            "SELECT video_id, source, payload, status, attempts, result, last_error, finished_at, duration_ms, \
             {warnings} AS warnings FROM videos WHERE {} ORDER BY video_id LIMIT {PAGE}",
            conditions.join(" AND ")
        );
        let pages = futures_util::stream::try_unfold((conn, Some(i64::MIN)), move |(mut conn, after)| {
            let sql = sql.clone();
            async move {
                let Some(after) = after else { return Ok(None) };
                let rows = conn.fetch(&sql, args![after]).await?;
                let next = (rows.len() as i64 == PAGE).then(|| rows.last().map_or(i64::MAX, |r| r.int(0)));
                let page: Vec<Result<ExportRow, DbError>> = rows.into_iter().map(export_row).collect();
                Ok::<_, DbError>(Some((futures_util::stream::iter(page), (conn, next))))
            }
        });
        Ok(pages.try_flatten().boxed())
    }
}

fn export_row(mut r: Row) -> Result<ExportRow, DbError> {
    let status = r.text(3);
    Ok(ExportRow {
        video_id: r.int(0),
        source: r.vals[1].take_text().unwrap_or_default(),
        payload: r.vals[2].take_text(),
        status: word(status)?,
        attempts: r.int(4),
        result: r.vals[5].take_text(),
        last_error: r.vals[6].take_text(),
        finished_at: r.opt_int(7),
        duration_ms: r.opt_int(8),
        warnings: r.vals[9].take_text(),
    })
}
