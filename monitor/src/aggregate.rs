//! The fleet as the monitor sees it: each worker's last answer folded into a report,
//! totals over every shard, the rate over a rolling window and the ETA. Pure state, fed
//! one poll round at a time, so it is tested without a network.
//!
//! Progress is counted in videos, a video in flight counting for the share of the
//! average job time it has run: with jobs of half a minute, finished videos alone move
//! in jumps a window has to average out, and the rate they give lags the fleet's.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use shared::status::{Database, DbState, InFlight, RecentError, ShardCounts, WorkerStatus};
use shared::storage::{FleetWorker, SlotStatus};

use crate::poll::{Answer, Round};
use crate::targets::Target;

/// The rolling window the fleet's rate is measured over.
pub const RATE_WINDOW_MS: i64 = 60_000;
/// Below this much watching, the monitor's own window says little, and the workers'
/// one-minute rates are used instead.
const MIN_RATE_SPAN_MS: i64 = 5_000;
/// Rounds of throughput kept for the sparkline (ten minutes at the default interval).
const HISTORY: usize = 600;
/// The most a video in flight counts for: one that reaches or outruns the average job
/// time is not finished until its worker says so, so its credit stops short of a whole
/// video.
const IN_FLIGHT_CREDIT_CAP: f64 = 0.99;
/// Workers measure `throughput_per_sec` over their last minute; a younger one divides
/// by its whole life instead.
const WORKER_RATE_WINDOW_SECS: f64 = 60.0;

/// How a worker answered the last poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerHealth {
    /// It answered with its `/status`.
    Up,
    /// It did not answer (refused, timed out).
    Down,
    /// It answered with something that is not its `/status`.
    Error,
}

impl WorkerHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerHealth::Up => "up",
            WorkerHealth::Down => "down",
            WorkerHealth::Error => "error",
        }
    }
}

/// One worker in the report. See [`Report`] for the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker id with --db and --base-port; the position in --targets.
    pub slot: u32,
    /// The base URL it is polled at.
    pub url: String,
    pub health: WorkerHealth,
    /// Unix milliseconds of its last good answer; null if it never gave one.
    pub last_seen: Option<i64>,
    /// Why it is down or in error; null when up.
    pub error: Option<String>,
    /// Its `/status` answer: the current one when up, the last one otherwise (null if it
    /// never answered).
    pub status: Option<WorkerStatus>,
    /// Restarts of this slot: the supervisor's records with --db, else what the worker
    /// reports.
    pub restarts: u32,
    pub last_restart_reason: Option<String>,
    /// With --db: the supervisor's view of the slot (starting, running, backoff,
    /// errored, stopped).
    pub supervisor_state: Option<SlotStatus>,
    /// The other shards it is helping now: those of a video of theirs it has in flight,
    /// or that it took a video from since the poll before. Its own `status.helping`
    /// lists the shards it *may* take from, which in a balanced `--steal idle` fleet is
    /// every other one although none takes anything. Added after the fields above.
    #[serde(default)]
    pub helping_now: Vec<u32>,
}

impl WorkerReport {
    fn new(t: &Target) -> WorkerReport {
        WorkerReport {
            slot: t.slot,
            url: t.base.to_string(),
            health: WorkerHealth::Down,
            last_seen: None,
            error: Some("not polled yet".into()),
            status: None,
            restarts: 0,
            last_restart_reason: None,
            supervisor_state: None,
            helping_now: Vec::new(),
        }
    }

    /// The id to show: the worker's own once it answered.
    pub fn worker_id(&self) -> u32 {
        self.status.as_ref().map_or(self.slot, |s| s.worker_id)
    }

    /// Where it serves, as the tables show it: `:3001` on loopback, `host:3004` for a
    /// worker another host runs.
    pub fn place(&self) -> String {
        let port = self.port().map_or_else(String::new, |p| format!(":{p}"));
        let host = reqwest::Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_string));
        match host {
            Some(h) if !matches!(h.as_str(), "127.0.0.1" | "[::1]" | "localhost") => format!("{h}{port}"),
            _ => port,
        }
    }

    pub fn port(&self) -> Option<u16> {
        self.status
            .as_ref()
            .map(|s| s.port)
            .or_else(|| reqwest::Url::parse(&self.url).ok().and_then(|u| u.port_or_known_default()))
    }
}

/// The fleet's totals. See [`Report`] for the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    /// pending + running + done + failed.
    pub total: u64,
    /// Videos finished (done or failed) per second, a video in flight counting for
    /// the share of the average job time it has run; 0 while no worker is up.
    pub rate: f64,
    /// Seconds until no video is pending or running; 0 when none is; null while some
    /// are and nothing finishes (as when no worker is up) or nothing is known.
    pub eta_seconds: Option<u64>,
    pub workers: u32,
    pub workers_up: u32,
    pub workers_down: u32,
    pub workers_error: u32,
    /// Whether every shard's counts are known; false while a worker that never
    /// answered leaves its shard out (with --db such shards are counted from the table).
    pub complete: bool,
    /// Whether the counts are the last ones known rather than current: no worker
    /// answers, and some shard is counted from its worker's last answer. Added after
    /// the fields above; `default` keeps older reports readable.
    #[serde(default)]
    pub stale: bool,
    /// Unix milliseconds of the newest figures the counts rest on: the poll while some
    /// worker answers; else the last answer, or with --db the last count of the table;
    /// null while nothing is known.
    #[serde(default)]
    pub as_of: Option<i64>,
    /// The database when it does not answer: as the monitor found it (with --db), or as a
    /// worker that answers reports it. Absent while it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,
}

impl Totals {
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }

    /// Share of videos finished, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.finished() as f64 / self.total as f64 }
    }

    /// The rate worth showing: none while no worker is up, where a 0 would read as a
    /// stalled fleet rather than one nobody can see.
    pub fn rate_shown(&self) -> Option<f64> {
        (self.workers_up > 0).then_some(self.rate)
    }
}

/// What `monitor --json` prints:
///
/// ```json
/// {
///   "at": 1763807881000,
///   "workers": [
///     {
///       "slot": 0,
///       "url": "http://127.0.0.1:3001/",
///       "health": "up",
///       "last_seen": 1763807881000,
///       "error": null,
///       "status": { "worker_id": 0, "workers": 2, "state": "running",
///                   "shard": { "pending": 10, "running": 4, "done": 40, "failed": 1 }, ... },
///       "restarts": 0,
///       "last_restart_reason": null,
///       "supervisor_state": "running"
///     },
///     { "slot": 1, "url": "http://127.0.0.1:3002/", "health": "down", "last_seen": null,
///       "error": "cannot connect: connection refused", "status": null, ... }
///   ],
///   "totals": { "pending": 20, "running": 4, "done": 80, "failed": 2, "total": 106,
///               "rate": 3.5, "eta_seconds": 7, "workers": 2, "workers_up": 1,
///               "workers_down": 1, "workers_error": 0, "complete": true,
///               "stale": false, "as_of": 1763807881000 }
/// }
/// ```
///
/// - `at`: Unix milliseconds of the poll.
/// - `workers[]`: one entry per worker ([`WorkerReport`]); `health` is `up` (it answered
///   its `/status`), `down` (no answer: `error` says why) or `error` (an answer that is
///   not a worker's `/status`, or one from another worker than expected). `status` is
///   the worker's answer, the shared `WorkerStatus` type workers serve, so it cannot
///   drift from what they send.
/// - `totals`: sums over every shard ([`Totals`]); a worker that is not up counts with
///   its last answer or, with `--db`, with its shard's rows in the database. `rate` is
///   videos finished per second over the monitor's last minute, a video in flight
///   counting for the share of the average job time it has run, and measured from the
///   first finished video on (before it nothing says how long a job takes); a single
///   poll (as `--json` does) sums the workers' own one-minute rates instead.
///   `eta_seconds` is the remaining videos (less the in-flight shares) over `rate`, but
///   never less than the busiest up worker needs to run its queue through its slots at
///   the average job time; 0 when nothing is left, null while the rate is 0.
///   When no worker is up, `rate` is 0 and `eta_seconds` null unless nothing is left;
///   `stale` says the counts are last answers, and `as_of` when they were current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub at: i64,
    pub workers: Vec<WorkerReport>,
    pub totals: Totals,
}

/// The fleet, updated by each poll round.
#[derive(Debug, Clone)]
pub struct Fleet {
    targets: Vec<Target>,
    workers: Vec<WorkerReport>,
    /// Shard counts read from the database for workers that do not answer.
    db_shards: Option<Vec<ShardCounts>>,
    /// When `db_shards` were read, so totals resting on them can say how old they are.
    db_shards_at: Option<i64>,
    /// The run's memory limit, for workers that do not report one.
    mem_limit_fallback: Option<u64>,
    /// Videos seen finishing since the monitor started: the sum of every worker's
    /// increase in done + failed between its answers. Counting increases rather than
    /// reading the total keeps a worker that appears late (with its whole history) or
    /// a retry (failed going down) from distorting the rate.
    finished_seen: u64,
    /// `(at_ms, progress)` of the rounds within the rate window: `finished_seen` plus
    /// the in-flight credit of that round. Empty while a job runs whose length nobody
    /// can guess yet: counting those rounds would dilute the rate with a start-up
    /// stretch in which work happened that no figure shows.
    window: VecDeque<(i64, f64)>,
    /// The fleet's average job time as last reported, in milliseconds: the credit of a
    /// worker that has not finished a job yet (just started or restarted) and the
    /// lengths the ETA assumes. Kept across rounds because every worker runs the same
    /// handler, so an average from before a restart still holds.
    avg_job_ms: Option<f64>,
    /// Videos finished in each round, oldest first, for the sparkline.
    history: VecDeque<u64>,
    /// Videos done and failed in the last round, counted as `finished_seen` is, for the
    /// web page's chart of the two.
    last_increase: (u64, u64),
    at_ms: i64,
    rounds: u64,
    /// With --db, the database as the monitor last found it.
    database: Option<Database>,
}

impl Fleet {
    pub fn new(targets: Vec<Target>) -> Fleet {
        Fleet {
            workers: targets.iter().map(WorkerReport::new).collect(),
            targets,
            db_shards: None,
            db_shards_at: None,
            mem_limit_fallback: None,
            finished_seen: 0,
            window: VecDeque::new(),
            avg_job_ms: None,
            history: VecDeque::new(),
            last_increase: (0, 0),
            at_ms: 0,
            rounds: 0,
            database: None,
        }
    }

    /// Seeds what the supervisor's records already say, before the first round.
    pub fn with_records(mut self, slots: &[FleetWorker], mem_limit: Option<u64>) -> Fleet {
        self.mem_limit_fallback = mem_limit;
        self.apply_slots(slots);
        self
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn workers(&self) -> &[WorkerReport] {
        &self.workers
    }

    /// Throughput per round, oldest first.
    pub fn history(&self) -> &VecDeque<u64> {
        &self.history
    }

    /// Videos done and failed in the last round: each answering worker's increase since
    /// its previous answer.
    pub fn last_increase(&self) -> (u64, u64) {
        self.last_increase
    }

    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    pub fn at_ms(&self) -> i64 {
        self.at_ms
    }

    /// The memory limit a worker is held to, as it reports it or as the run recorded.
    pub fn mem_limit(&self, w: &WorkerReport) -> Option<u64> {
        w.status.as_ref().and_then(|s| s.mem_limit_bytes).or(self.mem_limit_fallback)
    }

    /// Folds in one poll round.
    pub fn apply(&mut self, round: Round) {
        if let Some(refresh) = &round.records {
            if let Some(run) = &refresh.new_run {
                // A new run is a new fleet: the old one's history says nothing about it.
                *self = Fleet::new(run.targets.clone()).with_records(&[], run.mem_limit_bytes);
            }
            self.apply_slots(&refresh.slots);
        }
        // The monitor's own view first: kept from its first failure, so `since` holds.
        self.database = match (round.database, self.database.take()) {
            (Some(now), Some(was)) if now.state == was.state => Some(Database { last_error: now.last_error, ..was }),
            (now, _) => now,
        };
        if round.db_shards.is_some() {
            self.db_shards = round.db_shards;
            self.db_shards_at = Some(round.at_ms);
        }
        let mut finished_now = 0;
        let mut increase = (0, 0);
        for (w, answer) in self.workers.iter_mut().zip(round.answers) {
            match answer {
                Answer::Up(status) => {
                    if let Some(before) = &w.status {
                        finished_now += finished(&status.shard).saturating_sub(finished(&before.shard));
                        increase.0 += status.shard.done.saturating_sub(before.shard.done);
                        increase.1 += status.shard.failed.saturating_sub(before.shard.failed);
                    }
                    if w.supervisor_state.is_none() {
                        w.restarts = status.restarts;
                        w.last_restart_reason = status.last_restart_reason.clone();
                    }
                    w.helping_now = helping_now(&status, w.status.as_ref());
                    w.health = WorkerHealth::Up;
                    w.last_seen = Some(round.at_ms);
                    w.error = None;
                    w.status = Some(*status);
                }
                Answer::Down(why) => {
                    w.health = WorkerHealth::Down;
                    w.error = Some(why);
                    w.helping_now.clear();
                }
                Answer::Error(why) => {
                    w.health = WorkerHealth::Error;
                    w.error = Some(why);
                    w.helping_now.clear();
                }
            }
        }
        self.finished_seen += finished_now;
        self.last_increase = increase;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(finished_now);
        self.at_ms = round.at_ms;
        self.rounds += 1;
        let reported: Vec<f64> = self.up().filter_map(|s| s.avg_job_ms).filter(|ms| *ms > 0.0).collect();
        if !reported.is_empty() {
            self.avg_job_ms = Some(reported.iter().sum::<f64>() / reported.len() as f64);
        }
        match self.in_flight_credit() {
            Some(credit) => {
                self.window.push_back((round.at_ms, self.finished_seen as f64 + credit));
                while self.window.len() > 1 && self.window[0].0 < round.at_ms - RATE_WINDOW_MS {
                    self.window.pop_front();
                }
            }
            // Work is under way that cannot be counted yet: the rate starts over once
            // it can, rather than from rounds that undercount.
            None => self.window.clear(),
        }
    }

    /// The statuses of the workers that answered the last poll.
    fn up(&self) -> impl Iterator<Item = &WorkerStatus> {
        self.workers.iter().filter(|w| w.health == WorkerHealth::Up).filter_map(|w| w.status.as_ref())
    }

    /// The job time to expect of a worker: its own average, else the fleet's.
    fn job_ms(&self, s: &WorkerStatus) -> Option<f64> {
        s.avg_job_ms.filter(|ms| *ms > 0.0).or(self.avg_job_ms)
    }

    /// The videos in flight on up workers, each counted for its share of the expected
    /// job time; None while some video is in flight and no job time is known.
    fn in_flight_credit(&self) -> Option<f64> {
        let mut credit = 0.0;
        for s in self.up() {
            if s.in_flight.is_empty() {
                continue;
            }
            let job_ms = self.job_ms(s)?;
            credit += s.in_flight.iter().map(|j| share_run(j, self.at_ms, job_ms)).sum::<f64>();
        }
        Some(credit)
    }

    fn apply_slots(&mut self, slots: &[FleetWorker]) {
        for s in slots {
            if let Some(w) = self.workers.iter_mut().find(|w| i64::from(w.slot) == s.worker_id) {
                w.restarts = u32::try_from(s.restarts).unwrap_or(0);
                w.last_restart_reason = s.last_reason.clone();
                w.supervisor_state = Some(s.state);
            }
        }
    }

    /// A worker's shard counts as best known: the database's, read this round (with
    /// --db); else its answer; else, for a worker that is not up, the database's last
    /// count of its shard, or its last answer. The database comes first because videos
    /// other workers finished for the shard (`--steal`) are in it at once, and in the
    /// worker's own counts only after its next resync.
    pub fn shard(&self, w: &WorkerReport) -> Option<ShardCounts> {
        let from_db = || self.db_shards.as_ref().and_then(|d| d.get(w.slot as usize)).copied();
        if self.db_shards_at == Some(self.at_ms)
            && let Some(counts) = from_db()
        {
            return Some(counts);
        }
        match (&w.status, w.health) {
            (Some(s), WorkerHealth::Up) => Some(s.shard),
            (last, _) => from_db().or(last.as_ref().map(|s| s.shard)),
        }
    }

    /// Videos finished per second: over the monitor's rolling window once it spans
    /// enough time, else the sum of the workers' own one-minute rates; 0 while no
    /// worker is up, since then nothing can be finishing.
    pub fn rate(&self) -> f64 {
        if self.up().next().is_none() {
            return 0.0;
        }
        if let (Some(first), Some(last)) = (self.window.front(), self.window.back()) {
            let span = last.0 - first.0;
            if span >= MIN_RATE_SPAN_MS {
                // A worker going down takes its credit with it; that is lost work, not
                // negative progress.
                return ((last.1 - first.1) * 1000.0 / span as f64).max(0.0);
            }
        }
        self.up().map(|s| self.own_rate(s)).sum()
    }

    /// A worker's rate as it reports it. One younger than its rate window divides by
    /// its whole life, the stretch before its first finished video included; counting
    /// its videos in flight makes that stretch progress too.
    fn own_rate(&self, s: &WorkerStatus) -> f64 {
        let reported = s.throughput_per_sec.max(0.0);
        if !(1.0..WORKER_RATE_WINDOW_SECS).contains(&s.uptime_seconds) {
            return reported;
        }
        let credit =
            self.job_ms(s).map_or(0.0, |ms| s.in_flight.iter().map(|j| share_run(j, self.at_ms, ms)).sum::<f64>());
        reported.max((s.processed as f64 + credit) / s.uptime_seconds)
    }

    /// Seconds until every shard is finished: the remaining videos (less what is done
    /// of those in flight) at `rate`, but no less than the busiest up worker needs to
    /// run its queue through its slots. The rate alone assumes the fleet keeps its pace
    /// to the end; near it, workers run out of videos before they run out of slots, and
    /// the last jobs take as long as ever.
    fn eta_seconds(&self, remaining: u64, complete: bool, rate: f64) -> Option<u64> {
        if remaining == 0 {
            return complete.then_some(0);
        }
        if rate <= 0.0 {
            return None;
        }
        let credit = self.in_flight_credit().unwrap_or(0.0);
        let by_rate = (remaining as f64 - credit).max(0.0) / rate;
        let drain =
            self.up().filter_map(|s| Some(drain_ms(s, self.at_ms, self.job_ms(s)?) / 1000.0)).fold(0.0, f64::max);
        // 0 means nothing is left; a last second of work still reads as one.
        Some((by_rate.max(drain).round() as u64).max(1))
    }

    /// Whether the counts are last answers rather than current, and as of when.
    fn freshness(&self) -> (bool, Option<i64>) {
        if self.up().next().is_some() {
            return (false, Some(self.at_ms));
        }
        let mut stale = false;
        let mut as_of = None;
        for w in &self.workers {
            let counted_at = if self.db_shards.as_ref().is_some_and(|d| d.get(w.slot as usize).is_some()) {
                self.db_shards_at
            } else if w.status.is_some() {
                stale = true;
                w.last_seen
            } else {
                None
            };
            as_of = as_of.max(counted_at);
        }
        (stale, as_of)
    }

    pub fn totals(&self) -> Totals {
        let mut counts = ShardCounts::default();
        let mut complete = true;
        let mut t = Totals { workers: self.workers.len() as u32, ..Totals::default() };
        for w in &self.workers {
            match self.shard(w) {
                Some(c) => counts += c,
                None => complete = false,
            }
            match w.health {
                WorkerHealth::Up => t.workers_up += 1,
                WorkerHealth::Down => t.workers_down += 1,
                WorkerHealth::Error => t.workers_error += 1,
            }
        }
        let rate = self.rate();
        let (stale, as_of) = self.freshness();
        let answering = self.workers.iter().filter(|w| w.health == WorkerHealth::Up);
        let database = self.database.clone().filter(|d| d.state != DbState::Ok).or_else(|| {
            answering.filter_map(|w| w.status.as_ref()).map(|s| s.database.clone()).find(|d| d.state != DbState::Ok)
        });
        Totals {
            pending: counts.pending,
            running: counts.running,
            done: counts.done,
            failed: counts.failed,
            total: counts.total(),
            rate,
            eta_seconds: self.eta_seconds(counts.pending + counts.running, complete, rate),
            complete,
            stale,
            as_of,
            database,
            ..t
        }
    }

    /// Every worker's recent failed attempts, newest first, with the worker they
    /// happened on (a worker that is not up keeps those of its last answer).
    pub fn recent_errors(&self) -> Vec<(u32, &RecentError)> {
        let mut all: Vec<_> = self
            .workers
            .iter()
            .filter_map(|w| w.status.as_ref().map(|s| (w.worker_id(), s)))
            .flat_map(|(id, s)| s.recent_errors.iter().map(move |e| (id, e)))
            .collect();
        all.sort_by(|a, b| b.1.at.cmp(&a.1.at).then(b.1.video_id.cmp(&a.1.video_id)));
        all
    }

    pub fn report(&self) -> Report {
        Report { at: self.at_ms, workers: self.workers.clone(), totals: self.totals() }
    }
}

/// The other shards `now` works for: a video of theirs in flight, or one taken from
/// them since `before` (the same worker's previous answer).
fn helping_now(now: &WorkerStatus, before: Option<&WorkerStatus>) -> Vec<u32> {
    let n = i64::from(now.workers.max(1));
    let mut shards: Vec<u32> =
        now.in_flight.iter().map(|j| j.video_id.rem_euclid(n) as u32).filter(|k| *k != now.worker_id).collect();
    // A restarted worker counts from zero again: its previous life's figures say nothing.
    let before = before.filter(|b| b.started_at == now.started_at && b.pid == now.pid);
    let took_before = |k: &u32| before.and_then(|b| b.took_from.get(k)).copied().unwrap_or(0);
    shards.extend(now.took_from.iter().filter(|(k, n)| **n > took_before(k)).map(|(k, _)| *k));
    shards.sort_unstable();
    shards.dedup();
    shards
}

fn finished(c: &ShardCounts) -> u64 {
    c.done + c.failed
}

/// How much of a job in flight is done at `now_ms`, guessed from the time it has run.
fn share_run(job: &InFlight, now_ms: i64, job_ms: f64) -> f64 {
    ((now_ms - job.started_at).max(0) as f64 / job_ms).min(IN_FLIGHT_CREDIT_CAP)
}

/// Milliseconds a worker needs at the least to finish its shard: each of its slots runs
/// the rest of its job in flight (none, for a job past the average: it may end any
/// moment), then queued videos one after another, each taking `job_ms`, the next video
/// always going to the slot that frees first.
fn drain_ms(s: &WorkerStatus, now_ms: i64, job_ms: f64) -> f64 {
    let slots = (s.concurrency as usize).max(s.in_flight.len()).max(1);
    let mut free_in: Vec<f64> =
        s.in_flight.iter().map(|j| (job_ms - (now_ms - j.started_at).max(0) as f64).max(0.0)).collect();
    free_in.resize(slots, 0.0);
    free_in.sort_by(f64::total_cmp);
    // Running rows no job of this worker holds (a lease of a process that died) go back
    // to the queue when they are reclaimed.
    let queued = (s.shard.pending + s.shard.running).saturating_sub(s.in_flight.len() as u64);
    // Every slot frees within one job time, so taking the queue in turns keeps the
    // slots in the order they free: the first `extra` of them run one video more.
    let (turns, extra) = (queued / slots as u64, (queued % slots as u64) as usize);
    free_in
        .iter()
        .enumerate()
        .map(|(i, free)| free + job_ms * (turns + u64::from(i < extra)) as f64)
        .fold(0.0, f64::max)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::status::InFlight;

    /// A plausible status of worker `id` of `n`.
    pub(crate) fn status(id: u32, n: u32) -> WorkerStatus {
        WorkerStatus::example(id, n)
    }

    fn targets(n: u32) -> Vec<Target> {
        (0..n)
            .map(|k| Target {
                slot: k,
                base: format!("http://127.0.0.1:{}", 3001 + k).parse().unwrap(),
                expect: Some((k, n)),
                token: None,
            })
            .collect()
    }

    fn up(id: u32, n: u32, shard: ShardCounts) -> Answer {
        Answer::Up(Box::new(WorkerStatus { shard, ..status(id, n) }))
    }

    fn counts(pending: u64, running: u64, done: u64, failed: u64) -> ShardCounts {
        ShardCounts { pending, running, done, failed }
    }

    fn round(at_ms: i64, answers: Vec<Answer>) -> Round {
        Round { at_ms, answers, ..Round::default() }
    }

    /// A run played second by second: worker k starts `k * stagger_ms` in and runs the
    /// `per_shard` videos of its shard through `slots` slots, the next video going to
    /// the slot that frees first; `job_ms(k, i)` is how long its video i takes.
    struct SimRun {
        slots: u32,
        starts: Vec<i64>,
        /// `(started, ended)` of each video, per worker.
        jobs: Vec<Vec<(i64, i64)>>,
    }

    impl SimRun {
        fn new(
            workers: u32,
            slots: u32,
            per_shard: usize,
            stagger_ms: i64,
            job_ms: impl Fn(u32, usize) -> i64,
        ) -> SimRun {
            let starts: Vec<i64> = (0..workers).map(|k| i64::from(k) * stagger_ms).collect();
            let jobs = (0..workers)
                .map(|k| {
                    let mut free = vec![starts[k as usize]; slots as usize];
                    (0..per_shard)
                        .map(|i| {
                            let slot = (0..free.len()).min_by_key(|&s| free[s]).unwrap();
                            let started = free[slot];
                            free[slot] = started + job_ms(k, i);
                            (started, free[slot])
                        })
                        .collect()
                })
                .collect();
            SimRun { slots, starts, jobs }
        }

        fn workers(&self) -> u32 {
            self.jobs.len() as u32
        }

        fn ends_ms(&self) -> i64 {
            self.jobs.iter().flatten().map(|j| j.1).max().unwrap()
        }

        fn share_finished(&self, at: i64) -> f64 {
            let all: Vec<_> = self.jobs.iter().flatten().collect();
            all.iter().filter(|j| j.1 <= at).count() as f64 / all.len() as f64
        }

        /// What worker `k` answers at `at`, the way a worker computes it.
        fn answer(&self, k: u32, at: i64) -> Answer {
            let start = self.starts[k as usize];
            if at < start {
                return Answer::Down("cannot connect: connection refused".into());
            }
            let jobs = &self.jobs[k as usize];
            let ended: Vec<_> = jobs.iter().filter(|j| j.1 <= at).collect();
            let in_flight: Vec<InFlight> = jobs
                .iter()
                .enumerate()
                .filter(|(_, j)| j.0 <= at && at < j.1)
                .map(|(i, j)| InFlight { video_id: i as i64, attempt: 1, started_at: j.0 })
                .collect();
            let done = ended.len() as u64;
            let running = in_flight.len() as u64;
            let uptime = (at - start) as f64 / 1000.0;
            let last_minute = ended.iter().filter(|j| j.1 > at - 60_000).count();
            Answer::Up(Box::new(WorkerStatus {
                concurrency: self.slots,
                shard: counts(jobs.len() as u64 - done - running, running, done, 0),
                in_flight,
                processed: done,
                throughput_per_sec: last_minute as f64 / uptime.clamp(1.0, 60.0),
                avg_job_ms: (!ended.is_empty())
                    .then(|| ended.iter().map(|j| (j.1 - j.0) as f64).sum::<f64>() / ended.len() as f64),
                uptime_seconds: uptime,
                started_at: start,
                ..status(k, self.workers())
            }))
        }

        /// Feeds a monitor started with the run one round a second; returns, for each
        /// round from `from_share` of the videos finished on, the seconds left and the ETA.
        fn etas(&self, from_share: f64) -> Vec<(i64, f64, Option<u64>)> {
            let mut f = Fleet::new(targets(self.workers()));
            let mut seen = vec![];
            for at in (0..self.ends_ms()).step_by(1000) {
                f.apply(round(at, (0..self.workers()).map(|k| self.answer(k, at)).collect()));
                if self.share_finished(at) >= from_share {
                    seen.push((at / 1000, (self.ends_ms() - at) as f64 / 1000.0, f.totals().eta_seconds));
                }
            }
            seen
        }
    }

    /// The rounds whose ETA is off by more than `tolerance` of the time left.
    fn off_by_more_than(etas: &[(i64, f64, Option<u64>)], tolerance: f64) -> Vec<String> {
        etas.iter()
            .filter(|(_, left, eta)| eta.is_none_or(|eta| (eta as f64 - left).abs() > tolerance * left))
            .map(|(at, left, eta)| format!("at {at}s: {left}s left, ETA {eta:?}"))
            .collect()
    }

    #[test]
    fn the_eta_of_a_run_of_half_minute_jobs_is_within_a_quarter_of_the_truth_from_a_fifth_done_on() {
        // The run of the report: 165 s of 30 s jobs, the second worker starting 15 s
        // after the first.
        let run = SimRun::new(2, 4, 20, 15_000, |_, _| 30_000);
        assert_eq!(run.ends_ms(), 165_000);
        let etas = run.etas(0.2);
        assert!(etas.len() > 100, "{}", etas.len());
        let misses = off_by_more_than(&etas, 0.25);
        assert!(misses.is_empty(), "{}", misses.join("\n"));
        let at_55s = etas.iter().find(|e| e.0 == 55).unwrap();
        assert!(at_55s.2.is_some_and(|eta| eta.abs_diff(110) <= 5), "{at_55s:?}");
    }

    #[test]
    fn the_eta_holds_when_the_last_videos_leave_slots_idle_and_jobs_vary_in_length() {
        // 22 videos on 4 slots: the last two run alone, and finish no sooner for it.
        let run = SimRun::new(3, 4, 22, 2_000, |_, _| 30_000);
        let misses = off_by_more_than(&run.etas(0.2), 0.25);
        assert!(misses.is_empty(), "{}", misses.join("\n"));
        // Jobs of 24 to 36 s, in no order: while more than a job is left the ETA stays
        // within a quarter; the last job's own length cannot be known sooner.
        let run = SimRun::new(4, 3, 25, 5_000, |k, i| 30_000 + ((k as i64 * 7 + i as i64 * 5) % 13 - 6) * 1_000);
        let etas: Vec<_> = run.etas(0.2).into_iter().filter(|(_, left, _)| *left > 36.0).collect();
        assert!(etas.len() > 100, "{}", etas.len());
        let misses = off_by_more_than(&etas, 0.25);
        assert!(misses.is_empty(), "{}", misses.join("\n"));
    }

    #[test]
    fn totals_sum_every_shard_and_a_down_worker_counts_with_its_last_answer() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(0, vec![up(0, 2, counts(10, 2, 5, 1)), up(1, 2, counts(4, 1, 20, 3))]));
        f.apply(round(1000, vec![up(0, 2, counts(9, 2, 6, 1)), Answer::Down("cannot connect".into())]));
        let t = f.totals();
        assert_eq!((t.pending, t.running, t.done, t.failed, t.total), (13, 3, 26, 4, 46));
        assert_eq!((t.workers_up, t.workers_down, t.workers_error), (1, 1, 0));
        assert!(t.complete);
        let down = &f.workers()[1];
        assert_eq!(down.health, WorkerHealth::Down);
        assert_eq!(down.last_seen, Some(0));
        assert_eq!(down.error.as_deref(), Some("cannot connect"));
    }

    #[test]
    fn a_worker_that_never_answered_leaves_the_totals_incomplete_unless_the_database_counts_it() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(0, vec![up(0, 2, counts(1, 0, 1, 0)), Answer::Down("no answer in time".into())]));
        assert!(!f.totals().complete);
        let mut r = round(1000, vec![up(0, 2, counts(1, 0, 1, 0)), Answer::Down("no answer in time".into())]);
        r.db_shards = Some(vec![counts(1, 0, 1, 0), counts(7, 0, 3, 0)]);
        f.apply(r);
        let t = f.totals();
        assert!(t.complete);
        assert_eq!((t.pending, t.done), (8, 4));
    }

    #[test]
    fn a_single_poll_takes_the_rate_from_the_workers_and_the_eta_from_it() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(0, vec![up(0, 2, counts(30, 0, 0, 0)), up(1, 2, counts(30, 0, 0, 0))]));
        let t = f.totals();
        assert_eq!(t.rate, 3.0, "two workers at 1.5/s each");
        assert_eq!(t.eta_seconds, Some(20));
    }

    #[test]
    fn over_time_the_rate_comes_from_the_monitors_own_rolling_window() {
        let mut f = Fleet::new(targets(1));
        for s in 0..=90 {
            // 2 videos a second, while the worker claims a (wrong) 1.5/s.
            f.apply(round(s * 1000, vec![up(0, 1, counts(1000 - 2 * s as u64, 0, 2 * s as u64, 0))]));
        }
        let t = f.totals();
        assert!((t.rate - 2.0).abs() < 1e-9, "{}", t.rate);
        assert_eq!(t.eta_seconds, Some(410));
        assert_eq!(f.history().back(), Some(&2));
    }

    #[test]
    fn a_retry_that_lowers_failed_or_a_late_worker_does_not_distort_the_rate() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(0, vec![up(0, 2, counts(0, 0, 50, 10)), Answer::Down("not yet".into())]));
        // Ten failed videos requeued; worker 1 shows up with 500 done long ago.
        f.apply(round(10_000, vec![up(0, 2, counts(10, 0, 50, 0)), up(1, 2, counts(0, 0, 500, 0))]));
        assert_eq!(f.rate(), 0.0);
        assert_eq!(f.totals().eta_seconds, None, "nothing finishes, so no ETA");
    }

    #[test]
    fn with_every_worker_down_the_totals_are_their_last_answers_marked_stale_with_no_rate_or_eta() {
        let mut f = Fleet::new(targets(2));
        for s in 0..=10u64 {
            let shard = |k: u64| counts(20 - s - k, 1, s + k, 0);
            f.apply(round(s as i64 * 1000, vec![up(0, 2, shard(0)), up(1, 2, shard(1))]));
        }
        let live = f.totals();
        assert!(live.eta_seconds.is_some() && live.rate > 0.0 && !live.stale, "{live:?}");
        assert_eq!(live.as_of, Some(10_000));
        for s in 11..=40 {
            f.apply(round(s * 1000, vec![Answer::Down("connection refused".into()); 2]));
        }
        let t = f.totals();
        assert_eq!((t.running, t.pending, t.done), (2, 19, 21), "the last answers still count");
        assert!(t.stale);
        assert_eq!(t.as_of, Some(10_000), "when the figures were last current");
        assert_eq!((t.rate, t.eta_seconds), (0.0, None), "nothing can be finishing");
        let json = serde_json::to_value(f.report()).unwrap();
        assert_eq!((&json["totals"]["stale"], &json["totals"]["as_of"]), (&true.into(), &10_000.into()));

        f.apply(round(41_000, vec![up(0, 2, counts(10, 1, 10, 0)), Answer::Down("connection refused".into())]));
        let back = f.totals();
        assert!(!back.stale && back.eta_seconds.is_some(), "{back:?}");
        assert_eq!(back.as_of, Some(41_000));
    }

    #[test]
    fn with_every_worker_down_shards_counted_from_the_database_are_current_but_have_no_eta() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(0, vec![up(0, 2, counts(5, 1, 4, 0)), up(1, 2, counts(5, 1, 4, 0))]));
        let mut r = round(30_000, vec![Answer::Down("connection refused".into()); 2]);
        r.db_shards = Some(vec![counts(5, 0, 5, 0), counts(4, 0, 6, 0)]);
        f.apply(r);
        f.apply(round(31_000, vec![Answer::Down("connection refused".into()); 2]));
        let t = f.totals();
        assert_eq!((t.pending, t.done, t.stale, t.as_of), (9, 11, false, Some(30_000)));
        assert_eq!((t.rate, t.eta_seconds), (0.0, None));
    }

    #[test]
    fn a_worker_is_helping_only_while_it_runs_or_just_took_a_video_of_another_shard() {
        let mut f = Fleet::new(targets(2));
        let may_take = |took: u64, in_flight: Vec<i64>| {
            let mut s = status(0, 2);
            // What a balanced `--steal idle` fleet reports: every other shard may be taken from.
            s.helping = vec![1];
            s.took_from = [(1, took)].into_iter().filter(|(_, n)| *n > 0).collect();
            s.in_flight =
                in_flight.into_iter().map(|id| InFlight { video_id: id, attempt: 1, started_at: 0 }).collect();
            Answer::Up(Box::new(s))
        };
        f.apply(round(0, vec![may_take(0, vec![2, 4]), up(1, 2, counts(1, 0, 0, 0))]));
        assert!(f.workers()[0].helping_now.is_empty(), "allowed to help is not helping");
        f.apply(round(1000, vec![may_take(0, vec![2, 3]), up(1, 2, counts(1, 0, 0, 0))]));
        assert_eq!(f.workers()[0].helping_now, [1], "video 3 of shard 1 in flight");
        f.apply(round(2000, vec![may_take(1, vec![]), up(1, 2, counts(1, 0, 0, 0))]));
        assert_eq!(f.workers()[0].helping_now, [1], "took one since the last poll");
        f.apply(round(3000, vec![may_take(1, vec![]), up(1, 2, counts(1, 0, 0, 0))]));
        assert!(f.workers()[0].helping_now.is_empty(), "took nothing more");
    }

    #[test]
    fn counts_read_from_the_database_this_round_win_over_a_workers_own_so_helpers_work_shows_at_once() {
        let mut f = Fleet::new(targets(2));
        // Worker 0 helped shard 1 finish its last three videos; worker 1 has not resynced.
        let answers = || vec![up(0, 2, counts(0, 0, 10, 0)), up(1, 2, counts(3, 0, 7, 0))];
        let mut r = round(1000, answers());
        r.db_shards = Some(vec![counts(0, 0, 10, 0), counts(0, 0, 10, 0)]);
        f.apply(r);
        let t = f.totals();
        assert_eq!((t.pending, t.done), (0, 20));
        // A round without a database read falls back to the workers' answers.
        f.apply(round(2000, answers()));
        assert_eq!(f.totals().pending, 3);
    }

    #[test]
    fn nothing_left_to_do_means_an_eta_of_zero() {
        let mut f = Fleet::new(targets(1));
        f.apply(round(0, vec![up(0, 1, counts(0, 0, 9, 1))]));
        assert_eq!(f.totals().eta_seconds, Some(0));
    }

    #[test]
    fn the_supervisors_records_give_restarts_even_when_the_worker_is_down() {
        let slot = FleetWorker {
            run_id: 1,
            worker_id: 1,
            pid: None,
            port: 3002,
            state: SlotStatus::Backoff,
            started_at: None,
            restarts: 3,
            last_reason: Some("killed: memory limit".into()),
            last_restart_at: None,
            rss_bytes: None,
            memory_kills: 1,
            updated_at: None,
        };
        let f = Fleet::new(targets(2)).with_records(&[slot], Some(100));
        let w = &f.workers()[1];
        assert_eq!((w.restarts, w.last_restart_reason.as_deref()), (3, Some("killed: memory limit")));
        assert_eq!(w.supervisor_state, Some(SlotStatus::Backoff));
        assert_eq!(f.mem_limit(w), Some(100));
    }

    #[test]
    fn the_report_reads_back_into_the_shared_status_types() {
        let mut f = Fleet::new(targets(2));
        f.apply(round(5, vec![up(0, 2, counts(1, 2, 3, 4)), Answer::Error("unexpected answer: HTTP 404".into())]));
        let json = serde_json::to_string(&f.report()).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.report());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["workers"][1]["health"], "error");
        assert_eq!(v["totals"]["running"], 2);
        assert!(v["totals"]["eta_seconds"].is_u64());
    }
}
