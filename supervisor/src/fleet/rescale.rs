//! Re-partitioning a running fleet (`supervisor scale N`). The request arrives with the
//! heartbeat (`Order::Rescale`); the fleet drains every worker of the old layout, as
//! a stop does (jobs in flight finish, or at the end of `--grace` are handed back
//! uncounted), and once none is left it records the new layout, in the recorder's queue
//! (`Record::Layout`: the run's size and ids, fresh slot rows, a `fleet_layouts` row),
//! and starts the new one. On this host old and new workers never run together, so its
//! shards change at one moment, and a helper of the old layout (`--steal`) is gone
//! before the new one beats. (Supervisors on other hosts switch when they see their own
//! request; claims are atomic, so that moment can move a video to another host, never
//! run it twice.)

use shared::storage::now_ms;
use tokio::time::Instant;

use super::config::Layout;
use super::records::Record;
use super::slot::Slot;
use super::state::{FirstStarts, Fleet};

impl Fleet {
    /// `supervisor scale` asked for `workers` shards, the ids `ids` of them here (all by
    /// default): the workers drain for it, unless the run is ending anyway.
    pub(super) fn begin_rescale(&mut self, workers: u32, ids: Option<&str>) {
        if self.phase.ending().is_some() {
            tracing::info!("not re-partitioning to {workers} shards: the fleet is stopping");
            return;
        }
        let layout = match self.config.rescaled(workers, ids) {
            Ok(layout) => layout,
            Err(why) => {
                tracing::error!("{why}");
                return;
            }
        };
        tracing::info!(
            "re-partitioning from {} to {workers} shards (workers {} here): the workers finish or hand back \
             what they hold, then the new layout starts",
            self.layout.workers,
            layout.ids
        );
        if let Some(acts) = self.phase.rescale(layout, Instant::now(), self.config.job.grace) {
            self.perform(acts);
        }
    }

    /// With every worker of the old layout gone: records `layout` and makes its slots,
    /// which the loop then starts as at a first start.
    pub(super) async fn apply_rescale(&mut self, layout: Layout) {
        let workers = layout.workers;
        // Kept counts for the new size, so the done check and status keep reading rows.
        // Without them they count the table instead: slower, not wrong, so no reason to
        // give up the run.
        if let Err(e) = self.db.ensure_count_layout(workers).await {
            tracing::warn!("could not keep the counts for {workers} shards ({e}); they are counted from the table");
        }
        let was = std::mem::replace(&mut self.layout, layout);
        self.run.workers = i64::from(workers);
        self.run.worker_ids = self.layout.recorded_ids();
        self.record(Record::Layout(Box::new(self.run.clone())));
        for s in &mut self.slots {
            if let Some(cg) = s.take_cgroup() {
                self.memory.release_worker(&cg);
            }
        }
        self.slots = self.layout.ids.iter().map(|k| Slot::new(k, self.config.port(k))).collect();
        self.first_starts = FirstStarts::default();
        tracing::info!(
            at = now_ms(),
            "re-partitioned: {workers} shards (was {}), starting workers {} here (was {})",
            was.workers,
            self.layout.ids,
            was.ids
        );
    }
}
