//! An import on PostgreSQL: one transaction on a connection of its own, rows added in
//! array batches, repeats found through a temporary table (constant memory, however
//! long the file). Imports take an advisory lock, so two imports into one database
//! run one after the other, as on SQLite.

use sqlx::{Executor, PgPool, Postgres, Transaction};

use crate::error::DbError;
use crate::storage::{EXISTING_NAMED, IMPORT_BATCH, ImportReport, ImportRow, Repeat};

const IMPORT_LOCK: i64 = 0x5346_494d_504f_5254;

pub struct PgImport {
    /// The import's transaction, on a connection of its own. A `Transaction`, not a
    /// connection on which BEGIN was run: dropped without a commit (a caller returning
    /// early with an error), it rolls back before the connection serves anyone else.
    /// A bare connection went back to the pool still in the transaction, holding the
    /// import lock, and the next import waited for it forever.
    tx: Transaction<'static, Postgres>,
    pool: PgPool,
    writing: bool,
    /// Lowest and highest id in the table when the import began.
    before: Option<(i64, i64)>,
    report: ImportReport,
}

impl std::fmt::Debug for PgImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgImport").field("writing", &self.writing).field("report", &self.report).finish()
    }
}

impl PgImport {
    pub(crate) async fn begin(pool: &PgPool) -> Result<PgImport, DbError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(IMPORT_LOCK).execute(&mut *tx).await?;
        tx.execute("CREATE TEMP TABLE import_seen (video_id BIGINT PRIMARY KEY, line BIGINT NOT NULL) ON COMMIT DROP")
            .await?;
        let (low, high): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(video_id), max(video_id) FROM videos").fetch_one(&mut *tx).await?;
        Ok(PgImport { tx, pool: pool.clone(), writing: true, before: low.zip(high), report: ImportReport::default() })
    }

    pub(crate) fn stop_writing(&mut self) {
        self.writing = false;
    }

    pub(crate) async fn add(&mut self, mut rows: Vec<ImportRow>) -> Result<Vec<Repeat>, DbError> {
        if let Some(bad) = rows
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
        let ids: Vec<i64> = rows.iter().map(|r| r.video.video_id).collect();
        let lines: Vec<i64> = rows.iter().map(|r| r.line as i64).collect();
        let new_ids = sqlx::query(
            "INSERT INTO import_seen (video_id, line) SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]) \
             ON CONFLICT (video_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&lines)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if new_ids < rows.len() as u64 {
            let first: std::collections::HashMap<i64, i64> =
                sqlx::query_as::<_, (i64, i64)>("SELECT video_id, line FROM import_seen WHERE video_id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *self.tx)
                    .await?
                    .into_iter()
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
        let (low, high) = (ids.iter().min().copied().unwrap_or(0), ids.iter().max().copied().unwrap_or(0));
        if let Some((min, max)) = self.before
            && low <= max
            && high >= min
        {
            let there: Vec<i64> =
                sqlx::query_scalar("SELECT video_id FROM videos WHERE video_id = ANY($1) ORDER BY video_id")
                    .bind(&ids)
                    .fetch_all(&mut *self.tx)
                    .await?;
            self.report.existing += there.len() as u64;
            let room = EXISTING_NAMED.saturating_sub(self.report.existing_ids.len());
            self.report.existing_ids.extend(there.into_iter().take(room));
        }
        let (sources, payloads): (Vec<String>, Vec<Option<String>>) =
            rows.into_iter().map(|r| (r.video.source, r.video.payload)).unzip();
        self.report.inserted += sqlx::query(
            "INSERT INTO videos (video_id, source, payload) \
             SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[]) ON CONFLICT (video_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&sources)
        .bind(&payloads)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<ImportReport, DbError> {
        self.tx.commit().await?;
        // Fresh statistics, so the first claims are planned on them: until autovacuum
        // gets to a new table (a minute in, for 200,000 rows) the planner guesses that
        // `video_id % N = K` keeps 0.5% of the rows and sorts the whole shard on every
        // claim. The rows are committed whatever happens here: a failed ANALYZE only
        // leaves the planning to autovacuum, so it is not the import's error.
        let _ = self.pool.execute("ANALYZE videos").await;
        Ok(self.report)
    }

    pub(crate) async fn roll_back(self) -> Result<(), DbError> {
        self.tx.rollback().await?;
        Ok(())
    }
}
