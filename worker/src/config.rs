//! The worker's command line, and the validated configuration `run` takes.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{HandlerArgs, JobArgs};
use shared::logging::LogFormat;
use shared::storage::DbLocation;
use shared::units::{ByteSize, duration_arg};

/// A shardfleet worker: claims the videos of its shard (video_id % workers = worker-id)
/// from the shared database and runs each through a handler. Runs alone or under
/// `supervisor start`.
#[derive(Parser, Debug, Clone)]
#[command(name = "worker", version)]
pub struct Cli {
    /// This worker's shard, from 0 to workers-1. Required, unless
    /// --worker-id-from-hostname says where else to find it.
    #[arg(long, env = "WORKER_ID", value_parser = worker_id_arg)]
    pub worker_id: Option<u32>,

    /// Take the worker id from the host name's trailing ordinal (`shardfleet-3` is 3),
    /// as a Kubernetes StatefulSet names its pods. For clusters whose pods lack the
    /// apps.kubernetes.io/pod-index label that WORKER_ID can come from.
    #[arg(long, env = "FLEET_WORKER_ID_FROM_HOSTNAME", conflicts_with = "worker_id")]
    pub worker_id_from_hostname: bool,

    /// Number of workers (shards) in the fleet.
    #[arg(long, env = "FLEET_WORKERS")]
    pub workers: u32,

    /// HTTP port for /health, /status and /metrics; default 3001 + worker-id. 0 picks a
    /// free port (it is logged).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,

    /// Port of worker 0 when --port is not given.
    #[arg(long, default_value_t = 3001)]
    pub base_port: u16,

    /// Address to listen on. Control endpoints need a control token whatever the
    /// address; beyond loopback, /health, /status and /metrics answer anyone who can
    /// reach the port (a warning at start says so).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// The fleet's database, created and migrated if missing: a SQLite file (default
    /// fleet.db) or a PostgreSQL URL (postgres://user@host/dbname). Without --db or
    /// FLEET_DB, DATABASE_URL is used when it is set.
    #[arg(long, env = "FLEET_DB", value_name = "PATH|URL", default_value = shared::storage::default_db(),
          hide_default_value = true, hide_env_values = true)]
    pub db: DbLocation,

    #[command(flatten)]
    pub handler: HandlerArgs,

    #[command(flatten)]
    pub job: JobArgs,

    /// Bearer token for POST /pause, /resume and /videos/{id}/retry. Without one those
    /// endpoints are refused. Other processes of the same user (handlers included) can
    /// read it back from /proc/<pid>/cmdline or /proc/<pid>/environ; --control-token-fd
    /// cannot be.
    #[arg(long, env = "FLEET_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,

    /// Read the control token from this inherited file descriptor (a pipe or a file) at
    /// start-up, then close it. How the supervisor hands the token over: nothing of it
    /// shows in this process's command line or environment.
    #[arg(long, value_name = "FD", conflicts_with = "control_token")]
    pub control_token_fd: Option<u32>,

    /// Exit (0) once the shard has no pending or running video left; with --steal
    /// orphaned or idle, once no shard of the fleet has, so that a shard whose worker
    /// dies late is still finished by the others.
    #[arg(long)]
    pub exit_when_done: bool,

    /// How often an idle worker looks for newly due videos.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = duration_arg)]
    pub poll: Duration,

    /// How long a client may take to send a request's headers (from connecting, or from
    /// the end of its previous request) before the connection is closed, so half-sent
    /// requests cannot hold sockets open. Hidden: tests shorten it.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = duration_arg, hide = true)]
    pub header_timeout: Duration,

    /// The memory limit the supervisor holds this worker to; reported on /status.
    #[arg(long, env = "FLEET_MEM_LIMIT")]
    pub mem_limit: Option<ByteSize>,

    /// Restarts of this worker slot so far (set by the supervisor).
    #[arg(long, env = "FLEET_RESTARTS", default_value_t = 0, hide = true)]
    pub restarts: u32,

    /// Why the supervisor last restarted this slot (set by the supervisor).
    #[arg(long, env = "FLEET_LAST_RESTART_REASON", hide = true)]
    pub last_restart_reason: Option<String>,

    /// Log lines as readable text, or as one JSON object each (for journald or
    /// Kubernetes log collectors).
    #[arg(long, env = shared::logging::LOG_FORMAT_ENV, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: u32,
    pub workers: u32,
    pub bind: IpAddr,
    pub port: u16,
    pub db: DbLocation,
    pub handler: HandlerArgs,
    pub job: JobArgs,
    pub control_token: Option<String>,
    pub exit_when_done: bool,
    pub poll: Duration,
    /// See `Cli::header_timeout`; `shared::http::serve` closes connections that exceed it.
    pub header_timeout: Duration,
    pub mem_limit: Option<ByteSize>,
    pub restarts: u32,
    pub last_restart_reason: Option<String>,
}

impl Cli {
    /// The worker id: given, or read from the host name when asked to. Never guessed:
    /// a worker without one (a Deployment's pod, a unit without `%i`) refuses to start.
    pub fn resolve_worker_id(&self) -> Result<u32, String> {
        match (self.worker_id, self.worker_id_from_hostname) {
            (Some(k), _) => Ok(k),
            (None, true) => {
                let name = nix::unistd::gethostname()
                    .map_err(|e| format!("--worker-id-from-hostname: cannot read the host name: {e}"))?;
                worker_id_from_name(&name.to_string_lossy())
            }
            (None, false) => Err("no worker id: give --worker-id K (or WORKER_ID), each worker of the fleet its own \
                 from 0 to workers-1; a Kubernetes StatefulSet sets WORKER_ID from its pods' \
                 apps.kubernetes.io/pod-index label (a Deployment cannot number its pods, so it cannot run workers)"
                .into()),
        }
    }

    /// Checks the flags against each other; the error is one sentence for the user.
    pub fn into_config(self) -> Result<WorkerConfig, String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        let worker_id = self.resolve_worker_id()?;
        if worker_id >= self.workers {
            let from = if self.worker_id.is_some() { "--worker-id" } else { "the host name's worker id" };
            return Err(format!(
                "{from} {worker_id} is out of range: with --workers {} it must be between 0 and {}",
                self.workers,
                self.workers - 1
            ));
        }
        self.job.validate()?;
        // Checked here, before the port is bound: a worker that cannot run its handler
        // must not look alive to whoever polls its port.
        self.handler.validate()?;
        let control_token = match self.control_token_fd {
            Some(fd) => Some(read_token_fd(fd)?),
            None => self.control_token,
        };
        if let Some(token) = &control_token {
            shared::config::validate_control_token(token)?;
        }
        let port = match self.port {
            Some(p) => p,
            None => shared::ports::worker_port(self.base_port, worker_id)
                .ok_or_else(|| format!("--base-port {} + worker id {worker_id} is past port 65535", self.base_port))?,
        };
        Ok(WorkerConfig {
            worker_id,
            workers: self.workers,
            bind: self.bind,
            port,
            db: self.db,
            handler: self.handler,
            job: self.job,
            control_token,
            exit_when_done: self.exit_when_done,
            poll: self.poll.max(Duration::from_millis(10)),
            header_timeout: self.header_timeout.max(Duration::from_millis(100)),
            mem_limit: self.mem_limit,
            restarts: self.restarts,
            last_restart_reason: self.last_restart_reason,
        })
    }
}

/// A worker id; an empty one (WORKER_ID from a pod label the cluster does not set) is
/// named as such rather than as a number that does not parse.
fn worker_id_arg(s: &str) -> Result<u32, String> {
    if s.trim().is_empty() {
        return Err("the worker id is empty; from Kubernetes' apps.kubernetes.io/pod-index label it is empty \
             before Kubernetes 1.28, where --worker-id-from-hostname (FLEET_WORKER_ID_FROM_HOSTNAME=1) takes it \
             from the pod's name instead"
            .into());
    }
    s.trim().parse().map_err(|_| format!("{s:?} is not a worker id (a number from 0 to workers-1)"))
}

/// The ordinal at the end of a StatefulSet pod's name: `shardfleet-3` is worker 3.
fn worker_id_from_name(name: &str) -> Result<u32, String> {
    name.rsplit_once('-')
        .map(|(_, ordinal)| ordinal)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| {
            format!(
                "--worker-id-from-hostname: the host name {name:?} does not end in -N, the ordinal a StatefulSet gives its pods"
            )
        })
}

/// Reads the control token from an inherited descriptor and closes it, so that no
/// handler started later inherits it and nothing in /proc shows the token.
fn read_token_fd(fd: u32) -> Result<String, String> {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let raw = i32::try_from(fd).map_err(|_| format!("--control-token-fd {fd} is not a file descriptor"))?;
    // SAFETY: F_GETFD only asks whether the descriptor is open; it changes nothing.
    if unsafe { nix::libc::fcntl(raw, nix::libc::F_GETFD) } == -1 {
        return Err(format!("--control-token-fd {fd}: no such open file descriptor"));
    }
    // SAFETY: the descriptor is open, was inherited for this purpose, and nothing else
    // in this process uses it (this runs before the runtime or any handler starts).
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let mut token = String::new();
    (&mut file)
        .take(4096)
        .read_to_string(&mut token)
        .map_err(|e| format!("--control-token-fd {fd}: cannot read the token: {e}"))?;
    drop(file);
    Ok(token.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkerConfig, String> {
        let mut argv = vec!["worker", "--sleep", "0"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map_err(|e| e.to_string())?.into_config()
    }

    #[test]
    fn the_port_defaults_to_base_port_plus_worker_id() {
        assert_eq!(parse(&["--worker-id", "2", "--workers", "3"]).unwrap().port, 3003);
        assert_eq!(parse(&["--worker-id", "2", "--workers", "3", "--port", "9000"]).unwrap().port, 9000);
    }

    #[test]
    fn the_control_token_can_come_through_an_inherited_descriptor() {
        use std::io::Write;
        use std::os::fd::{IntoRawFd, OwnedFd};
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(b"from-a-pipe-123\n").unwrap();
        drop(writer);
        let fd = OwnedFd::from(reader).into_raw_fd().to_string();
        let c = parse(&["--worker-id", "0", "--workers", "1", "--control-token-fd", &fd]).unwrap();
        assert_eq!(c.control_token.as_deref(), Some("from-a-pipe-123"));
        let e = parse(&["--worker-id", "0", "--workers", "1", "--control-token-fd", "999999"]).unwrap_err();
        assert!(e.contains("no such open file descriptor"), "{e}");
    }

    #[test]
    fn a_statefulset_pods_name_gives_its_ordinal_and_other_names_are_refused() {
        assert_eq!(worker_id_from_name("shardfleet-3"), Ok(3));
        assert_eq!(worker_id_from_name("my-fleet-worker-12"), Ok(12));
        for bad in ["shardfleet", "shardfleet-", "shardfleet-3a", "shardfleet-7d9f8b-x2kq9"] {
            let e = worker_id_from_name(bad).unwrap_err();
            assert!(e.contains("does not end in -N"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_worker_without_a_worker_id_is_refused_and_told_where_one_comes_from() {
        let e = parse(&["--workers", "3"]).unwrap_err();
        assert!(e.starts_with("no worker id: give --worker-id K (or WORKER_ID)"), "{e}");
        assert!(e.contains("apps.kubernetes.io/pod-index"), "{e}");
        let both = Cli::try_parse_from([
            "worker",
            "--sleep",
            "0",
            "--workers",
            "3",
            "--worker-id",
            "1",
            "--worker-id-from-hostname",
        ]);
        assert!(both.is_err(), "an id and a place to find one are one too many");
        let empty = parse(&["--workers", "3", "--worker-id", ""]).unwrap_err();
        assert!(empty.contains("the worker id is empty"), "{empty}");
    }

    #[test]
    fn worker_id_must_be_below_workers_and_workers_above_zero() {
        let e = parse(&["--worker-id", "3", "--workers", "3"]).unwrap_err();
        assert!(e.contains("--worker-id 3 is out of range"), "{e}");
        let e = parse(&["--worker-id", "0", "--workers", "0"]).unwrap_err();
        assert!(e.contains("--workers must be at least 1"), "{e}");
    }
}
