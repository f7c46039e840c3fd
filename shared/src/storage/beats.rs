//! Worker heartbeats: each worker's row in `worker_beats`, written when it starts and
//! every third of its lease, so the other workers can tell a shard whose owner is gone
//! for good (a dead host, an unscheduled pod, a worker errored by the crash-loop rule)
//! from one whose owner is only busy. Who may take from whom is decided in the worker
//! (`worker::steal`); this module only reads and writes the rows.

/// One worker's last heartbeat in a fleet of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub worker_id: u32,
    /// The lease owner name of the process that beat (`worker-K/pid:nonce`).
    pub owner: String,
    /// Unix milliseconds, by that worker's clock (the clock its leases are written by).
    pub beat_at: i64,
    /// That worker's lease: past `beat_at + lease_ms` its shard counts as orphaned.
    pub lease_ms: i64,
}

impl Beat {
    /// Whether the worker has let its beat lapse by `now`: it would have beaten at
    /// least twice in a lease, so it is gone (or cut off from the database, which for
    /// its shard is the same).
    pub fn lapsed(&self, now: i64) -> bool {
        self.beat_at.saturating_add(self.lease_ms) < now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_lapses_once_a_whole_lease_has_passed_since_it() {
        let beat = Beat { worker_id: 1, owner: "worker-1/7:1".into(), beat_at: 10_000, lease_ms: 15_000 };
        assert!(!beat.lapsed(25_000));
        assert!(beat.lapsed(25_001));
    }
}
