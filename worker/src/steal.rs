//! Taking videos from other shards (`--steal`): which shards this worker may help, from
//! the workers' heartbeats (`worker_beats`) and the shards' counts. The claims are the
//! storage's (`Shard::finish_and_claim_helping`): the own shard first, then a small
//! batch of each shard helped, fenced as always, so a video taken from another shard
//! still has exactly one recorded completion.
//!
//! A shard is *unowned* when its worker has not beaten for a whole lease (or never
//! did); it is *orphaned*, and helped, once this worker has also been up for a whole
//! lease, so that a fleet starting together (or starting where yesterday's fleet left
//! its stale beats) does not raid shards whose workers are still coming up. The moment
//! the owner beats again its shard is no longer helped: the next look drops it.

use shared::status::{ShardCounts, Steal};
use shared::storage::Beat;

#[derive(Debug)]
pub struct Helper {
    mode: Steal,
    workers: u32,
    me: u32,
    /// When this worker started, unix ms.
    started_at: i64,
    lease_ms: i64,
    /// Other shards whose worker is not beating, as of the last look.
    unowned: Vec<u32>,
    /// This worker has been up for a whole lease.
    settled: bool,
    /// The shards to help, in the order to ask them.
    targets: Vec<u32>,
    /// Each shard's videos by status, as of the last look.
    counts: Vec<ShardCounts>,
}

impl Helper {
    pub fn new(mode: Steal, workers: u32, me: u32, started_at: i64, lease_ms: i64) -> Helper {
        Helper {
            mode,
            workers,
            me,
            started_at,
            lease_ms,
            unowned: Vec::new(),
            settled: false,
            targets: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != Steal::Off
    }

    /// Takes a new look at the fleet: `beats` of this fleet size and `counts` by shard,
    /// at `now`.
    pub fn look(&mut self, beats: &[Beat], counts: Vec<ShardCounts>, now: i64) {
        if !self.enabled() {
            return;
        }
        self.unowned = (0..self.workers)
            .filter(|&k| k != self.me)
            .filter(|&k| beats.iter().find(|b| b.worker_id == k).is_none_or(|b| b.lapsed(now)))
            .collect();
        let settled = now.saturating_sub(self.started_at) > self.lease_ms;
        self.settled = settled;
        let pending = |k: u32| counts.get(k as usize).map_or(0, |c| c.pending);
        // Orphaned shards first, the largest backlog first: no one else will do them.
        let mut orphaned: Vec<u32> =
            if settled { self.unowned.iter().copied().filter(|&k| pending(k) > 0).collect() } else { Vec::new() };
        orphaned.sort_by_key(|&k| std::cmp::Reverse(pending(k)));
        let mut targets = orphaned;
        if self.mode == Steal::Idle {
            let mut busy: Vec<u32> = (0..self.workers)
                .filter(|&k| k != self.me && !targets.contains(&k) && !self.unowned.contains(&k) && pending(k) > 0)
                .collect();
            busy.sort_by_key(|&k| std::cmp::Reverse(pending(k)));
            targets.extend(busy);
        }
        self.targets = targets;
        self.counts = counts;
    }

    /// The shards to help, in order; empty with `--steal off`.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// Orphaned shards: unowned, and this worker settled. Their lapsed leases are
    /// swept by the helpers, since no owner will.
    pub fn orphaned(&self) -> Vec<u32> {
        let held = |k: &u32| self.counts.get(*k as usize).is_some_and(|c| c.pending + c.running > 0);
        if self.settled { self.unowned.iter().copied().filter(held).collect() } else { Vec::new() }
    }

    /// Whether `--exit-when-done` must wait: another shard still has videos pending or
    /// running. Helping workers leave together once the whole fleet is done, so a
    /// worker that dies late, after the others finished their own shards, still has its
    /// shard finished by them (its beat looks alive for a lease after it died).
    pub fn work_left(&self) -> bool {
        self.enabled() && self.counts.iter().enumerate().any(|(k, c)| k as u32 != self.me && c.pending + c.running > 0)
    }

    /// The shard a claimed video belongs to, when it is not this worker's own.
    pub fn foreign(&self, video_id: i64) -> Option<u32> {
        shared::ids::shard_of(video_id, self.workers).filter(|&shard| shard != self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 10_000;

    fn beat(k: u32, at: i64) -> Beat {
        Beat { worker_id: k, owner: format!("worker-{k}/1:1"), beat_at: at, lease_ms: LEASE }
    }

    fn pending(p: &[u64]) -> Vec<ShardCounts> {
        p.iter().map(|&pending| ShardCounts { pending, ..ShardCounts::default() }).collect()
    }

    #[test]
    fn a_shard_whose_worker_stopped_beating_is_helped_once_this_worker_has_settled() {
        let mut h = Helper::new(Steal::Orphaned, 3, 0, 0, LEASE);
        let beats = [beat(0, 30_000), beat(1, 30_000), beat(2, 1_000)];
        h.look(&beats, pending(&[5, 5, 5]), 5_000);
        assert!(h.targets().is_empty(), "not settled yet: worker 2 may be starting");
        assert!(h.work_left(), "the fleet is not done");
        h.look(&beats, pending(&[5, 5, 5]), 30_000);
        assert_eq!(h.targets(), [2]);
        assert_eq!(h.orphaned(), [2]);
    }

    #[test]
    fn a_shard_is_handed_back_the_moment_its_worker_beats_again() {
        let mut h = Helper::new(Steal::Orphaned, 2, 0, 0, LEASE);
        h.look(&[beat(1, 1_000)], pending(&[0, 9]), 20_000);
        assert_eq!(h.targets(), [1]);
        h.look(&[beat(1, 20_500)], pending(&[0, 9]), 21_000);
        assert!(h.targets().is_empty());
        assert!(h.work_left(), "the fleet is not done: stay, in case worker 1 dies again");
        h.look(&[beat(1, 20_500)], pending(&[0, 0]), 21_000);
        assert!(!h.work_left());
    }

    #[test]
    fn a_worker_that_never_beat_leaves_its_shard_orphaned() {
        let mut h = Helper::new(Steal::Orphaned, 2, 0, 0, LEASE);
        h.look(&[], pending(&[0, 3]), 11_000);
        assert_eq!(h.targets(), [1]);
    }

    #[test]
    fn strict_shards_help_no_one_and_never_wait() {
        let mut h = Helper::new(Steal::Off, 2, 0, 0, LEASE);
        h.look(&[], pending(&[0, 3]), 50_000);
        assert!(h.targets().is_empty());
        assert!(!h.work_left());
    }

    #[test]
    fn an_idle_worker_helps_orphaned_shards_first_then_the_largest_backlog() {
        let mut h = Helper::new(Steal::Idle, 4, 0, 0, LEASE);
        let beats = [beat(0, 50_000), beat(1, 50_000), beat(2, 50_000), beat(3, 1_000)];
        h.look(&beats, pending(&[0, 4, 9, 2]), 50_000);
        assert_eq!(h.targets(), [3, 2, 1]);
        assert_eq!(h.orphaned(), [3]);
        assert!(h.work_left());
        h.look(&beats, pending(&[0, 0, 0, 0]), 50_000);
        assert!(h.targets().is_empty());
        assert!(!h.work_left());
    }

    #[test]
    fn an_orphaned_shard_with_nothing_pending_is_not_asked() {
        let mut h = Helper::new(Steal::Orphaned, 2, 0, 0, LEASE);
        let running = vec![ShardCounts::default(), ShardCounts { running: 2, ..ShardCounts::default() }];
        h.look(&[], running, 20_000);
        assert!(h.targets().is_empty());
        assert_eq!(h.orphaned(), [1], "its lapsed leases are swept by the helpers");
        assert!(h.work_left(), "its running videos come back when their leases lapse");
    }

    #[test]
    fn a_video_of_another_shard_is_told_apart_from_an_own_one() {
        let h = Helper::new(Steal::Idle, 4, 1, 0, LEASE);
        assert_eq!(h.foreign(9), None);
        assert_eq!(h.foreign(10), Some(2));
    }
}
