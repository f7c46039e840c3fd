//! The fleet's one loop: it hears the workers (exits, /health), the stop signals, the
//! heartbeat's orders and its own timers, and moves the run through its phases
//! (`phase.rs`) until it ends; then `finish` records the end and writes the summary.

use std::time::Duration;

use anyhow::bail;
use shared::config::Steal;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;

use super::end::{Ending, RunEnd};
use super::heartbeat::Order;
use super::phase::Then;
use super::records::Record;
use super::signals::{StopSignal, StopSignals};
use super::slot::SlotState;
use super::state::{Event, Fleet};
use super::summary;
use crate::memory_mode::MemoryMode;

impl Fleet {
    /// Runs until stopped (or, with --exit-when-done, until the work is done).
    /// Returns how the run ended and, in batch mode, its summary to print.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        hurry: CancellationToken,
    ) -> anyhow::Result<(RunEnd, Option<String>)> {
        let mut signals = StopSignals::new(shutdown, hurry);
        let mut sample = interval(self.config.sample_interval);
        let mut health = interval(self.config.health_interval);
        let mut records = interval(Duration::from_secs(1));
        let mut done_check = interval(Duration::from_millis(500));
        // Starting workers are asked often, so readiness is seen within ~50 ms.
        let mut readiness = interval(Duration::from_millis(50));
        for t in [&mut sample, &mut health, &mut records, &mut done_check, &mut readiness] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        self.say_start();
        let ending = loop {
            if self.slots.iter().all(|s| s.pid().is_none()) {
                match self.phase.drained() {
                    Some(Then::End(ending)) => break ending,
                    Some(Then::Rescale(layout)) => self.apply_rescale(layout).await,
                    None => {}
                }
            }
            self.start_due();
            let wake = self.next_wake();
            let deadline = self.phase.deadline();
            tokio::select! {
                signal = signals.next() => self.on_signal(signal),
                Some(order) = self.orders.recv() => self.on_order(order),
                Some(ev) = self.events.recv() => match ev {
                    Event::Health { slot, pid, ok } => self.on_health(slot, pid, ok),
                    Event::Exited { slot, pid, status } => self.on_exit(slot, pid, status),
                    Event::Resume { slot } => self.on_resume(slot),
                },
                _ = sample.tick(), if self.memory.mode == MemoryMode::Sample => self.sample().await,
                _ = health.tick() => self.check_health(false),
                _ = readiness.tick(), if self.slots.iter().any(|s| s.state() == SlotState::Starting) => self.check_health(true),
                _ = records.tick() => {
                    self.write_records();
                    self.ask_resumes();
                }
                _ = done_check.tick(), if self.config.exit_when_done && self.phase.is_running() => {
                    if let Err(e) = self.check_done().await {
                        tracing::warn!("could not check whether the work is done ({e:#}); trying again");
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tracing::warn!("workers did not stop within the grace period; killing them");
                    let acts = self.phase.deadline_passed();
                    self.perform(acts);
                }
                _ = sleep_until(wake.unwrap_or_else(std::time::Instant::now).into()), if wake.is_some() => {}
            }
        };
        self.finish(ending).await
    }

    fn say_start(&self) {
        let (workers, handler) = (self.layout.workers, self.config.handler.describe());
        match self.layout.recorded_ids() {
            None => tracing::info!(
                "starting {workers} workers on ports {}-{} ({handler})",
                self.config.base_port,
                self.config.base_port as u32 + workers - 1,
            ),
            Some(ids) => tracing::info!(
                "starting workers {ids} of {workers} on ports {} ({handler})",
                self.slots.iter().map(|s| s.port.to_string()).collect::<Vec<_>>().join(", "),
            ),
        }
    }

    /// The run is to end for `why`: its workers drain (or, already ending, the
    /// weightier reason stands).
    pub(super) fn end(&mut self, why: Ending) {
        let acts = self.phase.end(why, Instant::now(), self.config.job.grace);
        self.perform(acts);
    }

    /// The run is to end for `why`, and its workers are to stop their jobs now.
    fn rush(&mut self, why: Ending) {
        let acts = self.phase.rush(why, Instant::now());
        self.perform(acts);
    }

    fn on_signal(&mut self, signal: StopSignal) {
        match signal {
            StopSignal::Once if self.phase.heeds_stop() => {
                tracing::info!("stopping: workers finish or hand back their videos");
                self.end(Ending::Ended(RunEnd::Stopped));
            }
            StopSignal::Once => {}
            StopSignal::Twice => {
                // A worker's second signal kills its jobs and hands their videos back
                // without counting the attempt; what is still alive soon after is killed.
                tracing::warn!("second signal: workers stop their jobs now");
                self.rush(Ending::Ended(RunEnd::Stopped));
            }
        }
    }

    fn on_order(&mut self, order: Order) {
        match order {
            Order::Stop if self.phase.heeds_stop() => {
                tracing::info!("stopping: `supervisor stop` asked for it through the database");
                self.end(Ending::Ended(RunEnd::Stopped));
            }
            Order::Stop => {}
            Order::Rescale { workers, ids } => self.begin_rescale(workers, ids.as_deref()),
            Order::TakenOver => {
                // Its shards are another supervisor's now: no drain, the workers stop
                // their jobs at once (as on a second signal).
                tracing::error!(
                    "another supervisor took over this run's worker ids (this run's heartbeat had gone stale); \
                     stopping its workers now"
                );
                self.rush(Ending::TakenOver);
            }
        }
    }

    async fn check_done(&mut self) -> anyhow::Result<()> {
        // While the database is away the heartbeat tries it each second, in a task of its
        // own: a done check here would hold this loop (signals, health) for each try.
        if self.watch.is_away() {
            return Ok(());
        }
        let totals = match self.own_totals().await {
            Err(e) if self.watch.failed(&e) => return Ok(()),
            Err(e) if e.is_corrupt() => {
                tracing::error!("the done check found the database damaged ({e}); ending the run");
                self.end(Ending::Damaged(shared::storage::corrupt_advice(&self.db_path)));
                return Ok(());
            }
            r => r?,
        };
        if totals.finished() {
            tracing::info!("no video is pending or running: the work is done");
            self.end(Ending::Ended(if totals.failed == 0 { RunEnd::AllDone } else { RunEnd::SomeFailed }));
            return Ok(());
        }
        // Work only errored workers could do would keep the run waiting for nothing;
        // unless the others help orphaned shards (`--steal`), which an errored worker's
        // is once its heartbeat has lapsed.
        let errored: Vec<u32> =
            self.slots.iter().filter(|s| matches!(s.state(), SlotState::Errored(_))).map(|s| s.id).collect();
        let helped = self.config.job.steal != Steal::Off && errored.len() < self.slots.len();
        if !errored.is_empty() && !helped {
            // This supervisor's shards only: other hosts' are theirs to finish.
            let shards = self.reader.shard_progress(self.layout.workers).await?;
            let live_left: u64 = self
                .slots
                .iter()
                .filter(|s| !errored.contains(&s.id))
                .filter_map(|s| shards.get(s.id as usize))
                .map(|c| c.pending + c.running)
                .sum();
            if live_left == 0 {
                tracing::error!("only errored workers ({errored:?}) have work left; ending the run");
                self.end(Ending::Ended(RunEnd::WorkersErrored));
            }
        }
        Ok(())
    }

    /// The videos this supervisor waits for: all of them, or with `--worker-ids` and
    /// `--steal off` only its own shards (the other hosts' end their own runs). Helping
    /// workers (`--steal`) finish the shards of a host that died, so their run lasts
    /// until the whole fleet's work is done.
    async fn own_totals(&self) -> Result<shared::status::ShardCounts, shared::DbError> {
        if self.slots.len() == self.layout.workers as usize || self.config.job.steal != Steal::Off {
            return self.reader.totals().await;
        }
        let shards = self.reader.shard_progress(self.layout.workers).await?;
        let mut own = shared::status::ShardCounts::default();
        for s in &self.slots {
            own += shards.get(s.id as usize).copied().unwrap_or_default();
        }
        Ok(own)
    }

    /// With every worker gone: records the run's end, waits for the writes and
    /// hand-backs in flight, and fails the run or builds its summary.
    async fn finish(mut self, ending: Ending) -> anyhow::Result<(RunEnd, Option<String>)> {
        for k in self.ids() {
            self.slot_mut(k).stop();
            self.write_record(k);
        }
        self.memory.cleanup();
        // No beat after the final state: the record must read as ended.
        self.heartbeat.abort();
        self.record(Record::RunState { state: ending.run_state(), stopped: true });
        self.releases.close();
        self.releases.wait().await;
        drop(self.records);
        let _ = self.recorder.await;
        // The end could not be recorded: the database is away. The workers stopped on
        // request and gave their claims back as far as they could; say so where the next
        // start on this host looks, so it hands those claims back uncounted rather than
        // as a crash's.
        if self.watch.is_away()
            && matches!(ending, Ending::Ended(_))
            && let Some(dir) = &self.run.log_dir
        {
            let marker = super::recover::outage_marker(std::path::Path::new(dir), self.run.run_id);
            if let Err(e) = std::fs::write(&marker, "stopped while the database was away\n") {
                tracing::warn!("could not leave {}: {e}", marker.display());
            }
        }
        drop(self.logs);
        let _ = self.logger.await;
        let end = match ending {
            Ending::Ended(end) => end,
            Ending::Damaged(why) => {
                self.reader.close().await;
                self.db.close().await;
                bail!(why);
            }
            Ending::TakenOver => {
                self.reader.close().await;
                self.db.close().await;
                bail!(
                    "run {} was taken over by another supervisor, which found its heartbeat stale; its workers were stopped",
                    self.run.run_id
                );
            }
        };
        let summary = if self.watch.is_away() {
            tracing::warn!("the database is away: no summary of this run (`supervisor status` shows it later)");
            None
        } else if end != RunEnd::Stopped || self.config.exit_when_done {
            let took = self.began.elapsed();
            let text =
                summary::build(&self.db, &self.run, &self.config, &self.layout, took, &self.history, end).await?;
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
        Ok((end, summary))
    }
}
