//! What follows a worker's end: its handlers and claims are dealt with at once, then it
//! restarts after a backoff, or rests as errored for a cooldown (`crashes.rs` decides
//! which); while the fleet stops, an end that was not clean is listed.

use std::process::ExitStatus;
use std::time::Instant;

use shared::storage::now_ms;
use shared::time_fmt;

use super::exit_cause::ExitCause;
use shared::storage::EventKind;

use super::crashes::Comeback;
use super::end::Ending;
use super::records::Incident;
use super::state::Fleet;

/// What a worker's end while the fleet stops leaves in the run's events: no restart
/// follows, but a kill or a crash on the way out is listed with its reason like any
/// other. A clean exit is not, nor the damaged-database exit that is ending the run.
fn stop_event(cause: &ExitCause, code: Option<i32>, fatal: bool) -> Option<EventKind> {
    if fatal {
        return None;
    }
    if cause.is_our_kill() {
        Some(EventKind::Kill)
    } else if code != Some(0) {
        Some(EventKind::Crash)
    } else {
        None
    }
}

impl Fleet {
    /// Process `pid` of worker `slot` ended with `status`: its handlers and claims are
    /// dealt with at once, then it restarts, or, while the fleet stops, it is listed if
    /// its end was not a clean one.
    pub(super) fn on_exit(&mut self, slot: u32, pid: u32, status: std::io::Result<ExitStatus>) {
        if !self.slot_mut(slot).runs(pid) {
            return;
        }
        let code = status.as_ref().ok().and_then(|s| s.code());
        let fatal_exit = code == Some(shared::exit::WORKER_DB_CORRUPT as i32);
        if fatal_exit && !matches!(self.phase.ending(), Some(Ending::Damaged(_))) {
            tracing::error!("worker {slot} found the database damaged; ending the run");
            self.end(Ending::Damaged(shared::storage::corrupt_advice(&self.db_path)));
        }
        let limit = self.config.mem_limit;
        let cause = self.slot_mut(slot).exit_cause(&status, limit);
        // Its handlers lead process groups of their own and survived it: end them.
        for pgid in self.slot_mut(slot).take_orphans() {
            shared::process::kill_group(pgid);
        }
        // A run taken over hands nothing back: its ids are another supervisor's now,
        // whose worker of the same id may even have the same pid on its own host, and
        // what this one still held was handed back by the takeover (and is fenced).
        if self.phase.ending() != Some(&Ending::TakenOver) {
            self.release_claims(slot, pid, cause.outcome(), &cause.to_string());
        }
        if let Some(cg) = self.slot_mut(slot).take_cgroup() {
            self.memory.release_worker(&cg);
        }
        if !self.phase.is_running() {
            self.slot_mut(slot).stop();
            tracing::info!("worker {slot} stopped ({cause})");
            if let Some(kind) = stop_event(&cause, code, fatal_exit) {
                self.list(Incident::exit(now_ms(), slot, kind, &cause));
            }
            self.write_record(slot);
        } else if cause == ExitCause::Code(0) {
            self.drained(slot);
        } else {
            self.crashed(slot, cause);
        }
    }

    /// Worker `k` exited 0 while the run runs. The supervisor never gives its workers
    /// `--exit-when-done` (it decides the run's end itself), so a worker of its own
    /// exits 0 only when told to stop: `POST /drain`, or a SIGTERM from outside. Either
    /// way someone wanted it down, and it stays down until resumed (`resume.rs`).
    fn drained(&mut self, k: u32) {
        tracing::info!("worker {k} drained (it exited 0 on request); not restarting it until it is resumed");
        self.slot_mut(k).drained();
        self.write_record(k);
    }

    /// Worker `k` ended unexpectedly, or could not start: it comes back after a backoff,
    /// or rests as errored.
    pub(super) fn crashed(&mut self, k: u32, reason: ExitCause) {
        let now = Instant::now();
        let policy = self.config.restart;
        let comeback = self.slot_mut(k).crashed(reason.clone(), now, now_ms(), &policy);
        match comeback {
            Comeback::Errored(until) => {
                tracing::error!(
                    "worker {k} exited ({reason}); it crashed {} times within {}: marked errored, next try in {}",
                    policy.crash_loop.restarts,
                    time_fmt::duration(policy.crash_loop.window),
                    time_fmt::duration(until - now)
                );
                self.list(Incident::exit(now_ms(), k, EventKind::Errored, &reason));
            }
            Comeback::Backoff(at) => {
                tracing::warn!("worker {k} exited ({reason}); restarting in {}", time_fmt::duration(at - now));
                self.list(Incident::exit(now_ms(), k, EventKind::Restart, &reason));
            }
        }
        self.write_record(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_exit_while_stopping_is_not_listed() {
        assert_eq!(stop_event(&ExitCause::Code(0), Some(0), false), None);
    }

    #[test]
    fn a_kill_on_the_way_out_is_listed_as_a_kill() {
        assert_eq!(stop_event(&ExitCause::GraceOver, None, false), Some(EventKind::Kill));
        let memory = ExitCause::SampledOverLimit { tree: 1, limit: shared::units::ByteSize(1) };
        assert_eq!(stop_event(&memory, None, false), Some(EventKind::Kill));
    }

    #[test]
    fn a_crash_on_the_way_out_is_listed_as_a_crash() {
        assert_eq!(stop_event(&ExitCause::Code(1), Some(1), false), Some(EventKind::Crash));
        assert_eq!(stop_event(&ExitCause::Signal(9), None, false), Some(EventKind::Crash));
        let kernel = ExitCause::KernelOom { limit: shared::units::ByteSize(1) };
        assert_eq!(stop_event(&kernel, None, false), Some(EventKind::Crash));
    }

    #[test]
    fn the_damaged_database_exit_that_ends_the_run_is_not_listed() {
        let code = shared::exit::WORKER_DB_CORRUPT as i32;
        assert_eq!(stop_event(&ExitCause::Code(code), Some(code), true), None);
    }
}
