//! Leases held by workers that are gone: what the supervisor hands back when a worker
//! dies, or when it finds the claims of a run whose supervisor was killed. (A worker's
//! own leases, renewed, reclaimed and handed back, are its [`Shard`](super::Shard)'s.)

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
