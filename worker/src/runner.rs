//! The worker's one writer: claims videos, starts their jobs, writes their outcomes,
//! renews and reclaims leases, and drains on shutdown.
//!
//! All database writes of a worker go through this loop and its shard session, so they
//! batch naturally: the outcomes that arrived while the last write ran are written
//! together with the next claim (`Shard::finish_and_claim`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shared::DbError;
use shared::retry::{Ending, RetryPolicy};
use shared::status::{InFlight, Outcome, RecentError, ShardCounts, VideoStatus, WorkerState};
use shared::storage::{Claimed, Finish, Shard, ShardSpec, Store, now_ms};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::handler::{Handler, JobResult};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::outage::Outage;
use crate::pool::{Ended, Pool};
use crate::steal::Helper;

/// How often the shard's counts are re-read, to catch changes made by others (imports,
/// `supervisor retry`).
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Stopped by a signal; whatever was in flight was finished or handed back.
    Stopped,
    /// `--exit-when-done` and the shard has nothing pending or running.
    ShardDone(ShardCounts),
}

pub struct Runner {
    cfg: Arc<WorkerConfig>,
    /// This worker's own connection to its shard: every write of the worker goes here.
    shard: Shard,
    /// What becomes of a video whose attempt ended, however it ended.
    policy: RetryPolicy,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// Runs the jobs; ended ones come back on `ended`.
    pool: Pool,
    ended: mpsc::UnboundedReceiver<Vec<Ended>>,
    /// Fired when jobs must stop now (grace over, or a second signal).
    kill_jobs: CancellationToken,
    /// Fired when the drain begins: jobs that have not yet reached their handler's work
    /// (an http call waiting for its slot or a Retry-After) are handed back at once
    /// instead of holding the drain for the whole grace.
    drain_jobs: CancellationToken,
    /// Outcomes received but not yet written.
    unwritten: Vec<Ended>,
    in_flight: usize,
    /// When to look for due videos next; pushed out by `--poll` when a claim came back
    /// short, so an idle worker does not take the write lock in a loop.
    next_claim_at: Instant,
    /// systemd's notify socket, when there is one: readiness, progress, and the
    /// watchdog, which this loop pings so that a stuck loop is noticed.
    notify: Notifier,
    /// Which other shards this worker takes from (`--steal`).
    helper: Helper,
    /// With `--exit-when-done`, when to look again whether shards without a live worker
    /// still hold work (so a finished worker waiting on them does not spin).
    next_exit_look: Instant,
    /// The database as this loop last found it: while it is away, every step waits for
    /// its next try, claims pause, and the jobs run on (`outage.rs`).
    outage: Outage,
    /// The claim token of every video this worker holds (in flight, or ended and not yet
    /// written), by video: after a lost connection, a claim of ours that is not here went
    /// through without our hearing it, and is handed back uncounted.
    held: HashMap<i64, i64>,
    /// A claim round failed on a lost connection: its COMMIT may have landed unheard.
    unheard_claims: bool,
    /// Videos whose endings were in such a round: they may be written already, so a
    /// retry that changes nothing is no sign of a lease taken over.
    maybe_written: HashSet<i64>,
}

impl Runner {
    pub async fn new(
        cfg: Arc<WorkerConfig>,
        db: &Store,
        handler: Arc<Handler>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
    ) -> Result<Runner, DbError> {
        let spec = ShardSpec::new(cfg.workers, cfg.worker_id)
            .with_limits(cfg.job.max_source_bytes.bytes(), cfg.job.max_payload_bytes.bytes());
        let shard = db.open_shard(spec).await?;
        db.ensure_count_layout(cfg.workers).await?;
        let policy = cfg.job.retry_policy();
        let helper = Helper::new(cfg.job.steal, cfg.workers, cfg.worker_id, now_ms(), cfg.job.lease.as_millis() as i64);
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let kill_jobs = CancellationToken::new();
        let drain_jobs = CancellationToken::new();
        let pool =
            Pool::start(handler, cfg.worker_id, cfg.job.job_timeout, kill_jobs.clone(), drain_jobs.clone(), ended_tx);
        Ok(Runner {
            notify: Notifier::from_env(cfg.worker_id, cfg.workers),
            cfg,
            shard,
            policy,
            live,
            metrics,
            pool,
            ended,
            kill_jobs,
            drain_jobs,
            unwritten: Vec::new(),
            in_flight: 0,
            next_claim_at: Instant::now(),
            helper,
            next_exit_look: Instant::now(),
            outage: Outage::new(),
            held: HashMap::new(),
            unheard_claims: false,
            maybe_written: HashSet::new(),
        })
    }

    /// A start that had to wait for the database: nothing is judged by clocks for one
    /// lease, as after any outage.
    pub fn waited_for_database(mut self, last_error: Option<String>) -> Runner {
        self.outage.waited_at_start(Instant::now(), self.cfg.job.lease, last_error);
        self
    }

    /// What a database step's answer means for the run. An outage (`DbError::outage`) is
    /// recorded and waited out: `Ok(None)`, and the step is tried again later. Any other
    /// error ends the run, as `what` says.
    fn answer<T>(&mut self, r: Result<T, DbError>, what: &'static str) -> anyhow::Result<Option<T>> {
        let (now, wall) = (Instant::now(), now_ms());
        match r {
            Ok(v) => {
                if let Some(away) = self.outage.answered(now, wall, self.cfg.job.lease) {
                    tracing::info!(
                        away = ?Duration::from_millis(away.as_millis() as u64),
                        "the database answers again; renewing leases first, sweeping none for one lease"
                    );
                    self.metrics.database_up.set(1);
                    self.live.set_database(self.outage.shown().clone());
                }
                Ok(Some(v))
            }
            Err(e) => match self.outage.failed(&e, now, wall) {
                Some((kind, began)) => {
                    if began {
                        tracing::warn!(
                            in_flight = self.in_flight,
                            "{what}: the database is {kind} ({e}); jobs run on, their endings are kept, claims pause until it answers"
                        );
                    }
                    self.metrics.database_up.set(0);
                    self.live.set_database(self.outage.shown().clone());
                    Ok(None)
                }
                None => Err(anyhow::Error::new(e).context(what)),
            },
        }
    }

    /// Whether a database step may run now: not while the database is away and its
    /// next try is not yet due.
    fn may_try(&self) -> bool {
        self.outage.may_try(Instant::now())
    }

    /// Once the database is back: renew the own leases and beat before anything else,
    /// hand back claims that went through unheard, and read the counts anew.
    async fn after_outage(&mut self) -> anyhow::Result<()> {
        self.beat().await?;
        self.renew().await?;
        if self.unheard_claims && !self.outage.is_out() {
            let keep: Vec<i64> = self.held.values().copied().collect();
            let why = "the database connection was lost as this video was claimed; it did not run";
            let r = self.shard.hand_back(&keep, now_ms(), why, &self.policy).await;
            if let Some(back) = self.answer(r, "cannot hand back claims made as the connection was lost")? {
                self.unheard_claims = false;
                if !back.is_empty() {
                    tracing::info!(videos = ?back, "handed back claims whose COMMIT went through unheard; their attempts do not count");
                }
            }
        }
        self.resync().await
    }

    /// Runs until `shutdown` fires (or, with `--exit-when-done`, the shard is finished).
    /// `hurry` (a second signal) kills jobs at once instead of waiting out the grace.
    pub async fn run(mut self, shutdown: CancellationToken, hurry: CancellationToken) -> anyhow::Result<RunEnd> {
        // Beat first: a restarted worker takes its shard back from its helpers at once.
        self.beat().await?;
        self.resync().await?;
        self.look().await?;
        self.reclaim().await?;
        // The HTTP server is up (run spawned it first) and the database just answered.
        self.notify.ready(self.live.state(), self.live.counts());
        let lease = self.cfg.job.lease;
        let mut renew = interval(lease / 3);
        let mut sweep = interval((lease / 2).min(Duration::from_secs(1)));
        let mut resync = interval(RESYNC_EVERY);
        for t in [&mut renew, &mut sweep, &mut resync] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t.reset();
        }
        let mut draining: Option<Instant> = None;
        let mut buf = Vec::new();
        let end = loop {
            if self.outage.take_back() {
                self.after_outage().await?;
            }
            // A leaving worker (its supervisor died, `crate::orphan`) starts nothing new.
            let claim_now = draining.is_none()
                && !self.live.paused()
                && !crate::handler::leaving()
                && !self.outage.is_out()
                && Instant::now() >= self.next_claim_at;
            let want = if claim_now { self.cfg.job.concurrency as usize - self.in_flight } else { 0 };
            let (claimed, short) = self.write_and_claim(want).await?;
            let got = claimed.len();
            if short {
                self.next_claim_at = Instant::now() + self.cfg.poll;
            }
            self.start_jobs(claimed);
            self.update_state(draining.is_some(), short, got);
            self.notify.tick(self.live.state(), self.live.counts());
            self.live.turned();

            if draining.is_some() && self.in_flight == 0 {
                break RunEnd::Stopped;
            }
            if self.cfg.exit_when_done
                && draining.is_none()
                && !self.outage.is_out()
                && self.in_flight == 0
                && self.live.counts().finished()
                && Instant::now() >= self.next_exit_look
            {
                // The counts are kept incrementally; confirm with a real count first.
                self.resync().await?;
                self.look().await?;
                let counts = self.live.counts();
                if counts.finished() && !self.helper.work_left() {
                    self.notify.stopping(counts);
                    break RunEnd::ShardDone(counts);
                }
                // Shards without a live worker still hold work: help, and look again.
                self.next_exit_look = Instant::now() + self.cfg.poll;
            }

            let claim_wait = self.next_claim_at;
            let ping_due = self.notify.ping_due();
            let can_claim = draining.is_none()
                && !self.live.paused()
                && !self.outage.is_out()
                && self.in_flight < self.cfg.job.concurrency as usize;
            let retry_at = self.outage.retry_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if draining.is_none() => {
                    tracing::info!(in_flight = self.in_flight, grace = ?self.cfg.job.grace, "stopping: no new claims; waiting for jobs in flight");
                    draining = Some(Instant::now() + self.cfg.job.grace);
                    self.drain_jobs.cancel();
                    self.live.set_state(WorkerState::Draining);
                    self.notify.stopping(self.live.counts());
                }
                _ = hurry.cancelled(), if !self.kill_jobs.is_cancelled() => {
                    tracing::warn!("second signal: killing jobs in flight");
                    self.kill_jobs.cancel();
                }
                _ = sleep_until(draining.unwrap_or_else(Instant::now)), if draining.is_some() && !self.kill_jobs.is_cancelled() => {
                    tracing::warn!(in_flight = self.in_flight, "grace period over: killing jobs in flight");
                    self.kill_jobs.cancel();
                }
                // The watchdog is pinged by the next turn of this loop, never by a timer
                // of its own: a turn that never comes (a stuck write) means no ping.
                _ = sleep_until(ping_due.unwrap_or_else(Instant::now)), if ping_due.is_some() => {}
                n = self.ended.recv_many(&mut buf, 64) => {
                    if n > 0 {
                        self.collect(&mut buf);
                    }
                }
                _ = renew.tick() => {
                    self.beat().await?;
                    self.renew().await?;
                }
                _ = sweep.tick() => {
                    self.look().await?;
                    self.reclaim().await?;
                }
                _ = resync.tick() => self.resync().await?,
                // While the database is away: its next try. A beat is the cheapest write,
                // and a write is what a full disk refuses.
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => self.beat().await?,
                _ = sleep_until(claim_wait), if can_claim && claim_wait > Instant::now() => {}
                _ = self.live.wake.notified() => self.next_claim_at = Instant::now(),
                // Rejected videos were failed without running: write them now.
                _ = std::future::ready(()), if !self.unwritten.is_empty() && !self.outage.is_out() => {}
            }
        };
        self.finish_run().await?;
        Ok(end)
    }

    /// Takes ended jobs off the channel. Cancelled ones are handed back at the end.
    fn collect(&mut self, buf: &mut Vec<Vec<Ended>>) {
        for batch in buf.drain(..) {
            self.in_flight -= batch.len();
            self.live.ended(batch.iter().map(|e| e.claimed.video_id));
            self.unwritten.extend(batch.into_iter().filter(|e| e.result != JobResult::Cancelled));
        }
        self.metrics.in_flight.set(self.in_flight as i64);
    }

    /// Writes every outcome received so far and claims up to `want` videos, in one
    /// write. Returns the claimed videos and whether the shard ran short (fewer were due
    /// than asked for). The storage retries "database is locked"; an outage keeps the
    /// endings for the next try; other errors end the run.
    async fn write_and_claim(&mut self, want: usize) -> anyhow::Result<(Vec<Claimed>, bool)> {
        if (self.unwritten.is_empty() && want == 0) || !self.may_try() {
            return Ok((Vec::new(), false));
        }
        let finishes: Vec<Finish> = self.unwritten.iter().map(|e| self.to_finish(e)).collect();
        let r = self
            .shard
            .finish_and_claim_helping(&finishes, want, self.helper.targets(), now_ms(), self.cfg.job.lease)
            .await;
        let Some(round) = self.answer(r, "cannot write to the database")? else {
            // Its COMMIT may have gone through unheard: settled when the database is back.
            self.unheard_claims |= want > 0;
            self.maybe_written.extend(finishes.iter().map(|f| f.video_id));
            return Ok((Vec::new(), false));
        };
        let (applied, claimed, short) = (round.applied, round.claimed, round.short);
        self.account_finished(&finishes, &applied);
        for f in &finishes {
            self.held.remove(&f.video_id);
        }
        self.maybe_written.clear();
        self.unwritten.clear();
        if !claimed.is_empty() {
            self.metrics.claims.inc();
            self.metrics.claimed.inc_by(claimed.len() as u64);
            let foreign: Vec<u32> = claimed.iter().filter_map(|c| self.helper.foreign(c.video_id)).collect();
            self.live.shift(VideoStatus::Pending, VideoStatus::Running, (claimed.len() - foreign.len()) as u64);
            if !foreign.is_empty() {
                self.metrics.stolen.inc_by(foreign.len() as u64);
                self.live.took(foreign);
            }
        }
        Ok((claimed, short))
    }

    /// Turns an ended job into the row to write, as the retry policy decides: done,
    /// pending again after a backoff, or failed for good.
    fn to_finish(&self, e: &Ended) -> Finish {
        let (outcome, result, error, warnings) = match &e.result {
            JobResult::Success { output, warnings } => (Outcome::Done, Some(output.clone()), None, warnings.clone()),
            JobResult::Failure { outcome, error } => (*outcome, None, Some(error.clone()), None),
            JobResult::Cancelled => unreachable!("cancelled jobs are not written"),
        };
        let next = self.policy.next(e.claimed.attempt, Ending::Job(outcome), e.finished_at);
        Finish {
            video_id: e.claimed.video_id,
            token: e.claimed.token,
            status: next.status(),
            outcome,
            result,
            error,
            warnings,
            run_after: next.run_after(e.finished_at),
            finished_at: e.finished_at,
            duration_ms: e.duration.as_millis() as i64,
        }
    }

    fn account_finished(&mut self, finishes: &[Finish], applied: &[i64]) {
        if finishes.is_empty() {
            return;
        }
        let applied_ids: std::collections::HashSet<i64> = applied.iter().copied().collect();
        let mut ended_videos = 0;
        let mut job_ms = Vec::with_capacity(finishes.len());
        for (f, e) in finishes.iter().zip(&self.unwritten) {
            if !applied_ids.contains(&f.video_id) && self.maybe_written.contains(&f.video_id) {
                tracing::info!(
                    video_id = f.video_id,
                    "this ending was written before the connection was lost (or its lease was taken over meanwhile)"
                );
                continue;
            }
            if !applied_ids.contains(&f.video_id) {
                self.metrics.fenced.inc();
                tracing::warn!(
                    video_id = f.video_id,
                    attempt = e.claimed.attempt,
                    "lease was taken over before this attempt finished; its outcome is discarded"
                );
                continue;
            }
            // The live counts are the own shard's; a helped shard's video is not in them.
            if self.helper.foreign(f.video_id).is_none() {
                self.live.shift(VideoStatus::Running, f.status, 1);
            }
            self.metrics.attempt(f.outcome).inc();
            // A rejected video never ran: its zero time would skew the job-time figures.
            if f.outcome != Outcome::Rejected {
                self.metrics.job_seconds.observe(e.duration.as_secs_f64());
                job_ms.push(e.duration.as_secs_f64() * 1000.0);
            }
            if f.status != VideoStatus::Pending {
                ended_videos += 1;
            }
            if let Some(error) = &f.error {
                let retry = if f.status == VideoStatus::Pending { "will retry" } else { "giving up" };
                tracing::warn!(video_id = f.video_id, attempt = e.claimed.attempt, "attempt failed ({retry}): {error}");
                self.live.record_error(RecentError {
                    video_id: f.video_id,
                    attempt: e.claimed.attempt,
                    at: f.finished_at,
                    outcome: f.outcome,
                    error: error.clone(),
                });
            }
        }
        self.live.record_finished(ended_videos, job_ms);
    }

    fn start_jobs(&mut self, claimed: Vec<Claimed>) {
        if claimed.is_empty() {
            return;
        }
        let now = now_ms();
        self.held.extend(claimed.iter().map(|c| (c.video_id, c.token)));
        // A row above the limits was claimed without its contents: it fails now, for
        // good, and never reaches a handler.
        let (rejected, claimed): (Vec<Claimed>, Vec<Claimed>) = claimed.into_iter().partition(|c| c.rejected.is_some());
        for c in rejected {
            let error = c.rejected.clone().unwrap_or_default();
            self.unwritten.push(Ended {
                claimed: c,
                result: JobResult::Failure { outcome: Outcome::Rejected, error },
                duration: Duration::ZERO,
                finished_at: now,
            });
        }
        if claimed.is_empty() {
            return;
        }
        self.live.started(claimed.iter().map(|c| InFlight {
            video_id: c.video_id,
            attempt: c.attempt,
            started_at: now,
        }));
        self.in_flight += claimed.len();
        self.metrics.in_flight.set(self.in_flight as i64);
        self.pool.submit(claimed);
    }

    fn update_state(&self, draining: bool, short: bool, got: usize) {
        let state = if draining {
            WorkerState::Draining
        } else if self.in_flight > 0 {
            WorkerState::Running
        } else if short && got == 0 {
            WorkerState::Idle
        } else {
            // Nothing was asked of the database this round: keep what the last claim
            // showed, leaving Starting once the loop is up.
            match self.live.state() {
                WorkerState::Starting => WorkerState::Running,
                s => s,
            }
        };
        self.live.set_state(state);
    }

    /// Extends the leases of every video this worker holds.
    async fn renew(&mut self) -> anyhow::Result<()> {
        if self.held.is_empty() || !self.may_try() {
            return Ok(());
        }
        let expires = now_ms() + self.cfg.job.lease.as_millis() as i64;
        let r = self.shard.renew(expires).await;
        self.answer(r, "cannot renew leases")?;
        Ok(())
    }

    /// Takes back videos whose lease lapsed (their worker died): of this shard, and of
    /// the orphaned shards this worker helps, which have no owner to do it.
    async fn reclaim(&mut self) -> anyhow::Result<()> {
        // Leases lapse while the database is away, renewed or not: judged only once every
        // live worker has had a lease to renew its own. (Never as the first statement
        // after an outage either: that one is a beat or a write.)
        if self.outage.is_out() || !self.outage.may_judge(Instant::now()) {
            return Ok(());
        }
        let (_, own) = self.shard.spec();
        for shard in std::iter::once(own).chain(self.helper.orphaned()) {
            let r = self.shard.reclaim_expired_in(shard, (now_ms(), self.outage.last_away()), &self.policy).await;
            let Some(taken) = self.answer(r, "cannot reclaim expired leases")? else { return Ok(()) };
            if taken.is_empty() {
                continue;
            }
            tracing::warn!(videos = taken.len(), shard, ids = ?taken.iter().map(|t| t.0).take(20).collect::<Vec<_>>(), "took back videos whose lease lapsed");
            self.metrics.lease_reclaims.inc_by(taken.len() as u64);
            if shard == own {
                for (_, status) in &taken {
                    self.live.shift(VideoStatus::Running, *status, 1);
                }
            }
            self.next_claim_at = Instant::now();
        }
        Ok(())
    }

    /// Says this worker is alive (`worker_beats`): its shard is not orphaned.
    async fn beat(&mut self) -> anyhow::Result<()> {
        if !self.may_try() {
            return Ok(());
        }
        let lease = self.cfg.job.lease.as_millis() as i64;
        let r = self.shard.beat(now_ms(), lease).await;
        self.answer(r, "cannot write the worker's heartbeat")?;
        Ok(())
    }

    /// Looks again at which shards to help: the workers' heartbeats and each shard's
    /// counts (two small reads, once a sweep).
    async fn look(&mut self) -> anyhow::Result<()> {
        // Beats go stale while the database is away: no shard is orphaned by it.
        if !self.helper.enabled() || self.outage.is_out() || !self.outage.may_judge(Instant::now()) {
            return Ok(());
        }
        let r = self.shard.beats().await;
        let Some(beats) = self.answer(r, "cannot read the workers' heartbeats")? else { return Ok(()) };
        let r = self.shard.all_counts().await;
        let Some(counts) = self.answer(r, "cannot count the videos by shard")? else { return Ok(()) };
        if !self.outage.may_judge(Instant::now()) {
            return Ok(()); // the database went away and came back between the reads
        }
        let before = self.helper.targets().to_vec();
        self.helper.look(&beats, counts, now_ms());
        let helping = self.helper.targets();
        if helping != before.as_slice() {
            let orphaned = self.helper.orphaned();
            tracing::info!(?helping, ?orphaned, "shards helped changed");
            self.live.set_helping(helping.to_vec());
            if !helping.is_empty() {
                self.next_claim_at = Instant::now();
            }
        }
        Ok(())
    }

    /// Re-reads the shard's counts (others may have imported or requeued videos).
    async fn resync(&mut self) -> anyhow::Result<()> {
        if !self.may_try() {
            return Ok(());
        }
        let r = self.shard.counts().await;
        let Some(counts) = self.answer(r, "cannot count the shard's videos")? else { return Ok(()) };
        if counts.pending > self.live.counts().pending {
            self.next_claim_at = Instant::now();
        }
        self.live.set_counts(counts);
        Ok(())
    }

    /// Writes what is left and hands back anything still leased (jobs killed at the end
    /// of the grace period), without counting those attempts.
    async fn finish_run(mut self) -> anyhow::Result<()> {
        self.write_and_claim(0).await?;
        if self.outage.is_out() {
            // One last try, then the stop goes on: a SIGTERM ends the run within its
            // grace even while the database is away. What is not written is dropped;
            // the leases lapse and are swept, counting no attempt (`lease.rs`).
            self.outage = Outage::new();
            self.write_and_claim(0).await?;
            if self.outage.is_out() {
                tracing::warn!(
                    endings = self.unwritten.len(),
                    held = self.held.len(),
                    "stopping while the database is away: endings not written are dropped, and their videos run again"
                );
                self.pool.close().await;
                return Ok(());
            }
        }
        let r = self.shard.hand_back(&[], now_ms(), "the worker stopped before the job finished", &self.policy).await;
        let Some(released) = self.answer(r, "cannot hand back claimed videos")? else {
            tracing::warn!(
                "stopping while the database is away: the videos still held run again once their leases lapse"
            );
            self.pool.close().await;
            return Ok(());
        };
        if !released.is_empty() {
            tracing::info!(videos = released.len(), "handed back unfinished videos; their attempts do not count");
            let own = released.iter().filter(|&&id| self.helper.foreign(id).is_none()).count();
            self.live.shift(VideoStatus::Running, VideoStatus::Pending, own as u64);
        }
        self.pool.close().await;
        Ok(())
    }
}
