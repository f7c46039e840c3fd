//! Export rows on SQLite: one streamed `SELECT`.

use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};

use super::SqliteStore;
use crate::error::DbError;
use crate::storage::{ExportFilter, ExportRow};

impl SqliteStore {
    pub(crate) async fn export_rows(
        &self,
        filter: ExportFilter<'_>,
    ) -> Result<BoxStream<'_, Result<ExportRow, DbError>>, DbError> {
        // Export reads without migrating: a database that no build with migration 0004
        // has opened has no warnings column, and kept no warnings.
        let has_warnings: bool =
            sqlx::query_scalar("SELECT count(*) > 0 FROM pragma_table_info('videos') WHERE name = 'warnings'")
                .fetch_one(self.pool())
                .await?;
        let warnings = if has_warnings { "warnings" } else { "NULL" };
        let mut conditions = Vec::new();
        if !filter.statuses.is_empty() {
            // The statuses come from an enum, never from free text.
            let list: Vec<String> = filter.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
            conditions.push(format!("status IN ({})", list.join(",")));
        }
        if filter.warned {
            conditions.push(format!("status = 'done' AND {warnings} IS NOT NULL"));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT video_id, source, payload, status, attempts, result, last_error, finished_at, duration_ms, \
             {warnings} AS warnings FROM videos {filter} ORDER BY video_id"
        );
        Ok(sqlx::query_as::<_, ExportRow>(sqlx::AssertSqlSafe(sql)).fetch(self.pool()).map_err(DbError::from).boxed())
    }
}
