//! An import on SQLite: one write transaction on a connection of its own.

use std::sync::Arc;

use sqlx::{Connection, Executor, SqliteConnection, SqlitePool};

use crate::error::DbError;
use crate::storage::busy::BusyRetry;
use crate::storage::{EXISTING_NAMED, IMPORT_BATCH, ImportReport, ImportRow, Repeat};

/// One import, streamed: rows are added batch by batch inside ONE write transaction,
/// which `commit` makes visible at once and `roll_back` (or dropping it) undoes whole.
///
/// Repeats within the file are found through a temporary table of (id, first line)
/// rather than a map in memory, so a file of any length imports in constant memory;
/// the temporary table spills to a temporary file, not to RAM.
pub struct SqliteImport {
    /// A connection of its own, taken out of the pool: the pragmas set for the import
    /// and the temporary table end with it, and closing it without a commit undoes
    /// everything.
    conn: SqliteConnection,
    /// False once the caller saw a bad line or a repeat turned up: later rows are still
    /// checked for repeats, but no longer written, since nothing will be committed.
    writing: bool,
    /// Lowest and highest id in the table when the import began (None: it was empty). A
    /// batch wholly outside this range cannot hold an id that was already there, so it
    /// needs no lookup; a fresh import never looks.
    before: Option<(i64, i64)>,
    report: ImportReport,
    /// Statement texts for the last batch size seen (all but the last batch are full),
    /// built once so that sqlx's statement cache finds them.
    sql: BatchSql,
}

impl std::fmt::Debug for SqliteImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteImport").field("writing", &self.writing).field("report", &self.report).finish()
    }
}

#[derive(Default)]
struct BatchSql {
    rows: usize,
    remember: Arc<str>,
    first_lines: Arc<str>,
    already_there: Arc<str>,
    insert: Arc<str>,
}

impl BatchSql {
    fn for_rows(rows: usize) -> BatchSql {
        let marks = vec!["?"; rows].join(",");
        BatchSql {
            rows,
            remember: format!(
                "INSERT INTO temp.import_seen (video_id, line) VALUES {} ON CONFLICT (video_id) DO NOTHING",
                vec!["(?, ?)"; rows].join(",")
            )
            .into(),
            first_lines: format!("SELECT video_id, line FROM temp.import_seen WHERE video_id IN ({marks})").into(),
            already_there: format!("SELECT video_id FROM main.videos WHERE video_id IN ({marks}) ORDER BY video_id")
                .into(),
            insert: format!(
                "INSERT INTO main.videos (video_id, source, payload) VALUES {} ON CONFLICT (video_id) DO NOTHING",
                vec!["(?, ?, ?)"; rows].join(",")
            )
            .into(),
        }
    }
}

impl SqliteImport {
    /// Takes the write lock (waiting for other writers) and prepares the import.
    pub(crate) async fn begin(pool: &SqlitePool) -> Result<SqliteImport, DbError> {
        let mut conn = pool.acquire().await?.detach();
        // The ids seen so far go to a temporary file, whatever the build's default.
        conn.execute("PRAGMA temp_store = FILE").await?;
        // The import writes video_id, source and payload; the table's only CHECK is on
        // status, which it leaves at its default, 'pending'. SQLite builds that CHECK's
        // IN list anew for every row, a third of the insert's time.
        conn.execute("PRAGMA ignore_check_constraints = ON").await?;
        conn.execute("CREATE TEMP TABLE import_seen (video_id INTEGER PRIMARY KEY, line INTEGER NOT NULL)").await?;
        let mut busy = BusyRetry::new();
        loop {
            match conn.execute("BEGIN IMMEDIATE").await {
                Ok(_) => break,
                Err(e) => busy.wait(e.into()).await?,
            }
        }
        let (low, high): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(video_id), max(video_id) FROM main.videos").fetch_one(&mut conn).await?;
        Ok(SqliteImport {
            conn,
            writing: true,
            before: low.zip(high),
            report: ImportReport::default(),
            sql: BatchSql::default(),
        })
    }

    /// Stops writing rows: the caller found a bad line, so the import will be rolled
    /// back; rows added from now on are only checked for repeats.
    pub(crate) fn stop_writing(&mut self) {
        self.writing = false;
    }

    /// Adds rows (in file order) and returns those whose id an earlier line already
    /// had. Ids that were in the table before the import are left alone and counted in
    /// the report.
    pub(crate) async fn add(&mut self, mut rows: Vec<ImportRow>) -> Result<Vec<Repeat>, DbError> {
        let mut repeats = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(IMPORT_BATCH));
            self.add_batch(rows, &mut repeats).await?;
            rows = rest;
        }
        Ok(repeats)
    }

    async fn add_batch(&mut self, rows: Vec<ImportRow>, repeats: &mut Vec<Repeat>) -> Result<(), DbError> {
        if self.sql.rows != rows.len() {
            self.sql = BatchSql::for_rows(rows.len());
        }
        let mut remember = sqlx::query(sqlx::AssertSqlSafe(self.sql.remember.clone()));
        for r in &rows {
            remember = remember.bind(r.video.video_id).bind(r.line as i64);
        }
        let new_ids = remember.execute(&mut self.conn).await?.rows_affected();
        if new_ids < rows.len() as u64 {
            // Some id was seen before, on an earlier line or earlier in this batch: the
            // table keeps the first line of each id.
            let mut lookup = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(self.sql.first_lines.clone()));
            for r in &rows {
                lookup = lookup.bind(r.video.video_id);
            }
            let first: std::collections::HashMap<i64, i64> =
                lookup.fetch_all(&mut self.conn).await?.into_iter().collect();
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
            let mut lookup = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(self.sql.already_there.clone()));
            for r in &rows {
                lookup = lookup.bind(r.video.video_id);
            }
            let there = lookup.fetch_all(&mut self.conn).await?;
            self.report.existing += there.len() as u64;
            let room = EXISTING_NAMED.saturating_sub(self.report.existing_ids.len());
            self.report.existing_ids.extend(there.into_iter().take(room));
        }
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(self.sql.insert.clone()));
        for r in rows {
            insert = insert.bind(r.video.video_id).bind(r.video.source).bind(r.video.payload);
        }
        self.report.inserted += insert.execute(&mut self.conn).await?.rows_affected();
        Ok(())
    }

    /// Makes every row added visible at once.
    pub(crate) async fn commit(mut self) -> Result<ImportReport, DbError> {
        // A COMMIT refused as busy (readers of a rollback-journal file) leaves the
        // transaction open, so it can be tried again.
        let mut busy = BusyRetry::new();
        loop {
            match self.conn.execute("COMMIT").await {
                Ok(_) => break,
                Err(e) => busy.wait(e.into()).await?,
            }
        }
        self.conn.close().await?;
        Ok(self.report)
    }

    /// Undoes everything the import did.
    pub(crate) async fn roll_back(mut self) -> Result<(), DbError> {
        self.conn.execute("ROLLBACK").await?;
        self.conn.close().await?;
        Ok(())
    }
}
