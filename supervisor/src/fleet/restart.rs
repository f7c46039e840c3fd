//! What follows a worker's end: its handlers and claims are dealt with at once, then it
//! restarts after a doubling backoff, or, crashing too often (the crash-loop rule), rests
//! as errored for a cooldown; while the fleet stops, an end that was not clean is listed.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shared::storage::now_ms;
use shared::units::human_duration;

use super::exit_cause::ExitCause;
use shared::storage::EventKind;

use super::records::Incident;
use super::{Fleet, RunEnd};
use crate::cli::CrashLoop;

/// When crashed workers come back.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Delay before the first restart of a streak; doubles with each crash in a row.
    pub delay: Duration,
    pub delay_max: Duration,
    /// A worker that ran this long starts a new streak when it crashes.
    pub stable_after: Duration,
    pub crash_loop: CrashLoop,
    pub cooldown: Duration,
}

/// When a crashed slot may start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comeback {
    /// After a backoff, at this instant.
    Backoff(Instant),
    /// Crashed too often: errored, tried again at this instant.
    Errored(Instant),
}

/// A slot's recent crashes, which decide its comeback.
#[derive(Debug, Default)]
pub struct Crashes {
    /// Crashes inside the crash-loop window.
    recent: VecDeque<Instant>,
    /// Crashes in a row without a stable run; sets the backoff.
    streak: u32,
}

impl Crashes {
    /// A process that ran for `ran` crashed at `now`. It comes back after a delay that
    /// doubles with each crash in a row, or, at the crash loop's count of crashes within
    /// its window, after the cooldown with a clean slate.
    pub fn crashed(&mut self, ran: Duration, now: Instant, policy: &RestartPolicy) -> Comeback {
        if ran >= policy.stable_after {
            self.streak = 0;
        }
        self.streak += 1;
        self.recent.push_back(now);
        while self.recent.front().is_some_and(|&t| now.saturating_duration_since(t) > policy.crash_loop.window) {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= policy.crash_loop.restarts {
            self.recent.clear();
            self.streak = 0;
            Comeback::Errored(now + policy.cooldown)
        } else {
            let exp = (self.streak - 1).min(20);
            Comeback::Backoff(now + policy.delay.saturating_mul(1 << exp).min(policy.delay_max))
        }
    }
}

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
        if fatal_exit && self.fatal.is_none() {
            tracing::error!("worker {slot} found the database damaged; ending the run");
            self.fatal = Some(shared::storage::corrupt_advice(&self.db_path));
            self.begin_stop(RunEnd::Stopped);
        }
        let limit = self.args.mem_limit;
        let cause = self.slot_mut(slot).exit_cause(&status, limit);
        // Its handlers lead process groups of their own and survived it: end them.
        for pgid in self.slot_mut(slot).take_orphans() {
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
        // A run taken over hands nothing back: its ids are another supervisor's now,
        // whose worker of the same id may even have the same pid on its own host, and
        // what this one still held was handed back by the takeover (and is fenced).
        if !self.taken_over {
            self.release_claims(slot, pid, cause.outcome(), &cause.to_string());
        }
        if let Some(cg) = self.slot_mut(slot).take_cgroup() {
            self.memory.release_worker(&cg);
        }
        if self.stopping.is_some() {
            self.slot_mut(slot).stop();
            tracing::info!("worker {slot} stopped ({cause})");
            if let Some(kind) = stop_event(&cause, code, fatal_exit) {
                self.list(Incident::exit(now_ms(), slot, kind, &cause));
            }
            self.write_record(slot);
        } else {
            self.crashed(slot, cause);
        }
    }

    /// Worker `k` ended unexpectedly, or could not start: it comes back after a backoff,
    /// or rests as errored.
    pub(super) fn crashed(&mut self, k: u32, reason: ExitCause) {
        let now = Instant::now();
        let policy = self.policy;
        let comeback = self.slot_mut(k).crashed(reason.clone(), now, now_ms(), &policy);
        match comeback {
            Comeback::Errored(until) => {
                tracing::error!(
                    "worker {k} exited ({reason}); it crashed {} times within {}: marked errored, next try in {}",
                    self.policy.crash_loop.restarts,
                    human_duration(self.policy.crash_loop.window),
                    human_duration(until - now)
                );
                self.list(Incident::exit(now_ms(), k, EventKind::Errored, &reason));
            }
            Comeback::Backoff(at) => {
                tracing::warn!("worker {k} exited ({reason}); restarting in {}", human_duration(at - now));
                self.list(Incident::exit(now_ms(), k, EventKind::Restart, &reason));
            }
        }
        self.write_record(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            delay: Duration::from_millis(100),
            delay_max: Duration::from_secs(1),
            stable_after: Duration::from_secs(30),
            crash_loop: CrashLoop { restarts: 5, window: Duration::from_secs(60) },
            cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn restart_delays_double_up_to_the_cap() {
        let p = RestartPolicy { crash_loop: CrashLoop { restarts: 100, window: Duration::from_secs(60) }, ..policy() };
        let mut crashes = Crashes::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..6 {
            let now = t0 + Duration::from_secs(i);
            delays.push(match crashes.crashed(Duration::ZERO, now, &p) {
                Comeback::Backoff(t) => (t - now).as_millis(),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let p = policy();
        let mut crashes = Crashes::default();
        let t0 = Instant::now();
        crashes.crashed(Duration::ZERO, t0, &p);
        crashes.crashed(Duration::ZERO, t0, &p);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            crashes.crashed(Duration::from_secs(50), later, &p),
            Comeback::Backoff(later + Duration::from_millis(100))
        );
    }

    #[test]
    fn a_crash_loop_marks_the_slot_errored_for_the_cooldown() {
        let p = policy();
        let mut crashes = Crashes::default();
        let t0 = Instant::now();
        let comebacks: Vec<Comeback> =
            (0..5).map(|i| crashes.crashed(Duration::ZERO, t0 + Duration::from_secs(i), &p)).collect();
        assert!(comebacks[..4].iter().all(|c| matches!(c, Comeback::Backoff(_))), "{comebacks:?}");
        assert_eq!(comebacks[4], Comeback::Errored(t0 + Duration::from_secs(4) + Duration::from_secs(60)));
        // After the cooldown it is tried again, with a fresh streak.
        let back = t0 + Duration::from_secs(70);
        assert_eq!(crashes.crashed(Duration::ZERO, back, &p), Comeback::Backoff(back + Duration::from_millis(100)));
    }

    #[test]
    fn crashes_spread_wider_than_the_window_are_not_a_loop() {
        let p = policy();
        let mut crashes = Crashes::default();
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(i * 20);
            assert!(matches!(crashes.crashed(Duration::ZERO, now, &p), Comeback::Backoff(_)));
        }
    }

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
