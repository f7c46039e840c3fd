//! What the worker knows about itself right now, kept in memory so `/status` never
//! touches the database. The runner writes it as it claims and finishes; HTTP reads a
//! snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::status::{
    Database, InFlight, Pacing, RecentError, ShardCounts, Steal, VideoStatus, WorkerState, WorkerStatus,
};

use crate::handler::Pacer;
use tokio::sync::Notify;

/// Errors kept for `/status`.
const RECENT_ERRORS: usize = 20;
/// Jobs the average job time is taken over.
const JOB_TIME_WINDOW: usize = 256;
/// Seconds the throughput is averaged over.
const RATE_WINDOW: usize = 60;

/// Facts fixed at start.
#[derive(Debug, Clone)]
pub struct Identity {
    pub worker_id: u32,
    pub workers: u32,
    pub port: u16,
    pub handler: String,
    pub concurrency: u32,
    pub mem_limit_bytes: Option<u64>,
    pub restarts: u32,
    pub last_restart_reason: Option<String>,
    pub steal: Steal,
}

#[derive(Debug)]
pub struct Live {
    pub id: Identity,
    pid: u32,
    started: Instant,
    started_at_ms: i64,
    inner: Mutex<Inner>,
    /// Wakes the runner when something outside it (resume, a retried video) may have
    /// made work claimable.
    pub wake: Notify,
    /// The http handler's pacer, read for each snapshot: it keeps its own state.
    pacer: Option<Arc<Pacer>>,
}

#[derive(Debug)]
struct Inner {
    state: WorkerState,
    paused: bool,
    counts: ShardCounts,
    in_flight: BTreeMap<i64, InFlight>,
    recent_errors: VecDeque<RecentError>,
    finished: RateWindow,
    job_ms: VecDeque<f64>,
    processed: u64,
    rss_bytes: u64,
    /// Other shards this worker may take from now (`crate::steal`).
    helping: Vec<u32>,
    /// Videos claimed from other shards, by shard.
    took_from: BTreeMap<u32, u64>,
    /// The database as the runner last found it.
    database: Database,
    /// When the runner's loop last turned: `/health` fails once it stops turning.
    last_turn: Option<Instant>,
}

impl Live {
    pub fn new(id: Identity) -> Live {
        Live {
            id,
            pid: std::process::id(),
            started: Instant::now(),
            started_at_ms: shared::storage::now_ms(),
            inner: Mutex::new(Inner {
                state: WorkerState::Starting,
                paused: false,
                counts: ShardCounts::default(),
                in_flight: BTreeMap::new(),
                recent_errors: VecDeque::new(),
                finished: RateWindow::new(),
                job_ms: VecDeque::new(),
                processed: 0,
                rss_bytes: 0,
                helping: Vec::new(),
                took_from: BTreeMap::new(),
                database: Database::default(),
                last_turn: None,
            }),
            wake: Notify::new(),
            pacer: None,
        }
    }

    /// Reports this pacer's pace in every snapshot.
    pub fn with_pacer(self, pacer: Option<Arc<Pacer>>) -> Live {
        Live { pacer, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; keep serving them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> WorkerState {
        self.lock().state
    }

    /// Sets the state the runner is in; a pause shows over running and idle.
    pub fn set_state(&self, state: WorkerState) {
        self.lock().state = state;
    }

    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.wake.notify_one();
    }

    pub fn counts(&self) -> ShardCounts {
        self.lock().counts
    }

    pub fn set_counts(&self, counts: ShardCounts) {
        self.lock().counts = counts;
    }

    pub fn shift(&self, from: VideoStatus, to: VideoStatus, n: u64) {
        self.lock().counts.shift(from, to, n);
    }

    pub fn started(&self, jobs: impl IntoIterator<Item = InFlight>) {
        let mut g = self.lock();
        for j in jobs {
            g.in_flight.insert(j.video_id, j);
        }
    }

    /// Jobs ended (however they ended): they are no longer in flight.
    pub fn ended(&self, video_ids: impl IntoIterator<Item = i64>) {
        let mut g = self.lock();
        for id in video_ids {
            g.in_flight.remove(&id);
        }
    }

    /// Finished attempts written to the database: `finished` of them ended their video
    /// (done or failed), `job_ms` are their handler times.
    pub fn record_finished(&self, finished: u64, job_ms: impl IntoIterator<Item = f64>) {
        let mut g = self.lock();
        g.processed += finished;
        g.finished.add(self.started.elapsed(), finished);
        for ms in job_ms {
            if g.job_ms.len() == JOB_TIME_WINDOW {
                g.job_ms.pop_front();
            }
            g.job_ms.push_back(ms);
        }
    }

    pub fn record_error(&self, e: RecentError) {
        let mut g = self.lock();
        if g.recent_errors.len() == RECENT_ERRORS {
            g.recent_errors.pop_back();
        }
        g.recent_errors.push_front(e);
    }

    pub fn set_rss(&self, bytes: u64) {
        self.lock().rss_bytes = bytes;
    }

    /// The other shards this worker may take from now.
    pub fn set_helping(&self, shards: Vec<u32>) {
        self.lock().helping = shards;
    }

    /// Counts videos claimed from other shards (`shard` of each).
    pub fn took(&self, shards: impl IntoIterator<Item = u32>) {
        let mut g = self.lock();
        for k in shards {
            *g.took_from.entry(k).or_default() += 1;
        }
    }

    pub fn set_database(&self, database: Database) {
        self.lock().database = database;
    }

    pub fn database(&self) -> Database {
        self.lock().database.clone()
    }

    /// The runner's loop turned.
    pub fn turned(&self) {
        self.lock().last_turn = Some(Instant::now());
    }

    /// How long since the runner's loop last turned; None before it first turned.
    pub fn since_turn(&self) -> Option<Duration> {
        self.lock().last_turn.map(|t| t.elapsed())
    }

    pub fn snapshot(&self) -> WorkerStatus {
        let elapsed = self.started.elapsed();
        let g = self.lock();
        let state = if g.paused && g.state != WorkerState::Draining { WorkerState::Paused } else { g.state };
        WorkerStatus {
            worker_id: self.id.worker_id,
            workers: self.id.workers,
            pid: self.pid,
            port: self.id.port,
            state,
            handler: self.id.handler.clone(),
            concurrency: self.id.concurrency,
            shard: g.counts,
            in_flight: g.in_flight.values().cloned().collect(),
            processed: g.processed,
            throughput_per_sec: g.finished.rate(elapsed),
            avg_job_ms: (!g.job_ms.is_empty()).then(|| g.job_ms.iter().sum::<f64>() / g.job_ms.len() as f64),
            rss_bytes: g.rss_bytes,
            mem_limit_bytes: self.id.mem_limit_bytes,
            uptime_seconds: elapsed.as_secs_f64(),
            started_at: self.started_at_ms,
            restarts: self.id.restarts,
            last_restart_reason: self.id.last_restart_reason.clone(),
            recent_errors: g.recent_errors.iter().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pacing: self.pacer.as_ref().map(|p| {
                let r = p.report();
                Pacing { calls_per_sec: r.calls_per_sec, push_backs: r.push_backs, slowdowns: r.slowdowns }
            }),
            steal: Some(self.id.steal),
            helping: g.helping.clone(),
            took_from: g.took_from.clone(),
            database: g.database.clone(),
        }
    }
}

/// Events per second over the last minute, in one-second buckets.
#[derive(Debug)]
struct RateWindow {
    buckets: [u64; RATE_WINDOW],
    /// The second (since start) the newest bucket stands for.
    newest: u64,
}

impl RateWindow {
    fn new() -> RateWindow {
        RateWindow { buckets: [0; RATE_WINDOW], newest: 0 }
    }

    fn advance(&mut self, now: Duration) {
        let sec = now.as_secs();
        if sec > self.newest {
            let steps = (sec - self.newest).min(RATE_WINDOW as u64);
            for i in 1..=steps {
                self.buckets[((self.newest + i) % RATE_WINDOW as u64) as usize] = 0;
            }
            self.newest = sec;
        }
    }

    fn add(&mut self, now: Duration, n: u64) {
        self.advance(now);
        self.buckets[(self.newest % RATE_WINDOW as u64) as usize] += n;
    }

    /// Reads without advancing, so a reader never clears buckets; buckets older than the
    /// window are excluded by the span.
    fn rate(&self, now: Duration) -> f64 {
        let span = now.as_secs_f64().clamp(1.0, RATE_WINDOW as f64);
        let stale = now.as_secs().saturating_sub(self.newest);
        if stale >= RATE_WINDOW as u64 {
            return 0.0;
        }
        let sum: u64 = (0..RATE_WINDOW as u64 - stale)
            .map(|i| self.buckets[((self.newest + RATE_WINDOW as u64 - i) % RATE_WINDOW as u64) as usize])
            .sum();
        sum as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_averaged_over_the_last_minute() {
        let mut w = RateWindow::new();
        for s in 0..120 {
            w.add(Duration::from_secs(s), 10);
        }
        assert!((w.rate(Duration::from_secs(119)) - 10.0).abs() < 0.01);
        // A minute of silence brings it to zero.
        assert_eq!(w.rate(Duration::from_secs(200)), 0.0);
    }

    #[test]
    fn a_young_worker_divides_by_its_age_not_a_full_minute() {
        let mut w = RateWindow::new();
        w.add(Duration::from_millis(1500), 30);
        assert!((w.rate(Duration::from_secs(2)) - 15.0).abs() < 0.01);
    }
}
