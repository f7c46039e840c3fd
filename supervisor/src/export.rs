//! `supervisor export`: videos and their results as CSV or JSON lines, streamed from the
//! database, optionally only some statuses or only the videos that succeeded with
//! warnings. With `--out`, written to a temporary file beside the target and renamed
//! into place, so a reader never sees half an export.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use futures_util::TryStreamExt;
use serde::Serialize;
use shared::status::VideoStatus;
use shared::storage::Db;
use sqlx::FromRow;

use crate::cli::ExportFormat;

/// Which videos to export.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    /// Only these statuses; all when empty.
    pub statuses: &'a [VideoStatus],
    /// Only videos that succeeded with warnings.
    pub warned: bool,
}

/// One exported row. `finished_at` is UTC, ISO 8601.
#[derive(Debug, Serialize, FromRow)]
pub struct ExportRow {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The stderr tail of the successful attempt that finished the video, if it wrote
    /// one: set only on done videos.
    pub warnings: Option<String>,
}

/// Writes the export; returns how many rows.
pub async fn export(db: &Db, format: ExportFormat, select: Selection<'_>, out: Option<&Path>) -> anyhow::Result<u64> {
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            let n = write_rows(db, format, select, &mut lock).await?;
            lock.flush()?;
            Ok(n)
        }
        Some(path) => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("export"),
                std::process::id()
            ));
            let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let result = async {
                let n = write_rows(db, format, select, &mut w).await?;
                w.flush()?;
                w.get_ref().sync_all()?;
                std::fs::rename(&tmp, path).with_context(|| format!("cannot move the export to {}", path.display()))?;
                anyhow::Ok(n)
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
    }
}

async fn write_rows(db: &Db, format: ExportFormat, select: Selection<'_>, out: &mut impl Write) -> anyhow::Result<u64> {
    // Export reads without migrating: a database that no build with migration 0004 has
    // opened has no warnings column, and kept no warnings.
    let has_warnings: bool =
        sqlx::query_scalar("SELECT count(*) > 0 FROM pragma_table_info('videos') WHERE name = 'warnings'")
            .fetch_one(db.pool())
            .await?;
    let warnings = if has_warnings { "warnings" } else { "NULL" };
    let mut conditions = Vec::new();
    if !select.statuses.is_empty() {
        // The statuses come from an enum, never from free text.
        let list: Vec<String> = select.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
        conditions.push(format!("status IN ({})", list.join(",")));
    }
    if select.warned {
        conditions.push(format!("status = 'done' AND {warnings} IS NOT NULL"));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let sql = format!(
        "SELECT video_id, source, payload, status, attempts, result, last_error, \
         CASE WHEN finished_at IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch') END AS finished_at, \
         duration_ms, {warnings} AS warnings FROM videos {filter} ORDER BY video_id"
    );
    let mut rows = sqlx::query_as::<_, ExportRow>(sqlx::AssertSqlSafe(sql)).fetch(db.pool());
    let mut n = 0;
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                "video_id",
                "source",
                "payload",
                "status",
                "attempts",
                "result",
                "last_error",
                "finished_at",
                "duration_ms",
                "warnings",
            ])?;
            while let Some(r) = rows.try_next().await? {
                w.serialize((
                    r.video_id,
                    &r.source,
                    &r.payload,
                    &r.status,
                    r.attempts,
                    &r.result,
                    &r.last_error,
                    &r.finished_at,
                    r.duration_ms,
                    &r.warnings,
                ))?;
                n += 1;
            }
            w.flush()?;
        }
        ExportFormat::Jsonl => {
            while let Some(r) = rows.try_next().await? {
                serde_json::to_writer(&mut *out, &r)?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
    }
    Ok(n)
}
