//! `supervisor export`: videos and their results as CSV or JSON lines, streamed from the
//! database. With `--out`, written to a temporary file beside the target and renamed
//! into place, so a reader never sees half an export.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use futures_util::TryStreamExt;
use serde::Serialize;
use shared::db::Db;
use shared::status::VideoStatus;
use sqlx::FromRow;

use crate::cli::ExportFormat;

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
}

/// Writes the export; returns how many rows.
pub async fn export(
    db: &Db,
    format: ExportFormat,
    statuses: &[VideoStatus],
    out: Option<&Path>,
) -> anyhow::Result<u64> {
    match out {
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            let n = write_rows(db, format, statuses, &mut lock).await?;
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
                let n = write_rows(db, format, statuses, &mut w).await?;
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

async fn write_rows(
    db: &Db,
    format: ExportFormat,
    statuses: &[VideoStatus],
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let filter = if statuses.is_empty() {
        String::new()
    } else {
        // The statuses come from an enum, never from free text.
        let list: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
        format!("WHERE status IN ({})", list.join(","))
    };
    let sql = format!(
        "SELECT video_id, source, payload, status, attempts, result, last_error, \
         CASE WHEN finished_at IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch') END AS finished_at, \
         duration_ms FROM videos {filter} ORDER BY video_id"
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
