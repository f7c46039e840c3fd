//! One worker slot: its process, its state, and when it may start again. Pure logic
//! over `Instant`s, so the restart policy is tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::exit_cause::ExitCause;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Spawned; /health has not answered yet.
    Starting,
    /// Spawned and answering /health.
    Running,
    /// Crashed; restarts at the instant.
    Backoff(Instant),
    /// Crashed too often; rests until the instant, then is tried again.
    Errored(Instant),
    /// Not to be started again (the fleet is stopping).
    Stopped,
}

impl SlotState {
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Running => "running",
            SlotState::Backoff(_) => "backoff",
            SlotState::Errored(_) => "errored",
            SlotState::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub struct Slot {
    pub id: u32,
    pub port: u16,
    pub state: SlotState,
    pub pid: Option<u32>,
    /// When the current process started.
    pub started: Option<Instant>,
    pub started_at_ms: Option<i64>,
    pub last_healthy: Option<Instant>,
    pub restarts: u32,
    pub last_reason: Option<ExitCause>,
    pub last_restart_at_ms: Option<i64>,
    pub memory_kills: u32,
    pub rss: u64,
    /// The handlers' process groups seen in the worker's tree at the last sample; killed
    /// if the worker dies, since orphans would run on unwatched.
    pub handler_groups: Vec<u32>,
    /// Why the supervisor killed the current process, if it did (memory, health), so
    /// the exit is recorded with that reason rather than "signal 9".
    pub kill_reason: Option<ExitCause>,
    /// Crashes inside the crash-loop window.
    crashes: VecDeque<Instant>,
    /// Crashes in a row without a stable run; sets the backoff.
    streak: u32,
}

impl Slot {
    pub fn new(id: u32, port: u16) -> Slot {
        Slot {
            id,
            port,
            state: SlotState::Starting,
            pid: None,
            started: None,
            started_at_ms: None,
            last_healthy: None,
            restarts: 0,
            last_reason: None,
            last_restart_at_ms: None,
            memory_kills: 0,
            rss: 0,
            handler_groups: Vec::new(),
            kill_reason: None,
            crashes: VecDeque::new(),
            streak: 0,
        }
    }

    /// A process for this slot started.
    pub fn spawned(&mut self, pid: u32, now: Instant, now_ms: i64) {
        self.pid = Some(pid);
        self.started = Some(now);
        self.started_at_ms = Some(now_ms);
        self.last_healthy = None;
        self.kill_reason = None;
        self.state = SlotState::Starting;
    }

    /// The process exited unexpectedly with `reason`. Decides when it comes back:
    /// after a doubling delay, or, in a crash loop, after the cooldown.
    pub fn crashed(&mut self, reason: ExitCause, now: Instant, now_ms: i64, policy: &RestartPolicy) -> SlotState {
        let ran = self.started.map(|s| now.saturating_duration_since(s)).unwrap_or_default();
        if ran >= policy.stable_after {
            self.streak = 0;
        }
        self.streak += 1;
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|&t| now.saturating_duration_since(t) > policy.crash_loop.window) {
            self.crashes.pop_front();
        }
        self.pid = None;
        self.started = None;
        self.last_reason = Some(reason);
        self.last_restart_at_ms = Some(now_ms);
        self.state = if self.crashes.len() as u32 >= policy.crash_loop.restarts {
            self.crashes.clear();
            self.streak = 0;
            SlotState::Errored(now + policy.cooldown)
        } else {
            let exp = (self.streak - 1).min(20);
            SlotState::Backoff(now + policy.delay.saturating_mul(1 << exp).min(policy.delay_max))
        };
        self.state
    }

    /// When this slot wants to be started again, if it is waiting.
    pub fn due(&self) -> Option<Instant> {
        match self.state {
            SlotState::Backoff(t) | SlotState::Errored(t) => Some(t),
            _ => None,
        }
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
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..6 {
            let now = t0 + Duration::from_secs(i);
            slot.spawned(1, now, 0);
            let at = slot.crashed(ExitCause::Code(1), now, 0, &p);
            delays.push(match at {
                SlotState::Backoff(t) => (t - now).as_millis(),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let p = policy();
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        slot.spawned(1, t0, 0);
        slot.crashed(ExitCause::Code(1), t0, 0, &p);
        slot.spawned(2, t0, 0);
        slot.crashed(ExitCause::Code(1), t0, 0, &p);
        let later = t0 + Duration::from_secs(100);
        slot.spawned(3, t0 + Duration::from_secs(50), 0);
        assert_eq!(
            slot.crashed(ExitCause::Code(1), later, 0, &p),
            SlotState::Backoff(later + Duration::from_millis(100))
        );
    }

    #[test]
    fn a_crash_loop_marks_the_slot_errored_for_the_cooldown() {
        let p = policy();
        let mut slot = Slot::new(1, 3002);
        let t0 = Instant::now();
        let mut last = SlotState::Starting;
        for i in 0..5 {
            let now = t0 + Duration::from_secs(i);
            slot.spawned(10 + i as u32, now, 0);
            last = slot.crashed(ExitCause::Code(i as i32), now, 0, &p);
        }
        assert_eq!(last, SlotState::Errored(t0 + Duration::from_secs(4) + Duration::from_secs(60)));
        assert_eq!(slot.last_reason, Some(ExitCause::Code(4)));
        // After the cooldown it is tried again, with a fresh streak.
        let back = t0 + Duration::from_secs(70);
        slot.spawned(99, back, 0);
        assert_eq!(
            slot.crashed(ExitCause::Code(1), back, 0, &p),
            SlotState::Backoff(back + Duration::from_millis(100))
        );
    }

    #[test]
    fn crashes_spread_wider_than_the_window_are_not_a_loop() {
        let p = policy();
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(i * 20);
            slot.spawned(1, now, 0);
            assert!(matches!(slot.crashed(ExitCause::Code(1), now, 0, &p), SlotState::Backoff(_)));
        }
    }
}
