//! The supervisor's command line. Doc comments are the `--help` text.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shared::config::{HandlerArgs, JobArgs};
use shared::ids::WorkerIds;
use shared::logging::LogFormat;
use shared::storage::DbLocation;
use shared::units::{ByteSize, duration_arg};

/// Runs a fleet of shardfleet workers over one SQLite database: each worker owns the
/// videos where video_id % N = its id, under a memory limit, restarted when it crashes.
#[derive(Parser, Debug)]
#[command(name = "supervisor", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start N workers and keep them running (until a signal, `supervisor stop`, or with
    /// --exit-when-done, the end of the work).
    Start(Box<StartArgs>),
    /// Import videos from a CSV file (header video_id,source[,payload]) or JSON lines.
    /// Every line is checked; if any is bad, nothing is imported.
    Import(ImportArgs),
    /// Show the fleet: workers, restarts, memory, shard progress.
    Status(StatusArgs),
    /// Stop a running fleet: workers finish or hand back what they hold, then exit.
    Stop(StopArgs),
    /// Change the number of workers (shards) of a running fleet without stopping its run:
    /// the workers finish or hand back what they hold, then N start on the new shards.
    Scale(ScaleArgs),
    /// Put failed videos back to pending, with a fresh set of attempts.
    Retry(RetryArgs),
    /// Write videos and their results as CSV or JSON lines.
    Export(ExportArgs),
    /// Show the workers' logs.
    Logs(LogsArgs),
}

impl Command {
    /// How the command logs: `start` as its flags say, the others as text.
    pub fn log_format(&self) -> LogFormat {
        match self {
            Command::Start(a) => a.log_format,
            _ => LogFormat::Text,
        }
    }

    /// The database the command works on.
    pub fn db(&self) -> &DbLocation {
        match self {
            Command::Start(a) => &a.db.db,
            Command::Import(a) => &a.db.db,
            Command::Status(a) => &a.db.db,
            Command::Stop(a) => &a.db.db,
            Command::Scale(a) => &a.db.db,
            Command::Retry(a) => &a.db.db,
            Command::Export(a) => &a.db.db,
            Command::Logs(a) => &a.db.db,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DbArg {
    /// The fleet's database: a SQLite file (default fleet.db) or a PostgreSQL URL
    /// (postgres://user@host/dbname). Without --db or FLEET_DB, DATABASE_URL is used when
    /// it is set.
    #[arg(long, env = "FLEET_DB", value_name = "PATH|URL", default_value = shared::storage::default_db(),
          hide_default_value = true, hide_env_values = true)]
    pub db: DbLocation,
}

/// How the memory limit is enforced.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemEnforce {
    /// The strongest the host allows: cgroup v2, then cgroup v1, then sampling.
    Auto,
    /// A kernel cgroup (v2 or v1); refuse to start without one.
    Cgroup,
    /// Sample the RSS of each worker's process tree and kill what breaks the limit.
    Sample,
}

#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// Number of workers; worker K owns the videos where video_id % N = K.
    #[arg(long, env = "FLEET_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Memory limit of each worker and every process it starts: 250M, 250MiB, 1G,
    /// 1.5GiB or bytes (binary units, as PM2 reads them).
    #[arg(long, env = "FLEET_MEM_LIMIT")]
    pub mem_limit: ByteSize,

    #[command(flatten)]
    pub db: DbArg,

    /// Port of worker 0; worker K listens on base-port + K.
    #[arg(long, default_value_t = 3001, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,

    /// Address the workers listen on. Beyond loopback (0.0.0.0, a host address) other
    /// hosts and a remote monitor can reach them; their control endpoints still need
    /// the control token.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Run only these worker ids of the fleet's N on this host (`3-5`, `0,2`, `0-1,4`);
    /// another host's supervisor, on the same PostgreSQL database, runs the rest.
    /// Default: all of them.
    #[arg(long, env = "FLEET_WORKER_IDS", value_name = "IDS")]
    pub worker_ids: Option<WorkerIds>,

    /// The host name or address other hosts and `monitor --db` reach this host's
    /// workers at, recorded with the run (default: the --bind address, loopback for a
    /// wildcard).
    #[arg(long, env = "FLEET_ADVERTISE", value_name = "HOST")]
    pub advertise: Option<String>,

    #[command(flatten)]
    pub handler: HandlerArgs,

    #[command(flatten)]
    pub job: JobArgs,

    /// Start workers one after another, each once the previous answers /health, this
    /// long apart. 0 starts them all at once.
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = duration_arg)]
    pub stagger: Duration,

    /// How long a starting worker may take to answer /health before it is reported as
    /// not ready (and, past --unhealthy-after, restarted).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration_arg)]
    pub ready_timeout: Duration,

    /// End the run when no video is pending or running in any shard, and print a
    /// summary. Exit 0 if every video is done, 3 if some failed.
    #[arg(long)]
    pub exit_when_done: bool,

    /// Directory of the per-worker log files (default: fleet-logs next to the database).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,

    /// Rotate a worker's log file when it reaches this size.
    #[arg(long, default_value = "10M")]
    pub log_max_size: ByteSize,

    /// Rotated log files kept per worker.
    #[arg(long, default_value_t = 3)]
    pub log_keep: u32,

    /// What the supervisor prints, its own lines and its workers' merged: readable text,
    /// or one JSON object per line (for journald or Kubernetes log collectors), worker
    /// lines naming their `worker_id`. The workers log in the same format.
    #[arg(long, env = shared::logging::LOG_FORMAT_ENV, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A TOML file setting any of these flags (default: fleet.toml in the working
    /// directory, if present). Flags and environment variables win over the file.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// How the memory limit is enforced.
    #[arg(long, value_enum, default_value = "auto")]
    pub mem_enforce: MemEnforce,

    /// In sampling mode, how often each worker's process tree is measured.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = duration_arg)]
    pub sample_interval: Duration,

    /// First delay before restarting a crashed worker; it doubles with each crash in a
    /// row.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = duration_arg)]
    pub restart_delay: Duration,

    /// Longest delay before a restart.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = duration_arg)]
    pub restart_delay_max: Duration,

    /// A worker that ran this long is stable again: its restart delay starts over.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = duration_arg)]
    pub stable_after: Duration,

    /// Crash loop: this many restarts within the window mark the worker errored.
    #[arg(long, value_name = "N/WINDOW", default_value = "5/60s")]
    pub crash_loop: CrashLoop,

    /// How long an errored worker rests before it is tried again.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration_arg)]
    pub errored_cooldown: Duration,

    /// How often each worker's /health is polled.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = duration_arg)]
    pub health_interval: Duration,

    /// A running worker whose /health has not answered for this long is restarted.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration_arg)]
    pub unhealthy_after: Duration,

    /// Bearer token for the workers' control endpoints (default: a random one per run,
    /// kept in the database for `monitor --db`).
    #[arg(long, env = "FLEET_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,
}

/// `--crash-loop 5/60s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub restarts: u32,
    pub window: Duration,
}

impl std::str::FromStr for CrashLoop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("invalid crash loop {s:?}: expected RESTARTS/WINDOW, e.g. 5/60s");
        let (n, w) = s.split_once('/').ok_or_else(err)?;
        let restarts: u32 = n.trim().parse().map_err(|_| err())?;
        let window = shared::units::parse_duration(w).map_err(|_| err())?;
        if restarts == 0 || window.is_zero() {
            return Err(err());
        }
        Ok(CrashLoop { restarts, window })
    }
}

impl std::fmt::Display for CrashLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.restarts, shared::units::format_duration(self.window))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// CSV (header video_id,source[,payload], one row per line) or JSON lines
    /// ({"video_id":1,"source":"..."}).
    pub file: PathBuf,
    #[command(flatten)]
    pub db: DbArg,
    /// Refuse a source (a path or URL) longer than this: 64K, 1M or bytes.
    #[arg(long, value_name = "SIZE", default_value_t = shared::config::DEFAULT_MAX_SOURCE)]
    pub max_source_bytes: ByteSize,
    /// Refuse a payload (its JSON text) longer than this.
    #[arg(long, value_name = "SIZE", default_value_t = shared::config::DEFAULT_MAX_PAYLOAD)]
    pub max_payload_bytes: ByteSize,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Stop only the supervisors running these worker ids (one host's part of a fleet
    /// that spans hosts). Default: every supervisor of the fleet, on every host.
    #[arg(long, value_name = "IDS")]
    pub worker_ids: Option<WorkerIds>,
    /// How long to wait for the fleet to stop.
    #[arg(long, value_name = "DUR", default_value = "90s", value_parser = duration_arg)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// The new number of workers; worker K then owns the videos where video_id % N = K.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    #[command(flatten)]
    pub db: DbArg,
    /// How long to wait for every supervisor to run the new layout.
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = duration_arg)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false, id = "which")]
pub struct RetrySelect {
    /// Requeue every failed video.
    #[arg(long, group = "which")]
    pub failed: bool,
    /// Requeue these videos (each must be failed).
    #[arg(group = "which", value_name = "VIDEO_ID")]
    pub ids: Vec<i64>,
}

#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    #[command(flatten)]
    pub select: RetrySelect,
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Only videos with these statuses (pending, running, done, failed; repeat or
    /// separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<shared::status::VideoStatus>,
    /// Only videos that succeeded with warnings: done, and the handler wrote to stderr
    /// (its tail is the `warnings` column).
    #[arg(long)]
    pub warnings: bool,
    /// Write here instead of stdout (written whole, then renamed into place).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Only this worker's log.
    #[arg(long)]
    pub worker: Option<u32>,
    /// Keep printing new lines as they are written.
    #[arg(long, short)]
    pub follow: bool,
    /// Lines of history to show first.
    #[arg(long, default_value_t = 50)]
    pub lines: usize,
    /// The log directory (default: the one of the latest run in the database).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArg,
}
