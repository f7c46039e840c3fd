//! The run's life as one value: its workers run, or drain (to end the run, or to start
//! a new layout), or what outlived the drain is being killed. Each step is a pure
//! function of the phase and what happened; it returns what the fleet must do (`Act`),
//! so the rules are tested without processes (see the tests below), and no pair of
//! flags can disagree about where the run is.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::config::Layout;
use super::end::Ending;

/// How long a drain waits beyond the workers' `--grace`: a worker needs a moment after
/// its grace to hand back what it held and exit.
pub const DRAIN_SLACK: Duration = Duration::from_secs(5);

/// How long workers told to stop their jobs now (a second signal, a takeover) get
/// before they are killed.
pub const RUSH: Duration = Duration::from_secs(3);

/// Where the run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Workers run, crashed ones come back, and with --exit-when-done the done check runs.
    Running,
    /// Every worker was told to stop and none starts again; what is still alive at
    /// `deadline` is killed.
    Draining { deadline: Instant, then: Then },
    /// The drain's time ran out and what was left was killed: waiting for the exits.
    Killing { then: Then },
}

/// What follows a drain, once no worker of the run is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// The layout `supervisor scale` asked for starts.
    Rescale(Layout),
    /// The run ends.
    End(Ending),
}

/// What the fleet does for a step, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Record the run as stopping: its workers will not be back.
    RecordStopping,
    /// Send every live worker this signal. SIGTERM: finish or hand back the jobs in
    /// flight within `--grace`. SIGINT, a worker's second signal: stop them now (not a
    /// second SIGTERM, which would merge with a pending first).
    Signal(Signal),
    /// No worker starts again: slots without a process (in a backoff) are stopped.
    StopIdle,
    /// SIGKILL what is left, for outliving the drain.
    KillAll,
}

impl Phase {
    pub fn is_running(&self) -> bool {
        matches!(self, Phase::Running)
    }

    /// What follows the drain, if the run is draining or killing.
    pub fn then(&self) -> Option<&Then> {
        match self {
            Phase::Running => None,
            Phase::Draining { then, .. } | Phase::Killing { then } => Some(then),
        }
    }

    /// Why the run is ending, if it is.
    pub fn ending(&self) -> Option<&Ending> {
        match self.then() {
            Some(Then::End(ending)) => Some(ending),
            _ => None,
        }
    }

    /// When what is left of the drain is to be killed.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Draining { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Whether a request to stop (a first signal, `supervisor stop`) changes anything:
    /// not once the run is ending anyway.
    pub fn heeds_stop(&self) -> bool {
        self.ending().is_none()
    }

    /// The run is to end for `why`. Running: its workers drain for `--grace` (`grace`)
    /// and a little more. Draining for a new layout: the drain goes on, and is the end.
    /// Already ending: the weightier reason stands (`Ending::and`).
    pub fn end(&mut self, why: Ending, now: Instant, grace: Duration) -> Vec<Act> {
        match self {
            Phase::Running => {
                let mut acts = vec![Act::RecordStopping];
                acts.extend(self.drain(Then::End(why), now, grace));
                acts
            }
            Phase::Draining { then, .. } | Phase::Killing { then } => match then {
                Then::Rescale(_) => {
                    *then = Then::End(why);
                    vec![Act::RecordStopping]
                }
                Then::End(ending) => {
                    *ending = ending.clone().and(why);
                    Vec::new()
                }
            },
        }
    }

    /// The run is to end for `why`, and its workers are to stop their jobs now (a
    /// second signal, a takeover): what is alive after [`RUSH`] is killed.
    pub fn rush(&mut self, why: Ending, now: Instant) -> Vec<Act> {
        let mut acts = self.end(why, now, Duration::ZERO);
        acts.push(Act::Signal(Signal::SIGINT));
        if let Phase::Draining { deadline, .. } = self {
            *deadline = now + RUSH;
        }
        acts
    }

    /// `supervisor scale` asked for `layout`. Running: the workers drain, as for a stop,
    /// and the new layout starts once they are gone. Draining for an earlier layout:
    /// the newest one follows. None, and nothing changes, when the run is ending.
    pub fn rescale(&mut self, layout: Layout, now: Instant, grace: Duration) -> Option<Vec<Act>> {
        match self {
            Phase::Running => Some(self.drain(Then::Rescale(layout), now, grace)),
            Phase::Draining { then: then @ Then::Rescale(_), .. }
            | Phase::Killing { then: then @ Then::Rescale(_) } => {
                *then = Then::Rescale(layout);
                Some(Vec::new())
            }
            _ => None,
        }
    }

    /// From running, the one way to drain: every worker is told to finish or hand back
    /// its jobs within `--grace` (`grace`), none starts again, and `then` follows.
    fn drain(&mut self, then: Then, now: Instant, grace: Duration) -> Vec<Act> {
        *self = Phase::Draining { deadline: now + grace + DRAIN_SLACK, then };
        vec![Act::Signal(Signal::SIGTERM), Act::StopIdle]
    }

    /// The drain's deadline passed: what is left is killed.
    pub fn deadline_passed(&mut self) -> Vec<Act> {
        match std::mem::replace(self, Phase::Running) {
            Phase::Draining { then, .. } => {
                *self = Phase::Killing { then };
                vec![Act::KillAll]
            }
            other => {
                *self = other;
                Vec::new()
            }
        }
    }

    /// No worker of the run is left: what follows the drain, if it was draining; the
    /// run is then running again (the new layout) or over.
    pub fn drained(&mut self) -> Option<Then> {
        match std::mem::replace(self, Phase::Running) {
            Phase::Running => None,
            Phase::Draining { then, .. } | Phase::Killing { then } => Some(then),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::end::RunEnd;

    const GRACE: Duration = Duration::from_secs(30);

    fn stopped() -> Ending {
        Ending::Ended(RunEnd::Stopped)
    }

    fn layout(workers: u32) -> Layout {
        Layout::new(workers, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_drains_the_workers_for_their_grace_and_a_little_more() {
        let mut phase = Phase::Running;
        let now = Instant::now();
        let acts = phase.end(stopped(), now, GRACE);
        assert_eq!(acts, [Act::RecordStopping, Act::Signal(Signal::SIGTERM), Act::StopIdle]);
        assert_eq!(phase, Phase::Draining { deadline: now + GRACE + DRAIN_SLACK, then: Then::End(stopped()) });
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_outlives_its_deadline_kills_what_is_left_once() {
        let mut phase = Phase::Running;
        phase.end(stopped(), Instant::now(), GRACE);
        tokio::time::advance(GRACE + DRAIN_SLACK).await;
        assert!(phase.deadline().is_some_and(|d| d <= Instant::now()));
        assert_eq!(phase.deadline_passed(), [Act::KillAll]);
        assert_eq!(phase, Phase::Killing { then: Then::End(stopped()) });
        assert_eq!(phase.deadline(), None, "a killing phase has no deadline left to pass");
        assert_eq!(phase.deadline_passed(), []);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_stops_the_jobs_now_and_kills_after_the_rush() {
        let mut phase = Phase::Running;
        phase.end(stopped(), Instant::now(), GRACE);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert_eq!(phase.rush(stopped(), now), [Act::Signal(Signal::SIGINT)]);
        assert_eq!(phase.deadline(), Some(now + RUSH));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_while_running_drains_and_rushes_at_once() {
        let mut phase = Phase::Running;
        let now = Instant::now();
        let acts = phase.rush(stopped(), now);
        assert_eq!(
            acts,
            [Act::RecordStopping, Act::Signal(Signal::SIGTERM), Act::StopIdle, Act::Signal(Signal::SIGINT)]
        );
        assert_eq!(phase.deadline(), Some(now + RUSH));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescale_drains_as_a_stop_does_but_does_not_record_the_run_stopping() {
        let mut phase = Phase::Running;
        let now = Instant::now();
        assert_eq!(phase.rescale(layout(4), now, GRACE), Some(vec![Act::Signal(Signal::SIGTERM), Act::StopIdle]));
        assert_eq!(phase.then(), Some(&Then::Rescale(layout(4))));
        assert!(phase.heeds_stop(), "a stop during a re-partition still counts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_rescale_keeps_its_deadline_and_becomes_the_end() {
        let mut phase = Phase::Running;
        let now = Instant::now();
        phase.rescale(layout(4), now, GRACE);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(phase.end(stopped(), Instant::now(), GRACE), [Act::RecordStopping]);
        assert_eq!(phase, Phase::Draining { deadline: now + GRACE + DRAIN_SLACK, then: Then::End(stopped()) });
        assert!(!phase.heeds_stop());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescale_during_a_stop_is_refused_and_changes_nothing() {
        let mut phase = Phase::Running;
        phase.end(stopped(), Instant::now(), GRACE);
        let before = phase.clone();
        assert_eq!(phase.rescale(layout(4), Instant::now(), GRACE), None);
        assert_eq!(phase, before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_rescale_during_a_rescale_s_drain_is_the_one_that_follows() {
        let mut phase = Phase::Running;
        phase.rescale(layout(4), Instant::now(), GRACE);
        assert_eq!(phase.rescale(layout(6), Instant::now(), GRACE), Some(vec![]));
        assert_eq!(phase.drained(), Some(Then::Rescale(layout(6))));
        assert_eq!(phase, Phase::Running, "the new layout runs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_after_a_planned_end_is_how_the_run_ends() {
        let mut phase = Phase::Running;
        phase.end(Ending::Ended(RunEnd::AllDone), Instant::now(), GRACE);
        phase.rush(Ending::TakenOver, Instant::now());
        assert_eq!(phase.ending(), Some(&Ending::TakenOver));
    }

    #[test]
    fn a_running_fleet_whose_workers_are_all_gone_is_not_drained() {
        let mut phase = Phase::Running;
        assert_eq!(phase.drained(), None);
        assert!(phase.is_running());
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_drain_ends_the_run_with_its_reason() {
        let mut phase = Phase::Running;
        phase.end(stopped(), Instant::now(), GRACE);
        phase.deadline_passed();
        assert_eq!(phase.drained(), Some(Then::End(stopped())));
    }
}
