//! When a crashed worker comes back: after a doubling backoff, or, crashing too often
//! (the crash-loop rule), as errored after a cooldown. Pure logic over `Instant`s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shared::backoff::Doubling;

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

impl RestartPolicy {
    /// 100 ms doubling to 1 s, stable after 30 s, 5 crashes a minute make a crash loop,
    /// a minute's cooldown: what the unit tests of restarts start from.
    #[cfg(test)]
    pub(crate) fn example() -> RestartPolicy {
        RestartPolicy {
            delay: Duration::from_millis(100),
            delay_max: Duration::from_secs(1),
            stable_after: Duration::from_secs(30),
            crash_loop: CrashLoop { restarts: 5, window: Duration::from_secs(60) },
            cooldown: Duration::from_secs(60),
        }
    }
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
            let backoff = Doubling { first: policy.delay, max: policy.delay_max };
            Comeback::Backoff(now + backoff.after(self.streak - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_up_to_the_cap() {
        let p = RestartPolicy {
            crash_loop: CrashLoop { restarts: 100, window: Duration::from_secs(60) },
            ..RestartPolicy::example()
        };
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
        let p = RestartPolicy::example();
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
        let p = RestartPolicy::example();
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
        let p = RestartPolicy::example();
        let mut crashes = Crashes::default();
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(i * 20);
            assert!(matches!(crashes.crashed(Duration::ZERO, now, &p), Comeback::Backoff(_)));
        }
    }
}
