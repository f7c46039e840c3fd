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
use shared::storage::{ExportFilter, ExportRow, Store};
use shared::time_fmt::timestamp_ms;

use crate::cli::ExportFormat;

/// One exported line, as CSV and JSON lines show it: `finished_at` in UTC, ISO 8601.
#[derive(Debug, Serialize)]
struct Line<'a> {
    video_id: i64,
    source: &'a str,
    payload: Option<&'a str>,
    status: VideoStatus,
    attempts: i64,
    result: Option<&'a str>,
    last_error: Option<&'a str>,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
    warnings: Option<&'a str>,
}

impl<'a> From<&'a ExportRow> for Line<'a> {
    fn from(r: &'a ExportRow) -> Line<'a> {
        Line {
            video_id: r.video_id,
            source: &r.source,
            payload: r.payload.as_deref(),
            status: r.status,
            attempts: r.attempts,
            result: r.result.as_deref(),
            last_error: r.last_error.as_deref(),
            finished_at: r.finished_at.map(timestamp_ms),
            duration_ms: r.duration_ms,
            warnings: r.warnings.as_deref(),
        }
    }
}

/// Writes the export; returns how many rows.
pub async fn export(
    db: &Store,
    format: ExportFormat,
    select: ExportFilter<'_>,
    out: Option<&Path>,
) -> anyhow::Result<u64> {
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

async fn write_rows(
    db: &Store,
    format: ExportFormat,
    select: ExportFilter<'_>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut rows = db.export_rows(select).await?;
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
                let l = Line::from(&r);
                w.serialize((
                    l.video_id,
                    l.source,
                    l.payload,
                    l.status,
                    l.attempts,
                    l.result,
                    l.last_error,
                    l.finished_at,
                    l.duration_ms,
                    l.warnings,
                ))?;
                n += 1;
            }
            w.flush()?;
        }
        ExportFormat::Jsonl => {
            while let Some(r) = rows.try_next().await? {
                serde_json::to_writer(&mut *out, &Line::from(&r))?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
    }
    Ok(n)
}
