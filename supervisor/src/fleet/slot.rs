//! One worker slot: everything the fleet knows about one worker id across its
//! processes (the live one, its cgroup, its restarts), changed only through its
//! methods. Pure logic over `Instant`s, so the restart policy is tested without waiting.

use std::ffi::CString;
use std::time::{Duration, Instant};

use shared::storage::{FleetWorker, SlotStatus};
use shared::units::ByteSize;

use super::crashes::{Comeback, Crashes, RestartPolicy};
use super::exit_cause::ExitCause;
use super::memory::WorkerCgroup;
use crate::procfs::TreeUsage;

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
    /// Exited 0 while the run runs: drained on request (`POST /drain`, or a SIGTERM
    /// from outside). Not started again until resumed.
    Drained,
}

impl SlotState {
    /// What the slot's record shows.
    pub fn status(&self) -> SlotStatus {
        match self {
            SlotState::Starting => SlotStatus::Starting,
            SlotState::Running => SlotStatus::Running,
            SlotState::Backoff(_) => SlotStatus::Backoff,
            SlotState::Errored(_) => SlotStatus::Errored,
            SlotState::Stopped => SlotStatus::Stopped,
            SlotState::Drained => SlotStatus::Drained,
        }
    }
}

/// The slot's live process.
#[derive(Debug)]
struct Process {
    pid: u32,
    started: Instant,
    /// When /health last answered; none until it first does.
    last_healthy: Option<Instant>,
    /// Why the supervisor is killing it, if it is (memory, health, the grace period),
    /// so its exit is recorded with that reason rather than "signal 9".
    kill_reason: Option<ExitCause>,
    /// The handlers' process groups seen in its tree at the last measurement; killed
    /// when it dies, since orphans would run on unwatched.
    handler_groups: Vec<u32>,
}

/// The memory cgroup the slot's processes run in (cgroup modes only).
#[derive(Debug)]
struct Cgroup {
    worker: WorkerCgroup,
    /// Its OOM kills before the current process started: a higher count when the
    /// process dies of SIGKILL means the kernel killed it for memory.
    oom_baseline: u64,
}

#[derive(Debug)]
pub struct Slot {
    pub id: u32,
    pub port: u16,
    state: SlotState,
    process: Option<Process>,
    /// Set up afresh before each start, removed when its process has exited.
    cgroup: Option<Cgroup>,
    /// When the latest process started; the record keeps it after the process ends.
    started_at_ms: Option<i64>,
    restarts: u32,
    last_reason: Option<ExitCause>,
    last_restart_at_ms: Option<i64>,
    memory_kills: u32,
    /// The tree's resident memory at the last measurement. Sampling measures only live
    /// processes, so there the last sample stays on record after the process ends.
    rss: u64,
    /// Recent crashes, which decide when it comes back.
    crashes: Crashes,
}

impl Slot {
    pub fn new(id: u32, port: u16) -> Slot {
        Slot {
            id,
            port,
            state: SlotState::Starting,
            process: None,
            cgroup: None,
            started_at_ms: None,
            restarts: 0,
            last_reason: None,
            last_restart_at_ms: None,
            memory_kills: 0,
            rss: 0,
            crashes: Crashes::default(),
        }
    }

    pub fn state(&self) -> SlotState {
        self.state
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Whether `pid` is the live process: news of an earlier one is stale.
    pub fn runs(&self, pid: u32) -> bool {
        self.pid() == Some(pid)
    }

    /// When the live process started.
    pub fn started(&self) -> Option<Instant> {
        self.process.as_ref().map(|p| p.started)
    }

    /// When the live process last answered /health.
    pub fn last_healthy(&self) -> Option<Instant> {
        self.process.as_ref().and_then(|p| p.last_healthy)
    }

    /// Whether the supervisor has already decided to kill the live process.
    pub fn is_being_killed(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.kill_reason.is_some())
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn last_reason(&self) -> Option<&ExitCause> {
        self.last_reason.as_ref()
    }

    /// Gives the next process `cgroup` to run in, counting the OOM kills it has seen.
    pub fn set_cgroup(&mut self, cgroup: Option<WorkerCgroup>) {
        self.cgroup = cgroup.map(|worker| Cgroup { oom_baseline: worker.cgroup.oom_kills().unwrap_or(0), worker });
    }

    /// Takes the cgroup out, for the caller to remove.
    pub fn take_cgroup(&mut self) -> Option<WorkerCgroup> {
        self.cgroup.take().map(|c| c.worker)
    }

    /// `<cgroup>/cgroup.procs`, for the new process to join before it executes.
    pub fn cgroup_procs(&self) -> Option<CString> {
        self.cgroup.as_ref().map(|c| c.worker.procs.clone())
    }

    /// A process for this slot started.
    pub fn spawned(&mut self, pid: u32, now: Instant, now_ms: i64) {
        self.process =
            Some(Process { pid, started: now, last_healthy: None, kill_reason: None, handler_groups: Vec::new() });
        self.started_at_ms = Some(now_ms);
        self.state = SlotState::Starting;
    }

    /// Process `pid` answered /health at `now`. The first answer makes the slot running
    /// and returns how long it took to get there.
    pub fn answered(&mut self, pid: u32, now: Instant) -> Option<Duration> {
        let process = self.process.as_mut().filter(|p| p.pid == pid)?;
        process.last_healthy = Some(now);
        if self.state != SlotState::Starting {
            return None;
        }
        self.state = SlotState::Running;
        Some(now.saturating_duration_since(process.started))
    }

    /// The supervisor is killing the live process for `reason` (a first reason stands).
    /// Returns the process group to kill.
    pub fn kill(&mut self, reason: ExitCause) -> Option<u32> {
        let process = self.process.as_mut()?;
        process.kill_reason.get_or_insert(reason);
        Some(process.pid)
    }

    /// The live process's tree was measured (`None`: there is none to measure).
    pub fn measured(&mut self, usage: Option<&TreeUsage>) {
        self.rss = usage.map(|u| u.total()).unwrap_or(0);
        if let Some(process) = &mut self.process {
            // A process killed but not yet reaped is a zombie with no memory and no
            // children (its handlers were handed to init): measuring it must not forget
            // the handler groups it leaves behind, which `take_orphans` is about to kill.
            match usage {
                Some(u) if u.root == 0 => {}
                Some(u) => process.handler_groups = u.children.iter().map(|c| c.0 as u32).collect(),
                None => process.handler_groups.clear(),
            }
        }
    }

    /// The memory limit killed one of its processes (a handler or the worker itself).
    pub fn count_memory_kill(&mut self) {
        self.memory_kills += 1;
    }

    /// Why the live process ended with `status`: the supervisor's own reason if it killed
    /// it, the memory limit if its cgroup saw an OOM kill since it started, else its exit
    /// status. The process stays until `crashed` or `stop` says what follows.
    pub fn exit_cause(&mut self, status: &std::io::Result<std::process::ExitStatus>, limit: ByteSize) -> ExitCause {
        if let Some(reason) = self.process.as_mut().and_then(|p| p.kill_reason.take()) {
            return reason;
        }
        let oom_killed =
            self.cgroup.as_ref().is_some_and(|c| c.worker.cgroup.oom_kills().unwrap_or(0) > c.oom_baseline);
        ExitCause::of(status, oom_killed, limit)
    }

    /// The handlers' process groups last seen under the live process, to be killed now
    /// that it is gone.
    pub fn take_orphans(&mut self) -> Vec<u32> {
        self.process.as_mut().map(|p| std::mem::take(&mut p.handler_groups)).unwrap_or_default()
    }

    /// Not to be started again: the fleet is stopping, and the process, if any, is gone.
    pub fn stop(&mut self) {
        self.process = None;
        self.state = SlotState::Stopped;
    }

    /// The process exited 0 on its own while the run runs: it was drained, and stays
    /// down until `resume`.
    pub fn drained(&mut self) {
        self.process = None;
        self.state = SlotState::Drained;
    }

    /// Someone asked for a drained slot back: it starts at once. False, and nothing
    /// changes, if it is not drained.
    pub fn resume(&mut self, now: Instant) -> bool {
        let drained = self.state == SlotState::Drained;
        if drained {
            self.state = SlotState::Backoff(now);
        }
        drained
    }

    /// The process exited unexpectedly (or could not start) for `reason`: it is gone,
    /// and the slot waits for its comeback (see `restart.rs`).
    pub fn crashed(&mut self, reason: ExitCause, now: Instant, now_ms: i64, policy: &RestartPolicy) -> Comeback {
        let ran = self.process.take().map(|p| now.saturating_duration_since(p.started)).unwrap_or_default();
        let comeback = self.crashes.crashed(ran, now, policy);
        self.restarts += 1;
        self.last_reason = Some(reason);
        self.last_restart_at_ms = Some(now_ms);
        self.state = match comeback {
            Comeback::Backoff(at) => SlotState::Backoff(at),
            Comeback::Errored(until) => SlotState::Errored(until),
        };
        comeback
    }

    /// When this slot wants to be started again, if it is waiting.
    pub fn due(&self) -> Option<Instant> {
        match self.state {
            SlotState::Backoff(t) | SlotState::Errored(t) => Some(t),
            _ => None,
        }
    }

    /// The slot's row in the run's records. A process still starting after
    /// `ready_timeout` shows as not ready.
    pub fn record(&self, run_id: i64, now: Instant, ready_timeout: Duration) -> FleetWorker {
        let not_ready = self.state == SlotState::Starting
            && self.started().is_some_and(|t| now.saturating_duration_since(t) > ready_timeout);
        FleetWorker {
            run_id,
            worker_id: self.id as i64,
            pid: self.pid().map(i64::from),
            port: self.port as i64,
            state: if not_ready { SlotStatus::NotReady } else { self.state.status() },
            started_at: self.started_at_ms,
            restarts: self.restarts as i64,
            last_reason: self.last_reason.as_ref().map(ToString::to_string),
            last_restart_at: self.last_restart_at_ms,
            rss_bytes: Some(self.rss as i64),
            memory_kills: self.memory_kills as i64,
            // When the record was taken: readers tell a live supervisor's rows (written
            // every second) from a dead one's.
            updated_at: Some(shared::storage::now_ms()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: ByteSize = ByteSize(250 << 20);

    fn sigkill() -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        Ok(std::process::ExitStatus::from_raw(9))
    }

    #[test]
    fn the_first_health_answer_makes_a_starting_slot_running_once() {
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        slot.spawned(42, t0, 0);
        assert_eq!(slot.answered(42, t0 + Duration::from_millis(30)), Some(Duration::from_millis(30)));
        assert_eq!(slot.state(), SlotState::Running);
        assert_eq!(slot.answered(42, t0 + Duration::from_secs(1)), None);
        assert_eq!(slot.last_healthy(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn news_of_an_earlier_process_changes_nothing() {
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        slot.spawned(42, t0, 0);
        assert!(!slot.runs(41));
        assert_eq!(slot.answered(41, t0), None);
        assert_eq!((slot.state(), slot.last_healthy()), (SlotState::Starting, None));
    }

    #[test]
    fn a_killed_process_exits_with_the_first_reason_it_was_killed_for() {
        let mut slot = Slot::new(0, 3001);
        slot.spawned(42, Instant::now(), 0);
        assert_eq!(slot.kill(ExitCause::Unhealthy { silent_for: Duration::from_secs(11) }), Some(42));
        assert!(slot.is_being_killed());
        assert_eq!(slot.kill(ExitCause::GraceOver), Some(42));
        assert_eq!(slot.exit_cause(&sigkill(), LIMIT), ExitCause::Unhealthy { silent_for: Duration::from_secs(11) });
    }

    #[test]
    fn a_sigkill_nobody_here_sent_is_a_signal_when_there_is_no_cgroup() {
        let mut slot = Slot::new(0, 3001);
        slot.spawned(42, Instant::now(), 0);
        assert_eq!(slot.exit_cause(&sigkill(), LIMIT), ExitCause::Signal(9));
    }

    #[test]
    fn measuring_a_killed_unreaped_worker_keeps_the_handler_groups_to_end() {
        let mut slot = Slot::new(0, 3001);
        slot.spawned(42, Instant::now(), 0);
        slot.measured(Some(&TreeUsage { root: 10, children: vec![(50, 5), (51, 7)] }));
        // SIGKILLed, not yet reaped: a zombie, no memory, its children handed to init.
        slot.measured(Some(&TreeUsage { root: 0, children: vec![] }));
        assert_eq!(slot.take_orphans(), [50, 51]);
    }

    #[test]
    fn a_slot_without_a_process_has_nothing_to_kill() {
        let mut slot = Slot::new(0, 3001);
        assert_eq!(slot.kill(ExitCause::GraceOver), None);
        assert!(!slot.is_being_killed());
    }

    #[test]
    fn a_crash_forgets_the_process_and_keeps_the_reason_for_the_record() {
        let mut slot = Slot::new(2, 3003);
        let t0 = Instant::now();
        slot.spawned(42, t0, 1_000);
        slot.measured(Some(&TreeUsage { root: 10, children: vec![(50, 5), (51, 7)] }));
        assert_eq!(slot.take_orphans(), [50, 51]);
        slot.crashed(ExitCause::Code(1), t0 + Duration::from_secs(1), 2_000, &RestartPolicy::example());
        assert_eq!((slot.pid(), slot.started(), slot.restarts()), (None, None, 1));
        let record = slot.record(7, t0 + Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(record.state, SlotStatus::Backoff);
        assert_eq!(record.last_reason.as_deref(), Some("exit code 1"));
        assert_eq!((record.started_at, record.last_restart_at), (Some(1_000), Some(2_000)));
        assert_eq!((record.worker_id, record.port, record.rss_bytes), (2, 3003, Some(22)));
    }

    #[test]
    fn a_drained_slot_waits_without_a_due_time_until_resumed_and_then_is_due_at_once() {
        let mut slot = Slot::new(1, 3002);
        let t0 = Instant::now();
        assert!(!slot.resume(t0), "only a drained slot resumes");
        slot.spawned(42, t0, 0);
        slot.drained();
        assert_eq!((slot.state(), slot.due(), slot.pid(), slot.restarts()), (SlotState::Drained, None, None, 0));
        assert_eq!(slot.record(1, t0, Duration::from_secs(30)).state, SlotStatus::Drained);
        assert!(slot.resume(t0));
        assert_eq!(slot.due(), Some(t0));
    }

    #[test]
    fn a_process_still_starting_after_the_ready_timeout_is_recorded_as_not_ready() {
        let mut slot = Slot::new(0, 3001);
        let t0 = Instant::now();
        slot.spawned(42, t0, 0);
        let timeout = Duration::from_secs(30);
        assert_eq!(slot.record(1, t0 + Duration::from_secs(29), timeout).state, SlotStatus::Starting);
        assert_eq!(slot.record(1, t0 + Duration::from_secs(31), timeout).state, SlotStatus::NotReady);
        slot.answered(42, t0 + Duration::from_secs(32));
        assert_eq!(slot.record(1, t0 + Duration::from_secs(33), timeout).state, SlotStatus::Running);
    }

    #[test]
    fn a_slot_in_a_crash_loop_waits_as_errored_until_the_cooldown() {
        let p = RestartPolicy::example();
        let mut slot = Slot::new(1, 3002);
        let t0 = Instant::now();
        for i in 0..5 {
            let now = t0 + Duration::from_secs(i);
            slot.spawned(10 + i as u32, now, 0);
            slot.crashed(ExitCause::Code(i as i32), now, 0, &p);
        }
        let until = t0 + Duration::from_secs(4 + 60);
        assert_eq!((slot.state(), slot.due()), (SlotState::Errored(until), Some(until)));
        assert_eq!((slot.restarts(), slot.last_reason()), (5, Some(&ExitCause::Code(4))));
    }
}
