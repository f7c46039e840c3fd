//! Importing videos: one import is all or nothing, streamed batch by batch in constant
//! memory, and reports ids that repeat within the file or were already there.

use super::Store;
use super::postgres::PgImport;
use super::sqlite::SqliteImport;
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

/// One import, streamed: rows are added batch by batch and become visible all at once
/// at `commit`; `roll_back` (or dropping it) undoes the whole import. Repeats within the
/// file are found without holding the file's ids in memory.
#[derive(Debug)]
pub enum Import {
    Sqlite(SqliteImport),
    Postgres(PgImport),
}

impl Store {
    /// Begins an import: takes the write lock (waiting for other writers).
    pub async fn begin_import(&self) -> Result<Import, DbError> {
        match self {
            Store::Sqlite(s) => Ok(Import::Sqlite(SqliteImport::begin(s.pool()).await?)),
            Store::Postgres(s) => Ok(Import::Postgres(PgImport::begin(s.pool()).await?)),
        }
    }
}

impl Import {
    /// Stops writing rows: the caller found a bad line, so the import will be rolled
    /// back; rows added from now on are only checked for repeats.
    pub fn stop_writing(&mut self) {
        match self {
            Import::Sqlite(i) => i.stop_writing(),
            Import::Postgres(i) => i.stop_writing(),
        }
    }

    /// Adds rows (in file order) and returns those whose id an earlier line already
    /// had. Ids that were in the table before the import are left alone and counted in
    /// the report.
    pub async fn add(&mut self, rows: Vec<ImportRow>) -> Result<Vec<Repeat>, DbError> {
        match self {
            Import::Sqlite(i) => i.add(rows).await,
            Import::Postgres(i) => i.add(rows).await,
        }
    }

    /// Makes every row added visible at once.
    pub async fn commit(self) -> Result<ImportReport, DbError> {
        match self {
            Import::Sqlite(i) => i.commit().await,
            Import::Postgres(i) => i.commit().await,
        }
    }

    /// Undoes everything the import did.
    pub async fn roll_back(self) -> Result<(), DbError> {
        match self {
            Import::Sqlite(i) => i.roll_back().await,
            Import::Postgres(i) => i.roll_back().await,
        }
    }
}
