//! Drained workers coming back. A drained worker's process is gone, so nothing can ask
//! it to resume: the monitor's page (on any host) stamps a resume request on the live
//! run's slot in the database (`Store::request_resume`), and the supervisor, which
//! looks every second while one of its slots is drained, starts that worker again.

use std::time::Instant;

use super::slot::SlotState;
use super::state::{Event, Fleet};

impl Fleet {
    /// While a slot is drained: takes the resume requests off the run's slots, off the
    /// loop (a database held up by a lock must not stall it); each comes back as an
    /// event.
    pub(super) fn ask_resumes(&self) {
        if !self.phase.is_running() || !self.slots.iter().any(|s| s.state() == SlotState::Drained) {
            return;
        }
        let (db, run_id, events) = (self.db.clone(), self.run.run_id, self.events_tx.clone());
        tokio::spawn(async move {
            match db.take_resumes(run_id).await {
                Ok(slots) => slots.into_iter().for_each(|slot| drop(events.send(Event::Resume { slot }))),
                Err(e) => tracing::warn!("could not read the resume requests: {e}"),
            }
        });
    }

    /// Someone asked for worker `k` back: a drained one starts at once; any other
    /// request changes nothing (a slot of another layout, a worker already back).
    pub(super) fn on_resume(&mut self, k: u32) {
        if !self.phase.is_running() || !self.slots.iter().any(|s| s.id == k) {
            return;
        }
        if self.slot_mut(k).resume(Instant::now()) {
            tracing::info!("worker {k} resumed on request; starting it");
            self.write_record(k);
        }
    }
}
