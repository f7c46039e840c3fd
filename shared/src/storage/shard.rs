//! A worker's session on its shard: the one writer of a worker process. It claims,
//! writes finished attempts, renews and reclaims leases, counts the shard and hands back
//! what it holds, each with busy retries inside.

use std::time::Duration;

use super::postgres::PgShard;
use super::sqlite::SqliteShard;
use super::{Beat, Claimed, Finish, Store};
use crate::config::{DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SOURCE};
use crate::error::DbError;
use crate::retry::RetryPolicy;
use crate::status::{ShardCounts, VideoStatus};

/// Which shard a worker owns and how large a row it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub workers: u32,
    pub worker_id: u32,
    /// Largest source returned by a claim, in bytes; a larger one comes back rejected.
    pub max_source: u64,
    /// Largest payload returned by a claim, in bytes.
    pub max_payload: u64,
}

impl ShardSpec {
    /// Shard `worker_id` of `workers`, with the default row limits.
    pub fn new(workers: u32, worker_id: u32) -> ShardSpec {
        assert!(workers > 0 && worker_id < workers, "config validation guarantees 0 <= worker_id < workers");
        ShardSpec {
            workers,
            worker_id,
            max_source: DEFAULT_MAX_SOURCE.bytes(),
            max_payload: DEFAULT_MAX_PAYLOAD.bytes(),
        }
    }

    /// The same shard, returning sources up to `max_source` bytes and payloads up to
    /// `max_payload` bytes.
    pub fn with_limits(self, max_source: u64, max_payload: u64) -> ShardSpec {
        ShardSpec { max_source, max_payload, ..self }
    }
}

/// What one [`Shard::finish_and_claim`] did.
#[derive(Debug, Default)]
pub struct ClaimRound {
    /// The finished videos whose write took effect; any other had lost its lease.
    pub applied: Vec<i64>,
    /// The videos claimed.
    pub claimed: Vec<Claimed>,
    /// Fewer were due than asked for.
    pub short: bool,
}

/// A worker's own connection to its shard, with its lease owner name (unique to the
/// process) and the claim statements for its shard.
#[derive(Debug)]
pub enum Shard {
    Sqlite(SqliteShard),
    Postgres(PgShard),
}

impl Store {
    /// Opens the session of the worker owning `spec`'s shard, building the shard's claim
    /// index if it is not there yet. (A worker also makes the counts kept for its number
    /// of shards: [`Store::ensure_count_layout`].)
    pub async fn open_shard(&self, spec: ShardSpec) -> Result<Shard, DbError> {
        match self {
            Store::Sqlite(s) => Ok(Shard::Sqlite(SqliteShard::open(s, spec).await?)),
            Store::Postgres(s) => Ok(Shard::Postgres(PgShard::open(s, spec).await?)),
        }
    }
}

impl Shard {
    /// The lease owner name this session writes: the worker's id, pid and a nonce.
    pub fn owner(&self) -> &str {
        match self {
            Shard::Sqlite(s) => s.owner(),
            Shard::Postgres(s) => s.owner(),
        }
    }

    /// Writes `finishes` (fenced on their claims) and claims up to `want` due videos of
    /// the own shard, leased until `now + lease`, together: one transaction where the
    /// backend has them.
    pub async fn finish_and_claim(
        &mut self,
        finishes: &[Finish],
        want: usize,
        now: i64,
        lease: Duration,
    ) -> Result<ClaimRound, DbError> {
        self.finish_and_claim_helping(finishes, want, &[], now, lease).await
    }

    /// As [`Shard::finish_and_claim`], and when the own shard has fewer than `want` due,
    /// then up to [`STEAL_BATCH`] from each shard of `help` in turn (`--steal`). The
    /// round is short when every shard asked had fewer due than asked for.
    pub async fn finish_and_claim_helping(
        &mut self,
        finishes: &[Finish],
        want: usize,
        help: &[u32],
        now: i64,
        lease: Duration,
    ) -> Result<ClaimRound, DbError> {
        match self {
            Shard::Sqlite(s) => s.finish_and_claim(finishes, want, help, now, lease).await,
            Shard::Postgres(s) => s.finish_and_claim(finishes, want, help, now, lease).await,
        }
    }

    /// Extends every lease this session holds to `expires_at`; returns how many.
    pub async fn renew(&mut self, expires_at: i64) -> Result<u64, DbError> {
        match self {
            Shard::Sqlite(s) => s.renew(expires_at).await,
            Shard::Postgres(s) => s.renew(expires_at).await,
        }
    }

    /// Takes back the shard's videos whose lease lapsed before `now`, except this
    /// session's own (a live worker whose renewal was held up must not lose the jobs it
    /// still runs). `policy` decides what becomes of each; returns each video taken back
    /// with its new status.
    pub async fn reclaim_expired(
        &mut self,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        let own = self.spec().1;
        self.reclaim_expired_in(own, now, policy).await
    }

    /// As [`Shard::reclaim_expired`], in shard `shard` of the same fleet: a worker that
    /// helps an orphaned shard also sweeps its lapsed leases, since no owner will.
    pub async fn reclaim_expired_in(
        &mut self,
        shard: u32,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        match self {
            Shard::Sqlite(s) => s.reclaim_expired(shard, now, policy).await,
            Shard::Postgres(s) => s.reclaim_expired(shard, now, policy).await,
        }
    }

    /// The videos of every shard of the fleet by status, indexed by shard.
    pub async fn all_counts(&mut self) -> Result<Vec<ShardCounts>, DbError> {
        match self {
            Shard::Sqlite(s) => s.all_counts().await,
            Shard::Postgres(s) => s.all_counts().await,
        }
    }

    /// Writes this worker's heartbeat: alive at `now`, with a lease of `lease_ms`.
    pub async fn beat(&mut self, now: i64, lease_ms: i64) -> Result<(), DbError> {
        match self {
            Shard::Sqlite(s) => s.beat(now, lease_ms).await,
            Shard::Postgres(s) => s.beat(now, lease_ms).await,
        }
    }

    /// The last heartbeat of each worker of this fleet size that ever beat.
    pub async fn beats(&mut self) -> Result<Vec<Beat>, DbError> {
        match self {
            Shard::Sqlite(s) => s.beats().await,
            Shard::Postgres(s) => s.beats().await,
        }
    }

    /// The fleet size and the own shard: `(workers, worker_id)`.
    pub fn spec(&self) -> (u32, u32) {
        match self {
            Shard::Sqlite(s) => s.spec(),
            Shard::Postgres(s) => s.spec(),
        }
    }

    /// The shard's videos by status: the kept counts, or a count of the shard's rows
    /// where they are not kept for this number of shards.
    pub async fn counts(&mut self) -> Result<ShardCounts, DbError> {
        match self {
            Shard::Sqlite(s) => s.counts().await,
            Shard::Postgres(s) => s.counts().await,
        }
    }

    /// Hands back every video this session still holds (jobs the worker stopped on its
    /// way out), as `policy` decides for a handed-back attempt; returns the ids.
    pub async fn hand_back(&mut self, now: i64, error: &str, policy: &RetryPolicy) -> Result<Vec<i64>, DbError> {
        match self {
            Shard::Sqlite(s) => s.hand_back(now, error, policy).await,
            Shard::Postgres(s) => s.hand_back(now, error, policy).await,
        }
    }
}

/// Most videos one round claims from each shard it helps: small, so a returning owner
/// gets its shard back within a few jobs and several helpers share an orphaned shard.
pub const STEAL_BATCH: usize = 16;

/// Where one round claims from and how many at most from each: the own shard up to
/// `want`, then each helped shard (other than the own) up to `STEAL_BATCH`.
pub(crate) fn sources(own: u32, want: usize, help: &[u32]) -> Vec<(u32, usize)> {
    if want == 0 {
        return Vec::new();
    }
    let mut out = vec![(own, want)];
    out.extend(help.iter().filter(|&&k| k != own).map(|&k| (k, want.min(STEAL_BATCH))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_asks_its_own_shard_first_then_a_small_batch_of_each_helped_one() {
        assert_eq!(sources(1, 64, &[3, 1, 0]), [(1, 64), (3, STEAL_BATCH), (0, STEAL_BATCH)]);
        assert_eq!(sources(1, 2, &[3]), [(1, 2), (3, 2)]);
        assert!(sources(1, 0, &[3]).is_empty());
    }
}
