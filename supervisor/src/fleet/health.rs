//! Liveness: polling each worker's /health (often while it starts, every
//! `--health-interval` after), and killing a worker silent for too long, unless the
//! silence was this loop's own stall (`health_rounds.rs` judges both).

use std::time::{Duration, Instant};

use shared::time_fmt;

use super::health_rounds::silence;
use super::probe;
use super::slot::SlotState;
use super::state::{Event, Fleet};

/// How long one /health request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Fleet {
    /// Polls /health of every worker (or only the starting ones) and kills workers that
    /// have been silent too long.
    pub(super) fn check_health(&mut self, only_starting: bool) {
        let now = Instant::now();
        if !only_starting
            && let Some(gap) =
                self.health_rounds.full_round(now, self.config.health_interval, self.config.unhealthy_after)
        {
            tracing::warn!("the supervisor was stalled for {}; health verdicts wait", time_fmt::duration(gap));
        }
        let judging = self.health_rounds.judging(now);
        for s in &mut self.slots {
            let Some(pid) = s.pid() else { continue };
            if only_starting && s.state() != SlotState::Starting {
                continue;
            }
            let started = s.started().unwrap_or(now);
            let verdict =
                silence(started, s.last_healthy(), now, self.config.ready_timeout, self.config.unhealthy_after);
            if judging
                && !s.is_being_killed()
                && let Some(reason) = verdict
            {
                tracing::warn!("worker {}: {reason}; killing it", s.id);
                if let Some(pid) = s.kill(reason) {
                    shared::process::kill_group(pid);
                }
                continue;
            }
            let (ip, port, tx, slot) = (self.reach, s.port, self.events_tx.clone(), s.id);
            tokio::spawn(async move {
                let ok = probe::healthy(ip, port, PROBE_TIMEOUT).await;
                let _ = tx.send(Event::Health { slot, pid, ok });
            });
        }
    }

    /// A /health answer (or its failure) from process `pid` of worker `k`.
    pub(super) fn on_health(&mut self, k: u32, pid: u32, ok: bool) {
        if !ok {
            return;
        }
        if let Some(took) = self.slot_mut(k).answered(pid, Instant::now()) {
            tracing::info!("worker {k} ready in {} ms", took.as_millis());
            self.write_record(k);
        }
    }
}
