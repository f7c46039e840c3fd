//! A worker's session on PostgreSQL: one connection of its own. The finished attempts
//! that arrived while the last round ran are written with the next claim in one
//! transaction (READ COMMITTED: each statement is correct on its own, fenced and
//! re-checked; the transaction saves commits and makes the round all or nothing).

use std::time::Duration;

use rand::RngExt;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Postgres};

use super::claim::Claimer;
use super::{PgStore, beats, counts, finish, lease};
use crate::error::DbError;
use crate::retry::{Ending, RetryPolicy};
use crate::status::{Outcome, ShardCounts, VideoStatus};
use crate::storage::busy::BusyRetry;
use crate::storage::shard::sources;
use crate::storage::{Beat, ClaimRound, Finish, ShardSpec};

pub struct PgShard {
    conn: PoolConnection<Postgres>,
    claimer: Claimer,
}

impl std::fmt::Debug for PgShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShard").field("claimer", &self.claimer).finish_non_exhaustive()
    }
}

impl PgShard {
    pub(crate) async fn open(store: &PgStore, spec: ShardSpec) -> Result<PgShard, DbError> {
        let mut conn = store.pool().acquire().await?;
        let owner = crate::storage::lease::owner_name(spec.worker_id, std::process::id(), rand::rng().random::<u32>());
        let claimer = Claimer::new(spec.workers, spec.worker_id, owner, spec.max_source, spec.max_payload);
        claimer.ensure_index(&mut conn).await?;
        Ok(PgShard { conn, claimer })
    }

    pub fn owner(&self) -> &str {
        self.claimer.owner()
    }

    pub fn spec(&self) -> (u32, u32) {
        (self.claimer.workers(), self.claimer.worker_id())
    }

    pub(crate) async fn finish_and_claim(
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
        let mut busy = BusyRetry::new();
        loop {
            let attempt = async {
                let mut tx = self.conn.begin().await?;
                let applied = finish::finish_batch(&mut tx, finishes).await?;
                // The own shard first, then a small batch from each shard helped.
                // Short when every shard asked had fewer due than asked for: more may be
                // due in one that filled its batch.
                let mut claimed = Vec::new();
                let mut short = false;
                let mut all_short = true;
                for (shard, cap) in sources(self.claimer.worker_id(), want, help) {
                    let until = (claimed.len() + cap).min(want);
                    short = false;
                    while claimed.len() < until && !short {
                        let ask = batch_size(until - claimed.len());
                        let got = self.claimer.claim(&mut tx, shard, ask, now, lease).await?;
                        short = got.len() < ask;
                        claimed.extend(got);
                    }
                    all_short &= short;
                    if claimed.len() >= want {
                        break;
                    }
                }
                tx.commit().await?;
                let short = short && all_short;
                Ok::<_, DbError>(ClaimRound { applied, claimed, short })
            };
            match attempt.await {
                Ok(round) => return Ok(round),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn renew(&mut self, expires_at: i64) -> Result<u64, DbError> {
        let mut busy = BusyRetry::new();
        loop {
            match lease::renew_owner(&mut self.conn, self.claimer.owner(), expires_at).await {
                Ok(n) => return Ok(n),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn reclaim_expired(
        &mut self,
        shard: u32,
        now: i64,
        policy: &RetryPolicy,
    ) -> Result<Vec<(i64, VideoStatus)>, DbError> {
        let workers = self.claimer.workers();
        let mut busy = BusyRetry::new();
        loop {
            let own = self.claimer.owner();
            match lease::reclaim_expired(&mut self.conn, workers, shard, own, now, policy).await {
                Ok(taken) => return Ok(taken),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn counts(&mut self) -> Result<ShardCounts, DbError> {
        let (workers, worker_id) = (self.claimer.workers(), self.claimer.worker_id());
        let mut busy = BusyRetry::new();
        loop {
            match counts::shard_counts(&mut self.conn, workers, worker_id).await {
                Ok(c) => return Ok(c),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn all_counts(&mut self) -> Result<Vec<ShardCounts>, DbError> {
        let workers = self.claimer.workers();
        let mut busy = BusyRetry::new();
        loop {
            match counts::by_shard(&mut self.conn, workers).await {
                Ok(c) => return Ok(c),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn beat(&mut self, now: i64, lease_ms: i64) -> Result<(), DbError> {
        let (workers, worker_id) = (self.claimer.workers(), self.claimer.worker_id());
        let mut busy = BusyRetry::new();
        loop {
            match beats::beat(&mut self.conn, workers, worker_id, self.claimer.owner(), now, lease_ms).await {
                Ok(()) => return Ok(()),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn beats(&mut self) -> Result<Vec<Beat>, DbError> {
        let workers = self.claimer.workers();
        let mut busy = BusyRetry::new();
        loop {
            match beats::beats(&mut self.conn, workers).await {
                Ok(b) => return Ok(b),
                Err(e) => busy.wait(e).await?,
            }
        }
    }

    pub(crate) async fn hand_back(&mut self, now: i64, error: &str, policy: &RetryPolicy) -> Result<Vec<i64>, DbError> {
        let why = (Ending::HandedBack, Outcome::Released);
        let mut busy = BusyRetry::new();
        loop {
            let owner = self.claimer.owner();
            match lease::release_matching(&mut self.conn, owner, now, why, error, policy).await {
                Ok(back) => return Ok(back.into_iter().map(|(id, _)| id).collect()),
                Err(e) => busy.wait(e).await?,
            }
        }
    }
}

/// The batch one claim asks for: `want` rounded down to a power of two, at most the
/// largest batch.
fn batch_size(want: usize) -> usize {
    if want == 0 { 0 } else { 1 << want.min(super::claim::MAX_BATCH).ilog2() }
}
