//! Health verdicts: when a worker has been silent too long to be let be, and when no
//! verdict may be given because the loop itself was stalled. Pure logic over `Instant`s.

use std::time::{Duration, Instant};

use super::exit_cause::ExitCause;

/// When health verdicts may be given: a loop that was itself stalled cannot tell a
/// silent worker from its own deafness, so it gives every worker a fresh allowance.
#[derive(Debug)]
pub struct HealthRounds {
    /// When the last full round ran; a much older one means this loop was stalled.
    last_round: Instant,
    /// No worker is killed for silence before this: set after a stall of our own.
    grace_until: Option<Instant>,
}

impl HealthRounds {
    pub fn new(now: Instant) -> HealthRounds {
        HealthRounds { last_round: now, grace_until: None }
    }

    /// A full round at `now`, due every `interval`. Returns how long this loop was
    /// stalled, if it was; verdicts then wait for `allowance`.
    pub fn full_round(&mut self, now: Instant, interval: Duration, allowance: Duration) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_round);
        self.last_round = now;
        if gap > interval * 3 + Duration::from_secs(1) {
            self.grace_until = Some(now + allowance);
            return Some(gap);
        }
        None
    }

    /// Whether a worker may be killed for silence at `now`.
    pub fn judging(&self, now: Instant) -> bool {
        self.grace_until.is_none_or(|t| now >= t)
    }
}

/// Why to kill a worker that started at `started` and last answered at `last_healthy`,
/// if it has been silent too long by `now`. One that never answered gets
/// `ready_timeout` on top of `unhealthy_after`.
pub fn silence(
    started: Instant,
    last_healthy: Option<Instant>,
    now: Instant,
    ready_timeout: Duration,
    unhealthy_after: Duration,
) -> Option<ExitCause> {
    let silent_for = now.saturating_duration_since(last_healthy.unwrap_or(started));
    let limit = if last_healthy.is_none() { ready_timeout + unhealthy_after } else { unhealthy_after };
    if silent_for <= limit {
        return None;
    }
    Some(if last_healthy.is_none() {
        ExitCause::NeverReady { allowance: limit }
    } else {
        ExitCause::Unhealthy { silent_for }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Duration = Duration::from_secs(30);
    const UNHEALTHY: Duration = Duration::from_secs(10);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_worker_that_never_answered_gets_the_ready_timeout_on_top() {
        let t0 = Instant::now();
        assert_eq!(silence(t0, None, t0 + secs(40), READY, UNHEALTHY), None);
        assert_eq!(
            silence(t0, None, t0 + secs(41), READY, UNHEALTHY),
            Some(ExitCause::NeverReady { allowance: secs(40) })
        );
    }

    #[test]
    fn a_worker_that_answered_once_is_killed_after_the_unhealthy_allowance() {
        let t0 = Instant::now();
        let answered = Some(t0 + secs(100));
        assert_eq!(silence(t0, answered, t0 + secs(110), READY, UNHEALTHY), None);
        assert_eq!(
            silence(t0, answered, t0 + secs(112), READY, UNHEALTHY),
            Some(ExitCause::Unhealthy { silent_for: secs(12) })
        );
    }

    #[test]
    fn a_stall_of_the_supervisor_holds_verdicts_for_the_allowance() {
        let t0 = Instant::now();
        let interval = secs(1);
        let mut rounds = HealthRounds::new(t0);
        assert_eq!(rounds.full_round(t0 + secs(1), interval, UNHEALTHY), None);
        assert!(rounds.judging(t0 + secs(1)));
        // Five seconds without a round: more than three intervals and a second.
        let after_stall = t0 + secs(6);
        assert_eq!(rounds.full_round(after_stall, interval, UNHEALTHY), Some(secs(5)));
        assert!(!rounds.judging(after_stall + secs(9)));
        assert!(rounds.judging(after_stall + UNHEALTHY));
    }

    #[test]
    fn rounds_on_time_never_hold_verdicts() {
        let t0 = Instant::now();
        let mut rounds = HealthRounds::new(t0);
        for i in 1..=10 {
            assert_eq!(rounds.full_round(t0 + secs(i * 4), secs(1), UNHEALTHY), None);
        }
        assert!(rounds.judging(t0 + secs(40)));
    }
}
