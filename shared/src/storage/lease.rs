//! Leases: who holds one (the owner names a claim writes), and the leases of workers
//! that are gone, which the supervisor hands back when a worker dies or when it finds
//! the claims of a run whose supervisor was killed. (A worker's own leases, renewed,
//! reclaimed and handed back, are its [`Shard`](super::Shard)'s.)

use super::Store;
use crate::error::DbError;
use crate::retry::RetryPolicy;
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
