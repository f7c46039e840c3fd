//! A worker's session on its shard: the one writer of a worker process, on one
//! connection of its own, so every write of the worker goes through it in turn and
//! batches naturally. The finished attempts that arrived while the last round ran are
//! written with the next claim in one transaction (on SQLite `BEGIN IMMEDIATE`; on
//! PostgreSQL READ COMMITTED). Each statement in it is correct on its own (the claim and
//! the fenced finish are single statements, as D1 needs), so the transaction only saves
//! commits and makes the round all or nothing. Every call is retried here when the
//! database refuses it for now (`busy::retry`).

use std::time::Duration;

use rand::RngExt;

use super::busy::retrying;
use super::claim::{Claimer, batch_size};
use super::conn::{Begin, Conn};
use super::{Beat, Claimed, Finish, Store, beats, counts, finish, lease};
use crate::config::{DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SOURCE};
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, ShardCounts, VideoStatus};

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
pub struct Shard {
    /// None after an outage broke it (`DbError::outage`; it is closed, not pooled
    /// again): the next call takes a fresh one from `store`, so the session outlives a
    /// database restart.
    conn: Option<Box<dyn Conn>>,
    store: Store,
    claimer: Claimer,
}

/// [`retrying`] on the shard's own connection, taking a fresh one first if an outage
/// broke the last.
macro_rules! session {
    ($shard:expr, |$c:ident| $body:expr) => {{
        if $shard.conn.is_none() {
            $shard.conn = Some($shard.store.conn().await?);
        }
        let conn = &mut **$shard.conn.as_mut().expect("taken just above");
        let result = retrying!(conn, |$c| $body);
        if super::busy::discard_if_broken(conn, &result) {
            $shard.conn = None;
        }
        result
    }};
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("claimer", &self.claimer).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the session of the worker owning `spec`'s shard, building the shard's claim
    /// index if it is not there yet. (A worker also makes the counts kept for its number
    /// of shards: [`Store::ensure_count_layout`].)
    pub async fn open_shard(&self, spec: ShardSpec) -> Result<Shard, DbError> {
        let mut conn = self.conn().await?;
        let owner = lease::owner_name(spec.worker_id, std::process::id(), rand::rng().random::<u32>());
        let backend = conn.backend();
        let claimer = Claimer::new(backend, spec.workers, spec.worker_id, owner, spec.max_source, spec.max_payload);
        claimer.ensure_index(&mut *conn).await?;
        Ok(Shard { conn: Some(conn), store: self.clone(), claimer })
    }
}

impl Shard {
    /// The lease owner name this session writes: the worker's id, pid and a nonce.
    pub fn owner(&self) -> &str {
        &self.claimer.owner
    }

    /// The fleet size and the own shard: `(workers, worker_id)`.
    pub fn spec(&self) -> (u32, u32) {
        (self.claimer.workers, self.claimer.worker_id)
    }

    /// Writes `finishes` (fenced on their claims) and claims up to `want` due videos of
    /// the own shard, leased until `now + lease`, together, in one transaction.
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
        if finishes.is_empty() && want == 0 {
            return Ok(ClaimRound::default());
        }
        let claimer = &self.claimer;
        session!(self, |c| {
            let mut tx = c.begin(Begin::Write).await?;
            let applied = finish::finish_batch(&mut *tx, finishes).await?;
            // Batches are powers of two: fill `want` with a few of them (7 = 4+2+1),
            // from the own shard first, then a small batch from each shard helped.
            // Short when every shard asked had fewer due than asked for: more may be
            // due in one that filled its batch.
            let mut claimed = Vec::new();
            let mut short = false;
            let mut all_short = true;
            for (shard, cap) in sources(claimer.worker_id, want, help) {
                let until = (claimed.len() + cap).min(want);
                short = false;
                while claimed.len() < until && !short {
                    let ask = batch_size(until - claimed.len());
                    let got = claimer.claim(&mut *tx, shard, ask, now, lease).await?;
                    short = got.len() < ask;
                    claimed.extend(got);
                }
                all_short &= short;
                if claimed.len() >= want {
                    break;
                }
            }
            tx.commit().await?;
            Ok(ClaimRound { applied, claimed, short: short && all_short })
        })
    }

    /// Extends every lease this session holds to `expires_at`; returns how many.
    pub async fn renew(&mut self, expires_at: i64) -> Result<u64, DbError> {
        let owner = &self.claimer.owner;
        session!(self, |c| lease::renew_owner(c, owner, expires_at).await)
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
        let own = self.claimer.worker_id;
        self.reclaim_expired_in(own, (now, None), policy).await
    }

    /// As [`Shard::reclaim_expired`], in shard `shard` of the same fleet: a worker that
    /// helps an orphaned shard also sweeps its lapsed leases, since no owner will. A
    /// lease that lapsed within `away` (the last time this process saw the database gone,
    /// Unix ms from and to) counts no attempt.
    pub async fn reclaim_expired_in(
        &mut self,
        shard: u32,
        now: (i64, Option<(i64, i64)>),
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        let (workers, owner) = (self.claimer.workers, &self.claimer.owner);
        session!(self, |c| lease::reclaim_expired(c, (workers, shard), owner, now, policy).await)
    }

    /// The videos of every shard of the fleet by status, indexed by shard.
    pub async fn all_counts(&mut self) -> Result<Vec<ShardCounts>, DbError> {
        let workers = self.claimer.workers;
        session!(self, |c| counts::by_shard(c, workers).await)
    }

    /// The shard's videos by status: the kept counts, or a count of the shard's rows
    /// where they are not kept for this number of shards.
    pub async fn counts(&mut self) -> Result<ShardCounts, DbError> {
        let (workers, worker_id) = self.spec();
        session!(self, |c| counts::shard_counts(c, workers, worker_id).await)
    }

    /// Writes this worker's heartbeat: alive at `now`, with a lease of `lease_ms`.
    pub async fn beat(&mut self, now: i64, lease_ms: i64) -> Result<(), DbError> {
        let (spec, owner) = (self.spec(), &self.claimer.owner);
        session!(self, |c| beats::beat(c, spec, owner, now, lease_ms).await)
    }

    /// The last heartbeat of each worker of this fleet size that ever beat.
    pub async fn beats(&mut self) -> Result<Vec<Beat>, DbError> {
        let workers = self.claimer.workers;
        session!(self, |c| beats::beats(c, workers).await)
    }

    /// Hands back every video this session still holds but those claimed under a token
    /// in `keep` (on its way out: the jobs the worker stopped; after a lost connection:
    /// claims whose COMMIT went through unheard), as `policy` decides for a handed-back
    /// attempt, which does not count; returns the ids.
    pub async fn hand_back(
        &mut self,
        keep: &[i64],
        now: i64,
        error: &str,
        policy: &RetryPolicy,
    ) -> Result<Vec<i64>, DbError> {
        let (owner, why) = ((self.claimer.owner.as_str(), keep), (Ending::HandedBack, Outcome::Released));
        let back = session!(self, |c| lease::release_matching(c, owner, now, why, error, policy).await)?;
        Ok(back.into_iter().map(|(id, _)| id).collect())
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
