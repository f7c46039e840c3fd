//! `supervisor start`: the fleet's state and its one event loop, with how the loop
//! stops and finishes.
//!
//! Only the loop changes the fleet; each concern adds its methods from a module of its
//! own: `setup.rs` (checks, the run's setup), `launch.rs` (starting workers, `spawn.rs`
//! the process itself), `health.rs` (/health, silence), `memory/` (cgroups, sampling),
//! `restart.rs` (a worker's end: restart, backoff, crash loop; `exit_cause.rs` says
//! why it ended), `recover.rs` (handing back claims, a dead run). Each worker's own
//! state is a `Slot` (`slot.rs`); bookkeeping writes go through `records.rs`.

mod exit_cause;
mod health;
mod launch;
mod memory;
mod output;
mod probe;
mod records;
mod recover;
mod rescale;
mod restart;
mod setup;
mod slot;
mod spawn;
mod summary;
mod takeover;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shared::config::Steal;
use shared::storage::{FleetRun, RunOrder, RunState, Store};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use exit_cause::ExitCause;
use health::HealthRounds;
use memory::Memory;
pub use memory::Mode;
use output::LogLine;
use records::{Incident, Record};
pub use recover::wait_for_previous_workers;
use restart::RestartPolicy;
pub use setup::{check_batch_has_videos, check_ports, preflight};
use slot::{Slot, SlotState};
pub use takeover::{HEARTBEAT_EVERY, describe as describe_run, is_alive as run_is_alive};

use crate::cli::StartArgs;

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

/// How a run ended.
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

/// Something that happened to a worker, reported by the tasks watching it.
#[derive(Debug)]
enum Event {
    Exited { slot: u32, pid: u32, status: std::io::Result<ExitStatus> },
    Health { slot: u32, pid: u32, ok: bool },
}

/// A running fleet: its workers' slots and what the loop needs to drive them.
pub struct Fleet {
    args: StartArgs,
    /// The one writing connection: hand-backs and the records writer share it.
    db: Store,
    /// A read-only connection of its own for the done check: WAL reads never wait for
    /// the write lock, nor queue behind the records writer on `db`.
    reader: Store,
    /// The database file, absolute: workers get it as --db, and the advice about a
    /// damaged database names it.
    db_path: shared::storage::DbLocation,
    /// This run's record; its id tags every bookkeeping write.
    run: FleetRun,
    memory: Memory,
    policy: RestartPolicy,
    /// One per worker id this supervisor runs (`--worker-ids`; all by default), in id
    /// order: a position is not an id, so look one up with `slot(k)`.
    slots: Vec<Slot>,
    /// The worker binary, found at setup, so a missing one fails the start at once.
    exe: PathBuf,
    /// The control token every worker gets through its pipe; the sampler presents it
    /// when it tells a worker about a memory kill.
    token: String,
    /// Where the workers are reached: the bind address, or loopback for a wildcard.
    reach: std::net::IpAddr,
    /// What the tasks watching workers report (exits, /health answers), cloned into each.
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Worker output, to the one task that writes the log files and the console.
    logs: mpsc::UnboundedSender<LogLine>,
    logger: tokio::task::JoinHandle<()>,
    /// Bookkeeping writes, done off the loop (see `records.rs`).
    records: mpsc::UnboundedSender<Record>,
    recorder: tokio::task::JoinHandle<()>,
    /// Hand-backs of dead workers' videos in progress; waited for at the end.
    releases: TaskTracker,
    /// Whether health verdicts may be given (not right after a stall of our own).
    health_rounds: HealthRounds,
    /// Slots not yet started for the first time (with --stagger they go one by one).
    next_start: u32,
    /// When the latest first start happened, for the --stagger gap.
    last_start: Option<Instant>,
    /// For the summary's total time.
    began: Instant,
    /// Set once the fleet is stopping: the moment to give up waiting and kill.
    stopping: Option<Instant>,
    /// How the run ends, once it is stopping.
    end: RunEnd,
    /// Every restart and kill of this run, for the summary.
    history: Vec<Incident>,
    /// Why the run cannot go on (a damaged database): it stops, and `run` fails with this.
    fatal: Option<String>,
    /// What the heartbeat learned: a stop asked through the database, or a takeover.
    orders: mpsc::UnboundedReceiver<RunOrder>,
    /// Another supervisor took this run's ids over: nothing is handed back or recorded
    /// as this run's any more, and the run ends in failure.
    taken_over: bool,
    /// Stamps the run record alive every second (`takeover.rs` says why).
    heartbeat: tokio::task::JoinHandle<()>,
    /// A new layout (`supervisor scale`) waiting for the old workers' drain: the fleet
    /// size and this supervisor's ids in it (`rescale.rs`).
    rescaling: Option<(u32, shared::ids::WorkerIds)>,
}

impl Fleet {
    /// Runs until stopped (or, with --exit-when-done, until the work is done).
    /// Returns how the run ended and, in batch mode, its summary to print.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        hurry: CancellationToken,
    ) -> anyhow::Result<(RunEnd, Option<String>)> {
        let mut sample = interval(self.args.sample_interval);
        let mut health = interval(self.args.health_interval);
        let mut records = interval(Duration::from_secs(1));
        let mut done_check = interval(Duration::from_millis(500));
        // Starting workers are asked often, so readiness is seen within ~50 ms.
        let mut readiness = interval(Duration::from_millis(50));
        for t in [&mut sample, &mut health, &mut records, &mut done_check, &mut readiness] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let mut killed_all = false;
        let mut hurried = false;
        match &self.run.worker_ids {
            None => tracing::info!(
                "starting {} workers on ports {}-{} ({})",
                self.args.workers,
                self.args.base_port,
                self.args.base_port as u32 + self.args.workers - 1,
                self.args.handler.describe()
            ),
            Some(ids) => tracing::info!(
                "starting workers {ids} of {} on ports {} ({})",
                self.args.workers,
                self.slots.iter().map(|s| s.port.to_string()).collect::<Vec<_>>().join(", "),
                self.args.handler.describe()
            ),
        }
        loop {
            if self.stopping.is_some() && self.slots.iter().all(|s| s.pid().is_none()) {
                if self.rescaling.is_none() {
                    break;
                }
                self.apply_rescale().await?;
                killed_all = false;
            }
            self.start_due();
            let wake = self.next_wake();
            let stop_at = self.stopping;
            tokio::select! {
                // A re-partition's drain sets `stopping` too: a stop then still counts.
                _ = shutdown.cancelled(), if self.stopping.is_none() || self.rescaling.is_some() => {
                    tracing::info!("stopping: workers finish or hand back their videos");
                    self.begin_stop(RunEnd::Stopped);
                }
                _ = hurry.cancelled(), if !hurried => {
                    // A worker's second signal kills its jobs and hands their videos back
                    // without counting the attempt; what is still alive in 3 s is killed.
                    tracing::warn!("second signal: workers stop their jobs now");
                    hurried = true;
                    self.begin_stop(RunEnd::Stopped);
                    // SIGINT, not a second SIGTERM: two pending SIGTERMs would merge into one.
                    self.signal_all(Signal::SIGINT);
                    self.stopping = Some(Instant::now() + Duration::from_secs(3));
                }
                Some(order) = self.orders.recv(), if !self.taken_over => match order {
                    RunOrder::Stop => {
                        if self.stopping.is_none() || self.rescaling.is_some() {
                            tracing::info!("stopping: `supervisor stop` asked for it through the database");
                            self.begin_stop(RunEnd::Stopped);
                        }
                    }
                    RunOrder::Rescale { workers, ids } => self.begin_rescale(workers, ids),
                    RunOrder::TakenOver | RunOrder::CarryOn => {
                        // Its shards are another supervisor's now: no drain, the workers
                        // stop their jobs at once (as on a second signal).
                        tracing::error!(
                            "another supervisor took over this run's worker ids (this run's heartbeat had gone stale); \
                             stopping its workers now"
                        );
                        self.taken_over = true;
                        self.begin_stop(RunEnd::Stopped);
                        self.signal_all(Signal::SIGINT);
                        self.stopping = Some(Instant::now() + Duration::from_secs(3));
                    }
                },
                Some(ev) = self.events.recv() => self.handle(ev),
                _ = sample.tick(), if self.memory.mode == Mode::Sample => self.sample().await,
                _ = health.tick() => self.check_health(false),
                _ = readiness.tick(), if self.slots.iter().any(|s| s.state() == SlotState::Starting) => self.check_health(true),
                _ = records.tick() => self.write_records(),
                _ = done_check.tick(), if self.args.exit_when_done && self.stopping.is_none() => {
                    if let Err(e) = self.check_done().await {
                        tracing::warn!("could not check whether the work is done ({e:#}); trying again");
                    }
                }
                _ = sleep_until(stop_at.unwrap_or_else(Instant::now).into()), if stop_at.is_some() && !killed_all => {
                    tracing::warn!("workers did not stop within the grace period; killing them");
                    killed_all = true;
                    self.kill_all(ExitCause::GraceOver);
                }
                _ = sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {}
            }
        }
        self.finish().await
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Health { slot, pid, ok } => self.on_health(slot, pid, ok),
            Event::Exited { slot, pid, status } => self.on_exit(slot, pid, status),
        }
    }

    async fn check_done(&mut self) -> anyhow::Result<()> {
        let totals = match self.own_totals().await {
            Err(e) if e.is_corrupt() => {
                tracing::error!("the done check found the database damaged ({e}); ending the run");
                self.fatal.get_or_insert_with(|| shared::storage::corrupt_advice(&self.db_path));
                self.begin_stop(RunEnd::Stopped);
                return Ok(());
            }
            r => r?,
        };
        if totals.finished() {
            tracing::info!("no video is pending or running: the work is done");
            self.begin_stop(if totals.failed == 0 { RunEnd::AllDone } else { RunEnd::SomeFailed });
            return Ok(());
        }
        // Work only errored workers could do would keep the run waiting for nothing;
        // unless the others help orphaned shards (`--steal`), which an errored worker's
        // is once its heartbeat has lapsed.
        let errored: Vec<u32> =
            self.slots.iter().filter(|s| matches!(s.state(), SlotState::Errored(_))).map(|s| s.id).collect();
        let helped = self.args.job.steal != Steal::Off && errored.len() < self.slots.len();
        if !errored.is_empty() && !helped {
            // This supervisor's shards only: other hosts' are theirs to finish.
            let shards = self.reader.shard_progress(self.args.workers).await?;
            let live_left: u64 = self
                .slots
                .iter()
                .filter(|s| !errored.contains(&s.id))
                .filter_map(|s| shards.get(s.id as usize))
                .map(|c| c.pending + c.running)
                .sum();
            if live_left == 0 {
                tracing::error!("only errored workers ({errored:?}) have work left; ending the run");
                self.begin_stop(RunEnd::WorkersErrored);
            }
        }
        Ok(())
    }

    /// The videos this supervisor waits for: all of them, or with `--worker-ids` and
    /// `--steal off` only its own shards (the other hosts' end their own runs). Helping
    /// workers (`--steal`) finish the shards of a host that died, so their run lasts
    /// until the whole fleet's work is done.
    async fn own_totals(&self) -> Result<shared::status::ShardCounts, shared::DbError> {
        if self.slots.len() == self.args.workers as usize || self.args.job.steal != Steal::Off {
            return self.reader.totals().await;
        }
        let shards = self.reader.shard_progress(self.args.workers).await?;
        let mut own = shared::status::ShardCounts::default();
        for s in &self.slots {
            own += shards.get(s.id as usize).copied().unwrap_or_default();
        }
        Ok(own)
    }

    fn begin_stop(&mut self, end: RunEnd) {
        if self.stopping.is_some() {
            // A stop during a re-partition's drain: the drain goes on, and is the end.
            if self.rescaling.take().is_some() {
                self.end = end;
                self.record(Record::RunState { state: RunState::Stopping, stopped: false });
            }
            return;
        }
        self.end = end;
        self.stopping = Some(Instant::now() + self.args.job.grace + Duration::from_secs(5));
        self.record(Record::RunState { state: RunState::Stopping, stopped: false });
        self.signal_all(Signal::SIGTERM);
        for s in self.slots.iter_mut().filter(|s| s.pid().is_none()) {
            s.stop();
        }
    }

    fn signal_all(&self, signal: Signal) {
        for pid in self.slots.iter().filter_map(|s| s.pid()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
    }

    fn kill_all(&mut self, reason: ExitCause) {
        for s in &mut self.slots {
            if let Some(pid) = s.kill(reason.clone()) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }

    /// Worker `k`'s slot. Slots exist for this supervisor's ids only (`--worker-ids`),
    /// in order; events and starts only ever name those.
    fn slot(&self, k: u32) -> &Slot {
        let i = self.slots.binary_search_by_key(&k, |s| s.id).expect("worker ids name this run's slots");
        &self.slots[i]
    }

    fn slot_mut(&mut self, k: u32) -> &mut Slot {
        let i = self.slots.binary_search_by_key(&k, |s| s.id).expect("worker ids name this run's slots");
        &mut self.slots[i]
    }

    /// This supervisor's worker ids, in order.
    fn ids(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.id).collect()
    }

    fn write_records(&mut self) {
        if self.memory.mode != Mode::Sample {
            self.measure_for_record();
        }
        for k in self.ids() {
            self.write_record(k);
        }
    }

    fn write_record(&self, k: u32) {
        let record = self.slot(k).record(self.run.run_id, Instant::now(), self.args.ready_timeout);
        self.record(Record::Worker(record));
    }

    /// Queues a bookkeeping write; the recorder outlives the loop, so it cannot be gone.
    fn record(&self, r: Record) {
        let _ = self.records.send(r);
    }

    /// Records a kill or restart as an event, and keeps it for the summary.
    fn list(&mut self, incident: Incident) {
        self.record(Record::Event { worker: incident.worker, kind: incident.kind, reason: incident.reason.clone() });
        self.history.push(incident);
    }

    async fn finish(mut self) -> anyhow::Result<(RunEnd, Option<String>)> {
        for k in self.ids() {
            self.slot_mut(k).stop();
            self.write_record(k);
        }
        self.memory.cleanup();
        // No beat after the final state: the record must read as ended.
        self.heartbeat.abort();
        let state = match self.end {
            _ if self.fatal.is_some() => RunState::Damaged,
            RunEnd::Stopped => RunState::Stopped,
            RunEnd::AllDone => RunState::Done,
            RunEnd::SomeFailed => RunState::Failed,
            RunEnd::WorkersErrored => RunState::Errored,
        };
        self.record(Record::RunState { state, stopped: true });
        self.releases.close();
        self.releases.wait().await;
        drop(self.records);
        let _ = self.recorder.await;
        drop(self.logs);
        let _ = self.logger.await;
        if let Some(why) = self.fatal.take() {
            self.reader.close().await;
            self.db.close().await;
            bail!(why);
        }
        if self.taken_over {
            self.reader.close().await;
            self.db.close().await;
            bail!(
                "run {} was taken over by another supervisor, which found its heartbeat stale; its workers were stopped",
                self.run.run_id
            );
        }
        let summary = if self.end != RunEnd::Stopped || self.args.exit_when_done {
            let text =
                summary::build(&self.db, &self.run, &self.args, self.began.elapsed(), &self.history, self.end).await?;
            if let Some(dir) = &self.run.log_dir {
                let path = std::path::Path::new(dir).join(format!("run-{}-summary.txt", self.run.run_id));
                if let Err(e) = std::fs::write(&path, format!("{text}\n")) {
                    tracing::warn!("could not save the summary to {}: {e}", path.display());
                }
            }
            Some(text)
        } else {
            None
        };
        self.reader.close().await;
        self.db.close().await;
        Ok((self.end, summary))
    }
}
