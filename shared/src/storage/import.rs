//! Importing videos: one import is all or nothing, streamed batch by batch in constant
//! memory, and reports ids that repeat within the file or were already there.

use std::collections::HashMap;

use super::Store;
use super::busy::retrying;
use super::conn::{Arg, BatchCols, Col, Conn, ConnExt};
use crate::error::DbError;

/// A video to import.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVideo {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
}

/// A video to import and the line of the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    pub line: u64,
    pub video: NewVideo,
}

/// An id that an earlier line of the same file already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub line: u64,
    pub video_id: i64,
    pub first_line: u64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportReport {
    pub inserted: u64,
    /// Ids that were in the table before the import, left as they were.
    pub existing: u64,
    /// The first `EXISTING_NAMED` of them (in file order, by id within a batch): a
    /// report names a few, not millions.
    pub existing_ids: Vec<i64>,
}

/// Ids already in the table that a report names; the rest are only counted.
pub const EXISTING_NAMED: usize = 10;

/// Rows per INSERT: few enough statements that their overhead disappears, few enough
/// variables (3 per row) to stay far below SQLite's limit.
pub const IMPORT_BATCH: usize = 500;

/// One import, streamed: rows are added batch by batch inside ONE transaction on a
/// connection of its own, which `commit` makes visible at once and `roll_back` (or
/// dropping it) undoes whole. Repeats within the file are found through a temporary
/// table of (id, first line) rather than a map in memory, so a file of any length
/// imports in constant memory.
pub struct Import {
    /// A connection taken out of the pool: the settings made for the import and the
    /// temporary table end with it, and dropping it without a commit closes it, which
    /// undoes everything (a pooled connection would go back to the pool still in the
    /// transaction, holding the import's lock).
    conn: Box<dyn Conn>,
    /// False once the caller saw a bad line or a repeat turned up: later rows are still
    /// checked for repeats, but no longer written, since nothing will be committed.
    writing: bool,
    /// Lowest and highest id in the table when the import began (None: it was empty). A
    /// batch wholly outside this range cannot hold an id that was already there, so it
    /// needs no lookup; a fresh import never looks.
    before: Option<(i64, i64)>,
    report: ImportReport,
}

impl std::fmt::Debug for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import").field("writing", &self.writing).field("report", &self.report).finish()
    }
}

const IDS: BatchCols = BatchCols(&[("video_id", Col::Int), ("line", Col::Int)]);
const VIDEOS: BatchCols = BatchCols(&[("video_id", Col::Int), ("source", Col::Text), ("payload", Col::Text)]);

impl Store {
    /// Begins an import: takes the write lock (waiting for other writers).
    pub async fn begin_import(&self) -> Result<Import, DbError> {
        let mut conn = self.detached_conn().await?;
        let sql = conn.backend().sql();
        for statement in sql.import_setup {
            conn.execute(statement, &[]).await?;
        }
        retrying!(conn, |c| {
            for statement in sql.import_begin {
                c.execute(statement, &[]).await?;
            }
            Ok(())
        })?;
        let range = conn.fetch_optional("SELECT min(video_id), max(video_id) FROM videos", &[]).await?;
        let before = range.and_then(|r| r.opt_int(0).zip(r.opt_int(1)));
        Ok(Import { conn, writing: true, before, report: ImportReport::default() })
    }
}

impl Import {
    /// Stops writing rows: the caller found a bad line, so the import will be rolled
    /// back; rows added from now on are only checked for repeats.
    pub fn stop_writing(&mut self) {
        self.writing = false;
    }

    /// Adds rows (in file order) and returns those whose id an earlier line already
    /// had. Ids that were in the table before the import are left alone and counted in
    /// the report.
    pub async fn add(&mut self, mut rows: Vec<ImportRow>) -> Result<Vec<Repeat>, DbError> {
        if self.conn.backend().sql().rejects_nul
            && let Some(bad) = rows
                .iter()
                .find(|r| r.video.source.contains('\0') || r.video.payload.as_deref().is_some_and(|p| p.contains('\0')))
        {
            return Err(DbError::NulInText { line: bad.line, video_id: bad.video.video_id });
        }
        let mut repeats = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(IMPORT_BATCH));
            self.add_batch(rows, &mut repeats).await?;
            rows = rest;
        }
        Ok(repeats)
    }

    async fn add_batch(&mut self, rows: Vec<ImportRow>, repeats: &mut Vec<Repeat>) -> Result<(), DbError> {
        let ids: Vec<Vec<Arg>> = rows.iter().map(|r| vec![r.video.video_id.into(), (r.line as i64).into()]).collect();
        // `WHERE true`: SQLite would read `ON CONFLICT` after a bare FROM as a join's ON.
        let new_ids = self
            .conn
            .batch(
                "INSERT INTO import_seen (video_id, line) SELECT video_id, line FROM {rows} WHERE true \
                 ON CONFLICT (video_id) DO NOTHING RETURNING video_id",
                IDS,
                &ids,
            )
            .await?
            .len();
        if new_ids < rows.len() {
            // Some id was seen before, on an earlier line or earlier in this batch: the
            // table keeps the first line of each id.
            let first: HashMap<i64, i64> = self
                .conn
                .batch("SELECT s.video_id, s.line FROM import_seen s JOIN {rows} ON s.video_id = j.video_id", IDS, &ids)
                .await?
                .iter()
                .map(|r| (r.int(0), r.int(1)))
                .collect();
            for r in &rows {
                if let Some(&line) = first.get(&r.video.video_id)
                    && line as u64 != r.line
                {
                    repeats.push(Repeat { line: r.line, video_id: r.video.video_id, first_line: line as u64 });
                }
            }
            self.writing = false;
        }
        if !self.writing {
            return Ok(());
        }
        let low = rows.iter().map(|r| r.video.video_id).min().unwrap_or(0);
        let high = rows.iter().map(|r| r.video.video_id).max().unwrap_or(0);
        if let Some((min, max)) = self.before
            && low <= max
            && high >= min
        {
            let mut there: Vec<i64> = self
                .conn
                .batch("SELECT v.video_id FROM videos v JOIN {rows} ON v.video_id = j.video_id", IDS, &ids)
                .await?
                .iter()
                .map(|r| r.int(0))
                .collect();
            there.sort_unstable();
            self.report.existing += there.len() as u64;
            let room = EXISTING_NAMED.saturating_sub(self.report.existing_ids.len());
            self.report.existing_ids.extend(there.into_iter().take(room));
        }
        let videos: Vec<Vec<Arg>> = rows
            .iter()
            .map(|r| vec![r.video.video_id.into(), r.video.source.as_str().into(), r.video.payload.as_deref().into()])
            .collect();
        let inserted = self
            .conn
            .batch(
                "INSERT INTO videos (video_id, source, payload) SELECT video_id, source, payload FROM {rows} \
                 WHERE true ON CONFLICT (video_id) DO NOTHING RETURNING video_id",
                VIDEOS,
                &videos,
            )
            .await?;
        self.report.inserted += inserted.len() as u64;
        Ok(())
    }

    /// Makes every row added visible at once.
    pub async fn commit(mut self) -> Result<ImportReport, DbError> {
        // A COMMIT refused as busy (readers of a rollback-journal file) leaves the
        // transaction open, so it can be tried again.
        retrying!(self.conn, |c| c.execute("COMMIT", &[]).await)?;
        // Fresh statistics, so the first claims are planned on them: until autovacuum
        // gets to a new table (a minute in, for 200,000 rows) the planner guesses that
        // `video_id % N = K` keeps 0.5% of the rows and sorts the whole shard on every
        // claim. The rows are committed whatever happens here: a failed ANALYZE only
        // leaves the planning to autovacuum, so it is not the import's error.
        let analyze = self.conn.backend().sql().analyze;
        if !analyze.is_empty() {
            let _ = self.conn.execute(analyze, &[]).await;
        }
        // Closed, not dropped: on SQLite the last connection to close checkpoints the
        // WAL, so the file alone holds the import once the command exits.
        self.conn.close().await?;
        Ok(self.report)
    }

    /// Undoes everything the import did.
    pub async fn roll_back(mut self) -> Result<(), DbError> {
        self.conn.execute("ROLLBACK", &[]).await?;
        self.conn.close().await
    }
}
