//! Leases: who holds one (the owner names a claim writes), and the leases of workers
//! that are gone, which the supervisor hands back when a worker dies or when it finds
//! the claims of a run whose supervisor was killed. (A worker's own leases, renewed,
//! reclaimed and handed back, are its [`Shard`](super::Shard)'s.)

use super::Store;
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, VideoStatus};

impl Store {
    /// Hands back every video worker `worker_id` held while it ran as process `pid`. It
    /// is gone, so each attempt counts and `policy` decides what becomes of the video;
    /// `outcome` (crashed, or memory when the memory limit ended it) and `error` are
    /// recorded. Returns each video handed back with its new status.
    pub async fn release_process(
        &self,
        worker_id: u32,
        pid: u32,
        outcome: Outcome,
        error: &str,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        match self {
            Store::Sqlite(s) => s.release_process(worker_id, pid, outcome, error, now, policy).await,
            Store::Postgres(s) => s.release_process(worker_id, pid, outcome, error, now, policy).await,
        }
    }
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
