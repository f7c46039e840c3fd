//! The running fleet's state: its settings and layout, its phase, its workers' slots,
//! and the tasks the loop hands work to. Only the loop (`event_loop.rs`) changes it;
//! each concern adds its methods from a module of its own.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Instant;

use nix::sys::signal::Signal;
use shared::storage::{DbLocation, FleetRun, RunState, Store};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::config::{FleetConfig, Layout};
use super::db_watch::DbWatch;
use super::exit_cause::ExitCause;
use super::health_rounds::HealthRounds;
use super::heartbeat::Order;
use super::memory::Memory;
use super::output::LogLine;
use super::phase::{Act, Phase};
use super::records::{Incident, Record};
use super::slot::Slot;

/// Something that happened to a worker, reported by the tasks watching it.
#[derive(Debug)]
pub(super) enum Event {
    Exited {
        slot: u32,
        pid: u32,
        status: std::io::Result<ExitStatus>,
    },
    Health {
        slot: u32,
        pid: u32,
        ok: bool,
    },
    /// Someone asked, through the database, for drained slot `slot` back.
    Resume {
        slot: u32,
    },
}

/// The first starts of the current layout's slots (with --stagger they go one by one).
#[derive(Debug, Default)]
pub(super) struct FirstStarts {
    /// How many slots, in id order, have had their first start.
    pub next: usize,
    /// When the latest first start happened, for the --stagger gap.
    pub last: Option<Instant>,
}

/// A running fleet: its workers' slots and what the loop needs to drive them.
pub struct Fleet {
    /// The run's settings, as checked at the start.
    pub(super) config: FleetConfig,
    /// The shards and this supervisor's ids of them: the flags', until `supervisor
    /// scale` replaces it.
    pub(super) layout: Layout,
    /// Where the run is: running, draining, killing what outlived the drain.
    pub(super) phase: Phase,
    /// The one writing connection: hand-backs and the records writer share it.
    pub(super) db: Store,
    /// A read-only connection of its own for the done check: WAL reads never wait for
    /// the write lock, nor queue behind the records writer on `db`.
    pub(super) reader: Store,
    /// The database, a SQLite path made absolute: workers get it as --db, and the
    /// advice about a damaged database names it.
    pub(super) db_path: DbLocation,
    /// Whether the database is away now: the heartbeat, the records writer and the done
    /// check ride an outage out together, and it is said once (`db_watch.rs`).
    pub(super) watch: DbWatch,
    /// This run's record; its id tags every bookkeeping write.
    pub(super) run: FleetRun,
    pub(super) memory: Memory,
    /// One per worker id this supervisor runs, in id order: a position is not an id,
    /// so look one up with `slot(k)`.
    pub(super) slots: Vec<Slot>,
    pub(super) first_starts: FirstStarts,
    /// The worker binary, found at setup, so a missing one fails the start at once.
    pub(super) exe: PathBuf,
    /// The control token every worker gets through its pipe; the sampler presents it
    /// when it tells a worker about a memory kill.
    pub(super) token: String,
    /// Where the workers are reached: the bind address, or loopback for a wildcard.
    pub(super) reach: std::net::IpAddr,
    /// What the tasks watching workers report (exits, /health answers), cloned into each.
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    /// Worker output, to the one task that writes the log files and the console.
    pub(super) logs: mpsc::UnboundedSender<LogLine>,
    pub(super) logger: tokio::task::JoinHandle<()>,
    /// Bookkeeping writes, done off the loop (see `records.rs`).
    pub(super) records: mpsc::UnboundedSender<Record>,
    pub(super) recorder: tokio::task::JoinHandle<()>,
    /// Hand-backs of dead workers' videos in progress; waited for at the end.
    pub(super) releases: TaskTracker,
    /// Stamps the run record alive every second (`heartbeat.rs`), and what it hears.
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
    pub(super) orders: mpsc::UnboundedReceiver<Order>,
    /// Whether health verdicts may be given (not right after a stall of our own).
    pub(super) health_rounds: HealthRounds,
    /// For the summary's total time.
    pub(super) began: Instant,
    /// Every restart and kill of this run, for the summary.
    pub(super) history: Vec<Incident>,
}

impl Fleet {
    /// Worker `k`'s slot. Slots exist for this supervisor's ids only (`--worker-ids`),
    /// in order; events and starts only ever name those.
    pub(super) fn slot(&self, k: u32) -> &Slot {
        let i = self.slots.binary_search_by_key(&k, |s| s.id).expect("worker ids name this run's slots");
        &self.slots[i]
    }

    pub(super) fn slot_mut(&mut self, k: u32) -> &mut Slot {
        let i = self.slots.binary_search_by_key(&k, |s| s.id).expect("worker ids name this run's slots");
        &mut self.slots[i]
    }

    /// This supervisor's worker ids, in order.
    pub(super) fn ids(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// Does what a step of the phase asks.
    pub(super) fn perform(&mut self, acts: Vec<Act>) {
        for act in acts {
            match act {
                Act::RecordStopping => self.record(Record::RunState { state: RunState::Stopping, stopped: false }),
                Act::Signal(signal) => self.signal_all(signal),
                Act::StopIdle => {
                    for s in self.slots.iter_mut().filter(|s| s.pid().is_none()) {
                        s.stop();
                    }
                }
                Act::KillAll => self.kill_all(ExitCause::GraceOver),
            }
        }
    }

    /// Signals each worker itself: it passes the news on to its handlers.
    fn signal_all(&self, signal: Signal) {
        for pid in self.slots.iter().filter_map(|s| s.pid()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Kills every worker's whole process group for `reason`.
    fn kill_all(&mut self, reason: ExitCause) {
        for s in &mut self.slots {
            if let Some(pid) = s.kill(reason.clone()) {
                shared::process::kill_group(pid);
            }
        }
    }

    pub(super) fn write_records(&mut self) {
        if self.memory.mode != crate::memory_mode::MemoryMode::Sample {
            self.measure_for_record();
        }
        for k in self.ids() {
            self.write_record(k);
        }
    }

    pub(super) fn write_record(&self, k: u32) {
        let record = self.slot(k).record(self.run.run_id, Instant::now(), self.config.ready_timeout);
        self.record(Record::Worker(record));
    }

    /// Queues a bookkeeping write; the recorder outlives the loop, so it cannot be gone.
    pub(super) fn record(&self, r: Record) {
        let _ = self.records.send(r);
    }

    /// Records a kill or restart as an event, and keeps it for the summary.
    pub(super) fn list(&mut self, incident: Incident) {
        self.record(Record::Event { worker: incident.worker, kind: incident.kind, reason: incident.reason.clone() });
        self.history.push(incident);
    }
}
