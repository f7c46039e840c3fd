//! Riding out a database outage (a restart, a failover, a full disk): the worker's loop
//! keeps turning and its handlers keep running; the database is tried again on a capped
//! backoff, and once it answers, nothing is judged by clocks that ran on without it.
//!
//! Pure bookkeeping, driven by the runner (`runner.rs`): it says when to try again,
//! what `/status` shows, and when sweeps and orphan judgements may resume.

use std::time::Duration;

use shared::DbError;
use shared::backoff::Doubling;
use shared::status::{Database, DbState};
use tokio::time::Instant;

/// Tries while the database is away: 100 ms doubling to 1 s, so work resumes within about
/// a second of its return (the outage bench measures it), while a long outage costs one
/// cheap try a second.
const DELAYS: Doubling = Doubling { first: Duration::from_millis(100), max: Duration::from_secs(1) };

/// What the worker knows of its database.
#[derive(Debug)]
pub struct Outage {
    /// As `/status` shows it.
    shown: Database,
    /// Tries that failed in a row; the next is due at `retry_at`.
    tries: u32,
    retry_at: Instant,
    /// Until this instant nothing is judged by a clock: no lapsed lease is swept and no
    /// shard is taken as orphaned, because every lease and beat lapsed while nobody
    /// could renew them. Set one lease length past each return of the database (and past
    /// a start that had to wait for it), so each process renews its own first.
    judge_after: Instant,
    /// The database answered again and the runner has not yet renewed, beaten, handed
    /// back uncertain claims and re-read its counts.
    back: bool,
    /// The last outage this process saw, Unix ms from and to: leases that lapsed in it
    /// are swept uncounted.
    last_away: Option<(i64, i64)>,
}

impl Outage {
    pub fn new() -> Outage {
        let now = Instant::now();
        Outage { shown: Database::default(), tries: 0, retry_at: now, judge_after: now, back: false, last_away: None }
    }

    /// Whether the database is away now: every database step waits for [`retry_at`].
    pub fn is_out(&self) -> bool {
        self.shown.state != DbState::Ok
    }

    /// When to try the database again, while it is away.
    pub fn retry_at(&self) -> Option<Instant> {
        self.is_out().then_some(self.retry_at)
    }

    /// Whether a step may try the database now.
    pub fn may_try(&self, now: Instant) -> bool {
        !self.is_out() || now >= self.retry_at
    }

    /// Records a step that failed with `e`. Returns the kind of outage when `e` is one
    /// (the caller waits it out) and whether it just began; None when `e` is not an
    /// outage (the caller ends the run, as before).
    pub fn failed(&mut self, e: &DbError, now: Instant, wall_ms: i64) -> Option<(DbState, bool)> {
        let kind = e.outage()?;
        let began = !self.is_out();
        if began || self.shown.state != kind {
            self.shown.since = Some(wall_ms);
        }
        self.shown.state = kind;
        self.shown.last_error = Some(e.to_string());
        self.retry_at = now + DELAYS.after(self.tries);
        self.tries = self.tries.saturating_add(1);
        Some((kind, began))
    }

    /// Records a step that succeeded. Returns how long the database was away when this
    /// ends an outage.
    pub fn answered(&mut self, now: Instant, wall_ms: i64, lease: Duration) -> Option<Duration> {
        if !self.is_out() {
            return None;
        }
        let from = self.shown.since.unwrap_or(wall_ms);
        let away = Duration::from_millis(wall_ms.saturating_sub(from) as u64);
        self.last_away = Some((from, wall_ms));
        self.shown.state = DbState::Ok;
        self.shown.since = Some(wall_ms);
        self.tries = 0;
        self.judge_after = now + lease;
        self.back = true;
        Some(away)
    }

    /// A start that had to wait for the database judges nothing for one lease either.
    pub fn waited_at_start(&mut self, now: Instant, lease: Duration, last_error: Option<String>) {
        self.judge_after = now + lease;
        self.shown.last_error = last_error;
    }

    /// Whether lapsed leases and stale beats may be judged now.
    pub fn may_judge(&self, now: Instant) -> bool {
        now >= self.judge_after
    }

    /// Whether the database came back since the last call: the runner then renews its
    /// leases and beat, hands back uncertain claims and re-reads its counts.
    pub fn take_back(&mut self) -> bool {
        std::mem::take(&mut self.back)
    }

    /// The last outage this process saw, Unix ms from and to.
    pub fn last_away(&self) -> Option<(i64, i64)> {
        self.last_away
    }

    pub fn shown(&self) -> &Database {
        &self.shown
    }
}

impl Default for Outage {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> DbError {
        DbError::Unreachable { db: "postgres://h/fleet".into(), reason: "connection refused".into() }
    }

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn an_outage_is_tried_again_on_a_capped_doubling_backoff() {
        let mut o = Outage::new();
        let t0 = Instant::now();
        assert_eq!(o.failed(&refused(), t0, 1_000), Some((DbState::Unreachable, true)));
        assert_eq!(o.retry_at(), Some(t0 + Duration::from_millis(100)));
        assert!(!o.may_try(t0 + Duration::from_millis(99)));
        assert_eq!(o.failed(&refused(), t0, 1_100), Some((DbState::Unreachable, false)));
        assert_eq!(o.retry_at(), Some(t0 + Duration::from_millis(200)));
        for _ in 0..10 {
            o.failed(&refused(), t0, 2_000);
        }
        assert_eq!(o.retry_at(), Some(t0 + Duration::from_secs(1)), "never more than a second between tries");
        assert_eq!(o.shown().since, Some(1_000), "since when it is away, not since the last try");
    }

    #[test]
    fn an_error_that_is_not_an_outage_is_not_waited_out() {
        let mut o = Outage::new();
        let login = DbError::Open { db: "x".into(), reason: "password authentication failed".into() };
        assert_eq!(o.failed(&login, Instant::now(), 0), None);
        assert!(!o.is_out());
    }

    #[test]
    fn after_the_database_returns_nothing_is_judged_for_one_lease() {
        let mut o = Outage::new();
        let t0 = Instant::now();
        assert!(o.may_judge(t0));
        o.failed(&refused(), t0, 0);
        let back = t0 + Duration::from_secs(30);
        assert_eq!(o.answered(back, 30_000, LEASE), Some(Duration::from_secs(30)));
        assert!(o.take_back() && !o.take_back(), "the return is told once");
        assert!(!o.may_judge(back + LEASE - Duration::from_millis(1)));
        assert!(o.may_judge(back + LEASE));
        assert_eq!(o.shown().state, DbState::Ok);
        assert_eq!(o.last_away(), Some((0, 30_000)));
        assert!(o.shown().last_error.is_some(), "the last error stays readable after the return");
    }

    #[test]
    fn a_step_that_succeeds_while_the_database_is_up_changes_nothing() {
        let mut o = Outage::new();
        assert_eq!(o.answered(Instant::now(), 5, LEASE), None);
        assert!(!o.take_back());
    }
}
