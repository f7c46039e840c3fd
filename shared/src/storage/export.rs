//! Exporting videos: their rows in id order, streamed from the database, never all in
//! memory. How they are written (CSV, JSON lines) is `supervisor export`'s business.

use futures_util::stream::BoxStream;
use serde::Serialize;
use sqlx::FromRow;

use super::Store;
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
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ExportRow {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    #[sqlx(try_from = "String")]
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

impl Store {
    /// The videos `filter` selects, in id order, as a stream.
    pub async fn export_rows(
        &self,
        filter: ExportFilter<'_>,
    ) -> Result<BoxStream<'_, Result<ExportRow, DbError>>, DbError> {
        match self {
            Store::Sqlite(s) => s.export_rows(filter).await,
            Store::Postgres(s) => s.export_rows(filter).await,
        }
    }
}
