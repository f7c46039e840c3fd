//! The fleet as the monitor sees it: each worker's last answer folded into a report,
//! totals over every shard, the rate over a rolling window and the ETA. Pure state, fed
//! one poll round at a time, so it is tested without a network.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use shared::db::fleet::FleetWorker;
use shared::status::{RecentError, ShardCounts, WorkerStatus};

use crate::poll::{Answer, Round};
use crate::targets::Target;

/// The rolling window the fleet's rate is measured over.
pub const RATE_WINDOW_MS: i64 = 60_000;
/// Below this much watching, the monitor's own window says little, and the workers'
/// one-minute rates are used instead.
const MIN_RATE_SPAN_MS: i64 = 5_000;
/// Rounds of throughput kept for the sparkline (ten minutes at the default interval).
const HISTORY: usize = 600;

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
    pub supervisor_state: Option<String>,
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
        }
    }

    /// The id to show: the worker's own once it answered.
    pub fn worker_id(&self) -> u32 {
        self.status.as_ref().map_or(self.slot, |s| s.worker_id)
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
    /// Videos finished (done or failed) per second.
    pub rate: f64,
    /// Seconds until no video is pending or running at `rate`; null while nothing
    /// finishes (or nothing is known).
    pub eta_seconds: Option<u64>,
    pub workers: u32,
    pub workers_up: u32,
    pub workers_down: u32,
    pub workers_error: u32,
    /// Whether every shard's counts are known; false while a worker that never
    /// answered leaves its shard out (with --db such shards are counted from the table).
    pub complete: bool,
}

impl Totals {
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }

    /// Share of videos finished, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.finished() as f64 / self.total as f64 }
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
///               "workers_down": 1, "workers_error": 0, "complete": true }
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
///   videos finished per second over the monitor's last minute; a single poll (as
///   `--json` does) sums the workers' own one-minute rates instead. `eta_seconds` is
///   `(pending + running) / rate`, 0 when nothing is left, null while the rate is 0.
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
    /// The run's memory limit, for workers that do not report one.
    mem_limit_fallback: Option<u64>,
    /// Videos seen finishing since the monitor started: the sum of every worker's
    /// increase in done + failed between its answers. Counting increases rather than
    /// reading the total keeps a worker that appears late (with its whole history) or
    /// a retry (failed going down) from distorting the rate.
    finished_seen: u64,
    /// `(at_ms, finished_seen)` of the rounds within the rate window.
    window: VecDeque<(i64, u64)>,
    /// Videos finished in each round, oldest first, for the sparkline.
    history: VecDeque<u64>,
    at_ms: i64,
    rounds: u64,
}

impl Fleet {
    pub fn new(targets: Vec<Target>) -> Fleet {
        Fleet {
            workers: targets.iter().map(WorkerReport::new).collect(),
            targets,
            db_shards: None,
            mem_limit_fallback: None,
            finished_seen: 0,
            window: VecDeque::new(),
            history: VecDeque::new(),
            at_ms: 0,
            rounds: 0,
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
        if round.db_shards.is_some() {
            self.db_shards = round.db_shards;
        }
        let mut finished_now = 0;
        for (w, answer) in self.workers.iter_mut().zip(round.answers) {
            match answer {
                Answer::Up(status) => {
                    if let Some(before) = &w.status {
                        finished_now += finished(&status.shard).saturating_sub(finished(&before.shard));
                    }
                    if w.supervisor_state.is_none() {
                        w.restarts = status.restarts;
                        w.last_restart_reason = status.last_restart_reason.clone();
                    }
                    w.health = WorkerHealth::Up;
                    w.last_seen = Some(round.at_ms);
                    w.error = None;
                    w.status = Some(*status);
                }
                Answer::Down(why) => {
                    w.health = WorkerHealth::Down;
                    w.error = Some(why);
                }
                Answer::Error(why) => {
                    w.health = WorkerHealth::Error;
                    w.error = Some(why);
                }
            }
        }
        self.finished_seen += finished_now;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(finished_now);
        self.window.push_back((round.at_ms, self.finished_seen));
        while self.window.len() > 1 && self.window[0].0 < round.at_ms - RATE_WINDOW_MS {
            self.window.pop_front();
        }
        self.at_ms = round.at_ms;
        self.rounds += 1;
    }

    fn apply_slots(&mut self, slots: &[FleetWorker]) {
        for s in slots {
            if let Some(w) = self.workers.iter_mut().find(|w| i64::from(w.slot) == s.worker_id) {
                w.restarts = u32::try_from(s.restarts).unwrap_or(0);
                w.last_restart_reason = s.last_reason.clone();
                w.supervisor_state = Some(s.state.clone());
            }
        }
    }

    /// A worker's shard counts as best known: its answer, or for a worker that is not up
    /// the database's count of its shard, or its last answer.
    pub fn shard(&self, w: &WorkerReport) -> Option<ShardCounts> {
        let from_db = || self.db_shards.as_ref().and_then(|d| d.get(w.slot as usize)).copied();
        match (&w.status, w.health) {
            (Some(s), WorkerHealth::Up) => Some(s.shard),
            (last, _) => from_db().or(last.as_ref().map(|s| s.shard)),
        }
    }

    /// Videos finished per second: over the monitor's rolling window once it spans
    /// enough time, else the sum of the workers' own one-minute rates.
    pub fn rate(&self) -> f64 {
        if let (Some(first), Some(last)) = (self.window.front(), self.window.back()) {
            let span = last.0 - first.0;
            if span >= MIN_RATE_SPAN_MS {
                return (last.1 - first.1) as f64 * 1000.0 / span as f64;
            }
        }
        self.workers
            .iter()
            .filter(|w| w.health == WorkerHealth::Up)
            .filter_map(|w| w.status.as_ref())
            .map(|s| s.throughput_per_sec.max(0.0))
            .sum()
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
        let remaining = counts.pending + counts.running;
        Totals {
            pending: counts.pending,
            running: counts.running,
            done: counts.done,
            failed: counts.failed,
            total: counts.total(),
            rate,
            eta_seconds: if remaining == 0 && complete {
                Some(0)
            } else if rate > 0.0 && remaining > 0 {
                Some((remaining as f64 / rate).round() as u64)
            } else {
                None
            },
            complete,
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

fn finished(c: &ShardCounts) -> u64 {
    c.done + c.failed
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::status::WorkerState;

    /// A plausible status of worker `id` of `n`.
    pub(crate) fn status(id: u32, n: u32) -> WorkerStatus {
        WorkerStatus {
            worker_id: id,
            workers: n,
            pid: 1000 + id,
            port: 3001 + id as u16,
            state: WorkerState::Running,
            handler: "sleep: 100ms".into(),
            concurrency: 4,
            shard: ShardCounts { pending: 10, running: 2, done: 5, failed: 1 },
            in_flight: vec![],
            processed: 6,
            throughput_per_sec: 1.5,
            avg_job_ms: Some(100.0),
            rss_bytes: 8 << 20,
            mem_limit_bytes: Some(250 << 20),
            uptime_seconds: 10.0,
            started_at: 0,
            restarts: 0,
            last_restart_reason: None,
            recent_errors: vec![],
            version: "0.1.0".into(),
        }
    }

    fn targets(n: u32) -> Vec<Target> {
        (0..n)
            .map(|k| Target {
                slot: k,
                base: format!("http://127.0.0.1:{}", 3001 + k).parse().unwrap(),
                expect: Some((k, n)),
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
            state: "backoff".into(),
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
        assert_eq!(w.supervisor_state.as_deref(), Some("backoff"));
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
