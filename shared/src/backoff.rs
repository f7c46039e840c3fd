//! The one doubling backoff: a delay that starts at `first` and doubles with each try,
//! up to `max`. The retry decision, the supervisor's restarts and the HTTP handler's
//! push-back waits each pass their own parameters.

use std::time::Duration;

/// `first`, doubled with each try, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubling {
    pub first: Duration,
    pub max: Duration,
}

impl Doubling {
    /// The delay after `n` earlier doublings: `first * 2^n`, at most `max`.
    pub fn after(&self, n: u32) -> Duration {
        // 2^31 of any delay worth waiting is past every cap; the shift must not overflow.
        self.first.saturating_mul(1u32 << n.min(31)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap() {
        let d = Doubling { first: Duration::from_millis(100), max: Duration::from_secs(1) };
        let delays: Vec<u128> = (0..6).map(|n| d.after(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_very_long_streak_stays_at_the_cap() {
        let d = Doubling { first: Duration::from_secs(60), max: Duration::from_secs(3600) };
        assert_eq!(d.after(u32::MAX), Duration::from_secs(3600));
    }
}
