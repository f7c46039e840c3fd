//! Counting videos by shard and status without counting the table.
//!
//! `video_counts` (SQLite migrations 0003 and 0010, PostgreSQL 0001) holds the number of videos
//! per `(shard, status)` for one recorded layout, `shard = video_id % workers`, and
//! triggers on `videos` keep it exact in the same statement as every insert, status
//! change, id change and delete, whoever writes (the fleet, `wrangler d1 execute`, an
//! app). A reader asking for the recorded layout, or for totals under any layout, reads
//! a handful of rows; a reader asking for another layout, or a database this build has
//! not migrated (`status` opens read-only), falls back to a full count.
//!
//! Why counts per layout rather than per status only, or per `video_id % M` for a fixed
//! large M: the fleet asks for one N at a time (status, the monitor, each worker's
//! resync), per-status totals alone cannot answer per shard, and a fixed M would make
//! every read sum thousands of rows and still miss N that do not divide M. A layout
//! change (a fleet started with another N) costs one full count, once, in one write
//! transaction (`ensure_count_layout`). The migration records layout 1, so totals are
//! kept from the start, before any fleet ran.
//!
//! Cost: each row whose status (or id) a statement changes fires one trigger that updates
//! two rows of a `4 N`-row table; an insert or delete updates one. See
//! docs/BENCHMARKS.md, section scale, for what that costs a claim, a finish and an insert.
//!
//! A status word this build does not know (a row another tool wrote) is counted under
//! no status, on every backend: it is neither claimable nor finished.

use super::Store;
use super::busy::{retrying, run};
use super::conn::{Arg, Begin, Conn, ConnExt, Row, args};
use crate::error::DbError;
use crate::status::{ShardCounts, VideoStatus};

impl Store {
    /// Videos by shard (`video_id % workers`) and status, `workers` entries: the kept
    /// counts when they are kept for `workers` (or `workers` is 1: the totals, whatever
    /// the layout), else one scan of the table.
    pub async fn shard_progress(&self, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
        run!(self, |c| by_shard(c, workers).await)
    }

    /// Every video by status, from the kept counts.
    pub async fn totals(&self) -> Result<ShardCounts, DbError> {
        Ok(self.shard_progress(1).await?.into_iter().next().unwrap_or_default())
    }

    /// Makes the counts kept for `workers` shards, recounting the table once if another
    /// layout (or none) is recorded. Returns whether it recounted. `supervisor start`
    /// calls it before starting its workers; a worker's shard session does too, so a
    /// worker run alone keeps its own counts.
    pub async fn ensure_count_layout(&self, workers: u32) -> Result<bool, DbError> {
        let mut conn = self.conn().await?;
        ensure_count_layout(&mut *conn, workers).await
    }

    /// Whether there is any video at all (one index probe, whatever the table's size).
    pub async fn has_videos(&self) -> Result<bool, DbError> {
        run!(self, |c| Ok(c.scalar("SELECT EXISTS (SELECT 1 FROM videos)", &[]).await?.int() == Some(1)))
    }
}

/// The counts as the table holds them: the layout they are kept for and one entry per
/// `(shard, status)` row.
struct Kept {
    workers: u32,
    rows: Vec<(i64, VideoStatus, u64)>,
}

impl Kept {
    /// The counts of `shard`, or of every shard.
    fn sum(&self, shard: Option<i64>) -> ShardCounts {
        let mut c = ShardCounts::default();
        for &(s, status, n) in &self.rows {
            if shard.is_none_or(|k| k == s) {
                *c.get_mut(status) += n;
            }
        }
        c
    }
}

/// Adds a counted row (status, count) to `counts`; an unknown status counts nowhere.
fn add(counts: &mut ShardCounts, status: &str, n: i64) {
    if let Ok(s) = status.parse::<VideoStatus>() {
        *counts.get_mut(s) += n.max(0) as u64;
    }
}

/// Reads the kept counts (of `only_shard`, or of every shard) with their layout, in one
/// statement so the two cannot disagree. `None` when the table is missing (a database
/// opened read-only that this build has not migrated) or records no layout.
async fn kept(conn: &mut dyn Conn, only_shard: Option<u32>) -> Result<Option<Kept>, DbError> {
    let sql = conn.backend().sql();
    if conn.scalar(sql.table_exists, args!["video_counts_layout"]).await?.int() != Some(1) {
        return Ok(None);
    }
    let rows = conn
        .fetch(
            "SELECT l.workers, c.shard, c.status, c.videos FROM video_counts_layout l \
             LEFT JOIN video_counts c ON $1 IS NULL OR c.shard = $1",
            args![only_shard.map(i64::from)],
        )
        .await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let workers = first.int(0) as u32;
    let decode = |r: &Row| Some((r.opt_int(1)?, r.opt_text(2)?.parse().ok()?, r.opt_int(3)?.max(0) as u64));
    Ok(Some(Kept { workers, rows: rows.iter().filter_map(decode).collect() }))
}

/// Videos of shard `worker_id` (of `workers`) by status: the kept counts when they are
/// kept for `workers`, otherwise a count of the shard's rows.
pub(crate) async fn shard_counts(conn: &mut dyn Conn, workers: u32, worker_id: u32) -> Result<ShardCounts, DbError> {
    if let Some(kept) = kept(conn, Some(worker_id)).await?
        && kept.workers == workers
    {
        return Ok(kept.sum(Some(worker_id.into())));
    }
    let rows = conn
        .fetch(
            "SELECT status, count(*) FROM videos WHERE video_id % $1 = $2 GROUP BY status",
            args![workers, worker_id],
        )
        .await?;
    let mut counts = ShardCounts::default();
    for r in rows {
        add(&mut counts, &r.text(0), r.int(1));
    }
    Ok(counts)
}

/// Videos by shard (`video_id % workers`) and status, `workers` entries. Kept counts when
/// they are kept for `workers` (or `workers` is 1: totals, whatever the layout);
/// otherwise one scan of the table.
pub(crate) async fn by_shard(conn: &mut dyn Conn, workers: u32) -> Result<Vec<ShardCounts>, DbError> {
    if let Some(kept) = kept(conn, None).await? {
        if kept.workers == workers {
            return Ok((0..workers).map(|k| kept.sum(Some(k.into()))).collect());
        }
        if workers == 1 {
            return Ok(vec![kept.sum(None)]);
        }
    }
    let rows = conn.fetch("SELECT video_id % $1, status, count(*) FROM videos GROUP BY 1, 2", args![workers]).await?;
    let mut shards = vec![ShardCounts::default(); workers as usize];
    for r in rows {
        if let Some(c) = usize::try_from(r.int(0)).ok().and_then(|k| shards.get_mut(k)) {
            add(c, &r.text(1), r.int(2));
        }
    }
    Ok(shards)
}

/// Makes the counts kept for `workers` shards: if another layout (or none) is recorded,
/// recounts the table in one write transaction. Returns whether it recounted.
///
/// `supervisor start` calls it before starting its workers and a worker calls it when it
/// starts, so a worker run alone (systemd, Kubernetes) keeps its own counts too. The
/// layout is checked again under the backend's lock (`Sql::recount`), so two starters
/// never both recount. A recount reads every row (about 4 s at 10 million videos on a
/// slow machine).
pub(crate) async fn ensure_count_layout(conn: &mut dyn Conn, workers: u32) -> Result<bool, DbError> {
    assert!(workers > 0, "config validation guarantees workers > 0");
    if kept_layout(conn).await? == Some(workers) {
        return Ok(false);
    }
    let sql = conn.backend().sql();
    let recounted = retrying!(conn, |c| {
        let mut tx = c.begin_under(Begin::Write, sql.recount_lock).await?;
        if kept_layout(&mut *tx).await? == Some(workers) {
            return Ok(false);
        }
        for statement in sql.recount {
            let bound: &[Arg] = if statement.contains("$1") { args![workers] } else { &[] };
            tx.execute(statement, bound).await?;
        }
        tx.commit().await?;
        Ok(true)
    })?;
    if recounted {
        tracing::info!(workers, "counted the videos by shard for this layout");
    }
    Ok(recounted)
}

async fn kept_layout(conn: &mut dyn Conn) -> Result<Option<u32>, DbError> {
    Ok(conn.fetch_optional("SELECT workers FROM video_counts_layout", &[]).await?.map(|r| r.int(0) as u32))
}
