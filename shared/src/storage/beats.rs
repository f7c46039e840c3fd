//! Worker heartbeats: each worker's row in `worker_beats`, written when it starts and
//! every third of its lease, so the other workers can tell a shard whose owner is gone
//! for good (a dead host, an unscheduled pod, a worker errored by the crash-loop rule)
//! from one whose owner is only busy. Who may take from whom is decided in the worker
//! (`worker::steal`); this module only reads and writes the rows.

use super::conn::{Conn, args};
use crate::error::DbError;

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

/// Writes worker `worker_id`'s beat in a fleet of `workers`.
pub(crate) async fn beat(
    conn: &mut dyn Conn,
    (workers, worker_id): (u32, u32),
    owner: &str,
    now: i64,
    lease_ms: i64,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO worker_beats (workers, worker_id, owner, beat_at, lease_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workers, worker_id) DO UPDATE SET owner = excluded.owner, beat_at = excluded.beat_at, \
         lease_ms = excluded.lease_ms",
        args![workers, worker_id, owner, now, lease_ms],
    )
    .await?;
    Ok(())
}

/// Every beat of a fleet of `workers`, by worker id.
pub(crate) async fn beats(conn: &mut dyn Conn, workers: u32) -> Result<Vec<Beat>, DbError> {
    let rows = conn
        .fetch(
            "SELECT worker_id, owner, beat_at, lease_ms FROM worker_beats WHERE workers = $1 ORDER BY worker_id",
            args![workers],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Beat { worker_id: r.int(0) as u32, owner: r.text(1), beat_at: r.int(2), lease_ms: r.int(3) })
        .collect())
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
