//! Re-partitioning a running fleet (`supervisor scale N`). The request arrives with the
//! heartbeat (`RunOrder::Rescale`); the fleet drains every worker of the old layout, as
//! a stop does (jobs in flight finish, or at the end of `--grace` are handed back
//! uncounted), and once none is left it records the new layout, in the recorder's queue
//! (`Record::Layout`: the run's size and ids, fresh slot rows, a `fleet_layouts` row),
//! and starts the new one. On this host old and new workers never run together, so its
//! shards change at one moment, and a helper of the old layout (`--steal`) is gone
//! before the new one beats. (Supervisors on other hosts switch when they see their own
//! request; claims are atomic, so that moment can move a video to another host, never
//! run it twice.)

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shared::ids::WorkerIds;
use shared::storage::now_ms;

use super::Fleet;
use super::records::Record;
use super::slot::Slot;

impl Fleet {
    /// Starts the drain for a new layout: `workers` shards, the ids `ids` of them here.
    pub(super) fn begin_rescale(&mut self, workers: u32, ids: Option<String>) {
        if self.stopping.is_some() && self.rescaling.is_none() {
            tracing::info!("not re-partitioning to {workers} shards: the fleet is stopping");
            return;
        }
        let ids = match ids.as_deref().map(str::parse::<WorkerIds>) {
            None => WorkerIds::all(workers),
            Some(Ok(ids)) if ids.check(workers).is_ok() && u32::from(self.args.base_port) + ids.max() <= 65535 => ids,
            Some(Ok(ids)) => {
                tracing::error!(
                    "ignoring a scale request for worker ids {ids} of {workers}: no such ids, or a port past 65535"
                );
                return;
            }
            Some(Err(e)) => {
                tracing::error!("ignoring a scale request with unreadable worker ids: {e}");
                return;
            }
        };
        tracing::info!(
            "re-partitioning from {} to {workers} shards (workers {ids} here): the workers finish or hand back \
             what they hold, then the new layout starts",
            self.args.workers
        );
        self.rescaling = Some((workers, ids));
        if self.stopping.is_none() {
            self.stopping = Some(Instant::now() + self.args.job.grace + Duration::from_secs(5));
            self.signal_all(Signal::SIGTERM);
            for s in self.slots.iter_mut().filter(|s| s.pid().is_none()) {
                s.stop();
            }
        }
    }

    /// With every worker of the old layout gone: records the new layout and makes its
    /// slots, which the loop then starts as at a first start.
    pub(super) async fn apply_rescale(&mut self) -> anyhow::Result<()> {
        let Some((workers, ids)) = self.rescaling.take() else { return Ok(()) };
        // Kept counts for the new size, so the done check and status keep reading rows.
        // Without them they count the table instead: slower, not wrong, so no reason to
        // give up the run.
        if let Err(e) = self.db.ensure_count_layout(workers).await {
            tracing::warn!("could not keep the counts for {workers} shards ({e}); they are counted from the table");
        }
        let was = (self.args.workers, self.args.ids());
        self.args.workers = workers;
        self.args.worker_ids = (!ids.is_all(workers)).then(|| ids.clone());
        self.run.workers = i64::from(workers);
        self.run.worker_ids = self.args.worker_ids.as_ref().map(ToString::to_string);
        self.record(Record::Layout(Box::new(self.run.clone())));
        for s in &mut self.slots {
            if let Some(cg) = s.take_cgroup() {
                self.memory.release_worker(&cg);
            }
        }
        self.slots = ids.iter().map(|k| Slot::new(k, self.args.base_port + k as u16)).collect();
        self.next_start = 0;
        self.last_start = None;
        self.stopping = None;
        tracing::info!(
            at = now_ms(),
            "re-partitioned: {workers} shards (was {}), starting workers {ids} here (was {})",
            was.0,
            was.1
        );
        Ok(())
    }
}
