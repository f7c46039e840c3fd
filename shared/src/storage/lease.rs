//! Leases: who holds one (the owner names a claim writes), renewing the ones a live
//! worker holds, taking back the ones whose worker stopped renewing, and handing back
//! the ones a stopping (or dead) worker held.
//!
//! Taking back and handing back read the claims concerned, let the retry policy decide
//! what becomes of each (`crate::retry`), and write those decisions in one statement,
//! fenced like a finish: a row changes only while it is still running under the same
//! claim token (and, for a lapsed lease, still lapsed), so a worker that finished or
//! renewed in between keeps what it did.

use super::Store;
use super::busy::run;
use super::conn::{Arg, BatchCols, Col, Conn, Row, args};
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, VideoStatus};

impl Store {
    /// Hands back every video worker `worker_id` held while it ran as process `pid`. It
    /// is gone, so each attempt counts and `policy` decides what becomes of the video;
    /// `outcome` (crashed, or memory when the memory limit ended it) and `error` are
    /// recorded. `released` is the exception: a worker known to have stopped on request
    /// (during a database outage, when it could not say so), whose attempts do not
    /// count. Returns each video handed back with its new status.
    pub async fn release_process(
        &self,
        worker_id: u32,
        pid: u32,
        outcome: Outcome,
        error: &str,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        let pattern = owner_pattern(worker_id, pid);
        let why = (if outcome == Outcome::Released { Ending::HandedBack } else { Ending::WorkerGone }, outcome);
        run!(self, |c| release_matching(c, (&pattern, &[]), now, why, error, policy).await)
    }
}

/// Extends every lease `owner` holds to `expires_at`. One statement however many videos
/// the worker runs; returns how many it renewed.
pub(crate) async fn renew_owner(conn: &mut dyn Conn, owner: &str, expires_at: i64) -> Result<u64, DbError> {
    conn.execute(
        "UPDATE videos SET lease_expires_at = $1 WHERE status = 'running' AND lease_owner = $2 AND lease_expires_at < $1",
        args![expires_at, owner],
    )
    .await
}

const HELD_COLUMNS: &str =
    "SELECT video_id, lease_token, attempts, lease_owner, started_at, lease_expires_at FROM videos";

/// Rows written by other tools may hold anything: what does not decode reads as absent
/// rather than panicking (the write is fenced on what was read, so nothing is lost).
fn held(rows: Vec<Row>) -> Vec<Held> {
    rows.into_iter()
        .map(|r| Held {
            video_id: r.int(0),
            token: r.opt_int(1),
            attempts: r.int(2),
            owner: r.opt_text(3),
            started_at: r.opt_int(4),
            expires_at: r.opt_int(5),
        })
        .collect()
}

/// Takes back the videos of shard `shard` whose lease lapsed before `now`, except those
/// `own` holds: a live worker whose renewal was held up (a long lock held by someone
/// else) must not take back the jobs it is still running. Their worker is gone, so
/// `policy` decides as for a lost worker. The modulus is bound here: the sweep reads
/// the small set of running rows, not the pending index. Returns each video taken back
/// with its new status.
///
/// A lease that lapsed within `away` (when the sweeper saw the database gone, as Unix
/// milliseconds from and to) lapsed because nobody could renew it: its attempt is handed
/// back uncounted, as for a worker stopped while the database was away.
pub(crate) async fn reclaim_expired(
    conn: &mut dyn Conn,
    (workers, shard): (u32, u32),
    own: &str,
    (now, away): (i64, Option<(i64, i64)>),
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let sql = format!(
        "{HELD_COLUMNS} WHERE status = 'running' AND lease_expires_at < $1 AND video_id % $2 = $3 AND lease_owner <> $4"
    );
    let rows = conn.fetch(&sql, args![now, workers, shard, own]).await?;
    let settles: Vec<Settle> = held(rows)
        .into_iter()
        .map(|h| {
            let owner = h.owner.as_deref().unwrap_or("?");
            let lapsed_away = away.zip(h.expires_at).is_some_and(|((from, to), at)| (from..=to).contains(&at));
            let (ending, error) = if lapsed_away {
                (Ending::HandedBack, format!("lease expired while the database was away: {owner} could not renew it"))
            } else {
                (Ending::WorkerGone, format!("lease expired: {owner} stopped renewing it"))
            };
            Settle::of(&h, policy, ending, Outcome::Expired, error, now, Some(now))
        })
        .collect();
    settle(conn, &settles).await
}

/// Hands back every running video whose owner matches `owner_like` (a LIKE pattern such
/// as `worker-1/4242:%`, the owner names of one process; an owner name is its own
/// pattern), but those claimed under a token in `keep`, recording `outcome` and `error`.
/// `ending` says why: a worker stopping on request hands back its attempts, a dead
/// one's count; `policy` decides the rest.
pub(crate) async fn release_matching(
    conn: &mut dyn Conn,
    (owner_like, keep): (&str, &[i64]),
    now: i64,
    (ending, outcome): (Ending, Outcome),
    error: &str,
    policy: &RetryPolicy,
) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    let sql = format!("{HELD_COLUMNS} WHERE status = 'running' AND lease_owner LIKE $1");
    let rows = conn.fetch(&sql, args![owner_like]).await?;
    let settles: Vec<Settle> = held(rows)
        .iter()
        .filter(|h| h.token.is_none_or(|t| !keep.contains(&t)))
        .map(|h| Settle::of(h, policy, ending, outcome, error.to_string(), now, None))
        .collect();
    settle(conn, &settles).await
}

const SETTLE: &str = "UPDATE videos SET \
       status = j.status, attempts = attempts - j.give_back, last_outcome = j.outcome, last_error = j.error, \
       run_after = j.run_after, finished_at = j.finished_at, duration_ms = j.duration_ms, \
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
     FROM {rows} \
     WHERE videos.video_id = j.video_id AND videos.status = 'running' \
       AND videos.lease_token IS NOT DISTINCT FROM j.token \
       AND (j.lapsed_before IS NULL OR videos.lease_expires_at < j.lapsed_before) \
     RETURNING videos.video_id, videos.status";

const SETTLE_COLS: BatchCols = BatchCols(&[
    ("video_id", Col::Int),
    ("token", Col::Int),
    ("status", Col::Text),
    ("give_back", Col::Int),
    ("outcome", Col::Text),
    ("error", Col::Text),
    ("run_after", Col::Int),
    ("finished_at", Col::Int),
    ("duration_ms", Col::Int),
    ("lapsed_before", Col::Int),
]);

/// Writes settled claims; returns each video whose write took effect, with its status.
async fn settle(conn: &mut dyn Conn, settles: &[Settle]) -> Result<Vec<(i64, VideoStatus)>, DbError> {
    if settles.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Vec<Arg>> = settles
        .iter()
        .map(|s| {
            vec![
                s.video_id.into(),
                s.token.into(),
                s.status.as_str().into(),
                s.give_back.into(),
                s.outcome.as_str().into(),
                s.error.as_str().into(),
                s.run_after.into(),
                s.finished_at.into(),
                s.duration_ms.into(),
                s.lapsed_before.into(),
            ]
        })
        .collect();
    let written = conn.batch(SETTLE, SETTLE_COLS, &rows).await?;
    // Our own write: the status is one this build wrote.
    Ok(written.iter().map(|r| (r.int(0), r.text(1).parse().unwrap_or(VideoStatus::Pending))).collect())
}

/// The lease owner name of a worker process; `nonce` tells apart two processes that
/// got the same pid.
pub(crate) fn owner_name(worker_id: u32, pid: u32, nonce: u32) -> String {
    format!("worker-{worker_id}/{pid}:{nonce:x}")
}

/// The LIKE pattern matching every lease owner name of worker `worker_id` running as
/// process `pid`.
pub(crate) fn owner_pattern(worker_id: u32, pid: u32) -> String {
    format!("worker-{worker_id}/{pid}:%")
}

/// Who a lease owner name (a claim's, an attempt's `worker`) names: the worker id and
/// the process id. None for a name the fleet did not write.
pub fn owner_of(owner: &str) -> Option<(u32, u32)> {
    let (worker_id, rest) = owner.strip_prefix("worker-")?.split_once('/')?;
    let (pid, _nonce) = rest.split_once(':')?;
    Some((worker_id.parse().ok()?, pid.parse().ok()?))
}

/// A running video's claim, as read before it is settled without its worker.
pub(crate) struct Held {
    pub video_id: i64,
    /// None only for a row someone else set running without a claim.
    pub token: Option<i64>,
    pub attempts: i64,
    pub owner: Option<String>,
    pub started_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A claim settled without its worker, ready to be written.
pub(crate) struct Settle {
    pub video_id: i64,
    pub token: Option<i64>,
    pub status: VideoStatus,
    /// 1 when the attempt is handed back uncounted: the claim's increment is undone.
    pub give_back: i64,
    pub outcome: Outcome,
    pub error: String,
    pub run_after: i64,
    pub finished_at: i64,
    pub duration_ms: Option<i64>,
    /// For a lapsed lease: the write lands only while it is still lapsed at this time.
    pub lapsed_before: Option<i64>,
}

impl Settle {
    pub(crate) fn of(
        h: &Held,
        policy: &RetryPolicy,
        ending: Ending,
        outcome: Outcome,
        error: String,
        now: i64,
        lapsed_before: Option<i64>,
    ) -> Settle {
        let attempt = u32::try_from(h.attempts).unwrap_or(0);
        let next = policy.next(attempt, ending, now);
        Settle {
            video_id: h.video_id,
            token: h.token,
            status: next.status(),
            give_back: i64::from(!next.counts()),
            outcome,
            error,
            run_after: next.run_after(now),
            finished_at: now,
            duration_ms: h.started_at.map(|s| now - s),
            lapsed_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_name_tells_its_worker_and_process() {
        assert_eq!(owner_of(&owner_name(3, 4242, 0xbeef)), Some((3, 4242)));
        assert_eq!(owner_of("raw-floor"), None);
        assert!(owner_name(3, 4242, 1).starts_with(owner_pattern(3, 4242).trim_end_matches('%')));
    }
}
