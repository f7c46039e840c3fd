//! The JSON a worker serves on `/status`, defined once so the monitor and supervisor
//! read exactly what workers write.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::words::words;

pub use crate::config::Steal;

words! {
    /// Where a video is in its life. The order is the kept counts' slot order
    /// (`shard * 4 + place`), which the SQLite triggers of migrations 0003 and 0010 also
    /// spell: a test in `storage/sqlite/sql.rs` holds them to it.
    VideoStatus("video status") {
        Pending => "pending",
        Running => "running",
        Done => "done",
        Failed => "failed",
    }
}

words! {
    /// How one attempt ended, as the history table records it.
    Outcome("outcome") {
        /// The handler succeeded.
        Done => "done",
        /// The handler failed (non-zero exit, HTTP error, ...).
        Error => "error",
        /// The handler ran past `--job-timeout` and was killed.
        Timeout => "timeout",
        /// The handler was killed for exceeding the memory limit.
        Memory => "memory",
        /// The lease lapsed (its worker stopped renewing) and the video was taken back.
        Expired => "expired",
        /// The worker shut down before the job finished; the attempt is not counted.
        Released => "released",
        /// The worker died and the supervisor took its videos back.
        Crashed => "crashed",
        /// The row cannot be run as it is (a source or payload above the limits): failed
        /// at once, since no retry can change it.
        Rejected => "rejected",
    }
}

/// Videos of one shard by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
}

impl ShardCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.done + self.failed
    }

    /// Nothing left to do: no pending or running video.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.running == 0
    }

    pub fn get(&self, status: VideoStatus) -> u64 {
        match status {
            VideoStatus::Pending => self.pending,
            VideoStatus::Running => self.running,
            VideoStatus::Done => self.done,
            VideoStatus::Failed => self.failed,
        }
    }

    pub fn get_mut(&mut self, status: VideoStatus) -> &mut u64 {
        match status {
            VideoStatus::Pending => &mut self.pending,
            VideoStatus::Running => &mut self.running,
            VideoStatus::Done => &mut self.done,
            VideoStatus::Failed => &mut self.failed,
        }
    }

    /// Moves `n` videos from one status to another, never below zero.
    pub fn shift(&mut self, from: VideoStatus, to: VideoStatus, n: u64) {
        let f = self.get_mut(from);
        *f = f.saturating_sub(n);
        *self.get_mut(to) += n;
    }
}

impl std::ops::AddAssign for ShardCounts {
    fn add_assign(&mut self, o: ShardCounts) {
        self.pending += o.pending;
        self.running += o.running;
        self.done += o.done;
        self.failed += o.failed;
    }
}

words! {
    /// Whether a process's database answers (`/status`, `/health`, the dashboards). An
    /// outage is waited out, never a reason to exit: see `DbError::outage`.
    DbState("database state") {
        /// It answers.
        Ok => "ok",
        /// It cannot be reached, or refuses for now (shutting down, locked, no free
        /// connection).
        Unreachable => "unreachable",
        /// Its disk is full: reads go on, writes wait.
        Full => "full",
    }
}

/// The database as a process last found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub state: DbState,
    /// Unix milliseconds: since when it is in this state (absent while `ok` since the
    /// start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// The last error it gave, kept after it answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Default for Database {
    fn default() -> Database {
        Database { state: DbState::Ok, since: None, last_error: None }
    }
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Opening the database, not yet claiming.
    Starting,
    /// Claiming and running videos.
    Running,
    /// Nothing is due in its shard; polling for more.
    Idle,
    /// Told to stop claiming by `POST /pause`; jobs in flight carry on.
    Paused,
    /// Shutting down: no new claims, waiting for jobs in flight.
    Draining,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Idle => "idle",
            WorkerState::Paused => "paused",
            WorkerState::Draining => "draining",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A video a worker is running now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub video_id: i64,
    pub attempt: u32,
    /// Unix milliseconds.
    pub started_at: i64,
}

/// A recent failed attempt, newest first in `WorkerStatus::recent_errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentError {
    pub video_id: i64,
    pub attempt: u32,
    /// Unix milliseconds.
    pub at: i64,
    pub outcome: Outcome,
    pub error: String,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker_id: u32,
    pub workers: u32,
    pub pid: u32,
    pub port: u16,
    pub state: WorkerState,
    /// The handler in words, e.g. `exec: ./analyse {source}` or `sleep: 50ms..200ms`.
    pub handler: String,
    pub concurrency: u32,
    /// The shard's videos by status, as of the worker's last write or resync.
    pub shard: ShardCounts,
    pub in_flight: Vec<InFlight>,
    /// Videos this process finished (done or failed) since it started.
    pub processed: u64,
    /// Finished videos per second over the last minute.
    pub throughput_per_sec: f64,
    /// Mean handler time of the last jobs, in milliseconds.
    pub avg_job_ms: Option<f64>,
    pub rss_bytes: u64,
    /// The memory limit the supervisor enforces on this worker's process tree, if any.
    pub mem_limit_bytes: Option<u64>,
    pub uptime_seconds: f64,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Restarts of this worker slot, as the supervisor told it when it started it.
    pub restarts: u32,
    pub last_restart_reason: Option<String>,
    pub recent_errors: Vec<RecentError>,
    pub version: String,
    /// How an `--http` handler paces its calls; absent for other handlers (and from
    /// workers older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<Pacing>,
    /// Which other shards this worker takes videos from (`--steal`); absent from
    /// workers older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal: Option<Steal>,
    /// The other shards this worker may take from now: orphaned ones, and with `--steal
    /// idle` the live ones with a backlog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub helping: Vec<u32>,
    /// Videos this process took from other shards, by shard.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub took_from: BTreeMap<u32, u64>,
    /// Whether the worker's database answers; `ok` from workers older than the field.
    #[serde(default)]
    pub database: Database,
}

impl WorkerStatus {
    /// A plausible running worker `worker_id` of `workers` (a `sleep` handler, a shard
    /// part done, 8 MiB of 250 MiB, up ten seconds): what tests of the monitor draw, and
    /// change a field or two of.
    #[cfg(feature = "testing")]
    pub fn example(worker_id: u32, workers: u32) -> WorkerStatus {
        WorkerStatus {
            worker_id,
            workers,
            pid: 1000 + worker_id,
            port: 3001 + worker_id as u16,
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
            pacing: None,
            steal: None,
            helping: vec![],
            took_from: BTreeMap::new(),
            database: Database::default(),
        }
    }
}

/// The pace of an `--http` handler's calls, learnt from the server's push-back under the
/// `--rate` and `--min-delay` caps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pacing {
    /// Calls per second allowed now, by the learnt pace and the caps together; absent
    /// while nothing limits them (no cap, no push-back yet).
    pub calls_per_sec: Option<f64>,
    /// Answers that pushed back: 429, 503, refused or timed-out connections.
    pub push_backs: u64,
    /// Bursts of push-back the pace was cut for (the first one included).
    pub slowdowns: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub worker_id: u32,
    pub pid: u32,
    pub state: WorkerState,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The database as the worker's loop last found it: an outage is waited out, so it
    /// does not make the worker unhealthy.
    #[serde(default)]
    pub database: Database,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_counts_never_goes_below_zero() {
        let mut c = ShardCounts { pending: 1, ..Default::default() };
        c.shift(VideoStatus::Pending, VideoStatus::Running, 3);
        assert_eq!(c, ShardCounts { pending: 0, running: 3, done: 0, failed: 0 });
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for &s in VideoStatus::ALL {
            assert_eq!(s.as_str().parse::<VideoStatus>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
