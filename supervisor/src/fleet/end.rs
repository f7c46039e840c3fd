//! How a run ends: the reason (`Ending`), what the user hears of it (`RunEnd`, exit
//! codes) and what its record keeps (`RunState`).

use shared::storage::RunState;

/// Exit codes of `supervisor start`.
pub mod exit {
    /// Every video is done (or the fleet was stopped on request).
    pub const DONE: u8 = 0;
    /// A runtime failure: database, cgroups, spawning.
    pub const FAILURE: u8 = 1;
    /// Bad flags or config.
    pub const USAGE: u8 = 2;
    /// --exit-when-done: the work ended, but some videos failed.
    pub const SOME_FAILED: u8 = 3;
    /// --exit-when-done: work is left that only errored workers could do.
    pub const WORKERS_ERRORED: u8 = 4;
}

/// How a run that ended as asked or planned ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Stopped,
    AllDone,
    SomeFailed,
    WorkersErrored,
}

impl RunEnd {
    pub fn exit_code(self) -> u8 {
        match self {
            RunEnd::Stopped | RunEnd::AllDone => exit::DONE,
            RunEnd::SomeFailed => exit::SOME_FAILED,
            RunEnd::WorkersErrored => exit::WORKERS_ERRORED,
        }
    }
}

/// Why a run is ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// As asked (a signal, `supervisor stop`) or as planned (`--exit-when-done`).
    Ended(RunEnd),
    /// The database is damaged: the run fails with this advice.
    Damaged(String),
    /// Another supervisor took over this run's ids: nothing more is handed back as
    /// this run's, and the run fails.
    TakenOver,
}

impl Ending {
    /// Which reason stands when a run that is already ending for `self` hears `later`.
    /// A takeover stands over everything (the ids are another supervisor's, whatever
    /// this one finds next); a damaged database over a planned end, whose summary it
    /// could not read; otherwise the first reason.
    pub fn and(self, later: Ending) -> Ending {
        match (self, later) {
            (Ending::TakenOver, _) | (_, Ending::TakenOver) => Ending::TakenOver,
            (Ending::Damaged(why), _) | (Ending::Ended(_), Ending::Damaged(why)) => Ending::Damaged(why),
            (first @ Ending::Ended(_), Ending::Ended(_)) => first,
        }
    }

    /// The state the run's record is left in.
    pub fn run_state(&self) -> RunState {
        match self {
            Ending::Damaged(_) => RunState::Damaged,
            Ending::TakenOver | Ending::Ended(RunEnd::Stopped) => RunState::Stopped,
            Ending::Ended(RunEnd::AllDone) => RunState::Done,
            Ending::Ended(RunEnd::SomeFailed) => RunState::Failed,
            Ending::Ended(RunEnd::WorkersErrored) => RunState::Errored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damaged() -> Ending {
        Ending::Damaged("the database is damaged".into())
    }

    #[test]
    fn the_first_planned_end_stands_over_a_later_one() {
        let done = Ending::Ended(RunEnd::AllDone);
        assert_eq!(done.clone().and(Ending::Ended(RunEnd::Stopped)), done);
    }

    #[test]
    fn a_damaged_database_stands_over_a_planned_end_whichever_came_first() {
        assert_eq!(Ending::Ended(RunEnd::AllDone).and(damaged()), damaged());
        assert_eq!(damaged().and(Ending::Ended(RunEnd::Stopped)), damaged());
    }

    #[test]
    fn a_takeover_stands_over_everything() {
        assert_eq!(damaged().and(Ending::TakenOver), Ending::TakenOver);
        assert_eq!(Ending::TakenOver.and(damaged()), Ending::TakenOver);
    }

    #[test]
    fn each_ending_leaves_the_record_in_its_own_state() {
        assert_eq!(damaged().run_state(), RunState::Damaged);
        assert_eq!(Ending::TakenOver.run_state(), RunState::Stopped);
        assert_eq!(Ending::Ended(RunEnd::SomeFailed).run_state(), RunState::Failed);
    }
}
