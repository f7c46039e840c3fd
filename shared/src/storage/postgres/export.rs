//! Export rows on PostgreSQL: one streamed `SELECT`.

use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};

use super::PgStore;
use crate::error::DbError;
use crate::storage::{ExportFilter, ExportRow};

impl PgStore {
    pub(crate) async fn export_rows(
        &self,
        filter: ExportFilter<'_>,
    ) -> Result<BoxStream<'_, Result<ExportRow, DbError>>, DbError> {
        let mut conditions = Vec::new();
        if !filter.statuses.is_empty() {
            // The statuses come from an enum, never from free text.
            let list: Vec<String> = filter.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
            conditions.push(format!("status IN ({})", list.join(",")));
        }
        if filter.warned {
            conditions.push("status = 'done' AND warnings IS NOT NULL".to_string());
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT video_id, source, payload, status, attempts, result, last_error, finished_at, duration_ms, \
             warnings FROM videos {filter} ORDER BY video_id"
        );
        Ok(sqlx::query_as::<_, ExportRow>(sqlx::AssertSqlSafe(sql)).fetch(self.pool()).map_err(DbError::from).boxed())
    }
}
