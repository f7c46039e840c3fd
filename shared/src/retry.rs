//! What becomes of a video when an attempt at it ends: done, tried again (and when),
//! failed for good, or handed back without counting. Decided here, once, for every way
//! an attempt ends (a handler's outcome, a lapsed lease, a worker that died, a worker
//! that stopped); the storage writes what this decides and decides nothing itself.

use std::time::Duration;

use rand::RngExt;

use crate::backoff::Doubling;
use crate::status::{Outcome, VideoStatus};

/// Why an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its handler came to an outcome of its own: done, or failed (error, timeout,
    /// memory, rejected).
    Job(Outcome),
    /// The worker holding it is gone: it died, or its lease lapsed. That is not the
    /// video's doing, so it is due again at once; the attempt still counts, so a video
    /// that takes its worker down every time cannot retry forever.
    WorkerGone,
    /// Its worker stopped it on the way out (a stop, a second signal, the grace period):
    /// handed back, the attempt not counted.
    HandedBack,
}

/// What happens next to a video whose attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Pending again, due at `at` (Unix ms); the attempt counts.
    Retry {
        at: i64,
    },
    /// Failed for good, with the attempt's error as its last.
    Fail,
    /// Pending again, due at once, and the attempt does not count.
    GiveBack,
}

impl Next {
    /// The status the video takes.
    pub fn status(self) -> VideoStatus {
        match self {
            Next::Done => VideoStatus::Done,
            Next::Retry { .. } | Next::GiveBack => VideoStatus::Pending,
            Next::Fail => VideoStatus::Failed,
        }
    }

    /// The video's `run_after` once an attempt ended at `at`: the retry's time, else `at`
    /// (due at once, or a finished video's mark).
    pub fn run_after(self, at: i64) -> i64 {
        match self {
            Next::Retry { at: due } => due,
            _ => at,
        }
    }

    /// Whether the attempt counts toward `--max-attempts`.
    pub fn counts(self) -> bool {
        self != Next::GiveBack
    }
}

/// `--max-attempts`, `--backoff` and `--backoff-max`, as one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// What becomes of a video whose attempt `attempt` (from 1) ended at `at` (Unix ms).
    pub fn next(&self, attempt: u32, ending: Ending, at: i64) -> Next {
        self.decide(attempt, ending, at, || rand::rng().random_range(0.8..1.2))
    }

    /// [`next`](Self::next) with the retry delay's jitter given, for tests.
    pub fn next_with_jitter(&self, attempt: u32, ending: Ending, at: i64, jitter: f64) -> Next {
        self.decide(attempt, ending, at, || jitter)
    }

    /// The jitter is drawn only for a delayed retry: done videos, the bulk, draw none.
    fn decide(&self, attempt: u32, ending: Ending, at: i64, jitter: impl FnOnce() -> f64) -> Next {
        match ending {
            Ending::HandedBack => Next::GiveBack,
            Ending::Job(Outcome::Done) => Next::Done,
            // The row cannot be run as it is; no retry can change that.
            Ending::Job(Outcome::Rejected) => Next::Fail,
            _ if attempt >= self.max_attempts => Next::Fail,
            Ending::WorkerGone => Next::Retry { at },
            Ending::Job(_) => Next::Retry { at: at + self.delay(attempt, jitter()).as_millis() as i64 },
        }
    }

    /// When attempt `attempt` (from 1) has failed: the delay before the next one.
    /// `backoff * 2^(attempt-1)`, capped, with ±20% jitter so a burst of failures does not
    /// come back as a burst.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = Doubling { first: self.backoff, max: self.backoff_max }.after(attempt.saturating_sub(1));
        base.mul_f64(jitter.clamp(0.8, 1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, backoff: Duration::from_secs(60), backoff_max: Duration::from_secs(3600) }
    }

    #[test]
    fn retry_delays_double_from_the_base_up_to_the_cap() {
        let d: Vec<u64> = (1..=4).map(|a| policy().delay(a, 1.0).as_secs()).collect();
        assert_eq!(d, [60, 120, 240, 480]);
        assert_eq!(policy().delay(40, 1.0), Duration::from_secs(3600));
    }

    #[test]
    fn a_failed_job_backs_off_until_its_last_attempt_then_fails() {
        let p = policy();
        let error = Ending::Job(Outcome::Error);
        assert_eq!(p.next_with_jitter(1, error, AT, 1.0), Next::Retry { at: AT + 60_000 });
        assert_eq!(p.next_with_jitter(2, Ending::Job(Outcome::Timeout), AT, 1.0), Next::Retry { at: AT + 120_000 });
        assert_eq!(p.next_with_jitter(3, error, AT, 1.0), Next::Fail);
        assert_eq!(p.next_with_jitter(1, Ending::Job(Outcome::Done), AT, 1.0), Next::Done);
        assert_eq!(p.next_with_jitter(1, Ending::Job(Outcome::Rejected), AT, 1.0), Next::Fail, "never retried");
    }

    #[test]
    fn a_lost_worker_retries_at_once_and_counts_the_attempt_a_stopping_one_gives_it_back() {
        let p = policy();
        assert_eq!(p.next_with_jitter(1, Ending::WorkerGone, AT, 1.0), Next::Retry { at: AT });
        assert_eq!(p.next_with_jitter(3, Ending::WorkerGone, AT, 1.0), Next::Fail);
        let back = p.next_with_jitter(3, Ending::HandedBack, AT, 1.0);
        assert_eq!(
            (back, back.status(), back.run_after(AT), back.counts()),
            (Next::GiveBack, VideoStatus::Pending, AT, false)
        );
    }
}
