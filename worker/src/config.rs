//! The worker's command line, and the validated configuration `run` takes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shared::config::{HandlerArgs, JobArgs};
use shared::units::{ByteSize, duration_arg};

/// A shardfleet worker: claims the videos of its shard (video_id % workers = worker-id)
/// from the shared database and runs each through a handler. Runs alone or under
/// `supervisor start`.
#[derive(Parser, Debug, Clone)]
#[command(name = "worker", version)]
pub struct Cli {
    /// This worker's shard, from 0 to workers-1.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: u32,

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

    /// Address to listen on. Control endpoints need --control-token whatever the address.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// The fleet's SQLite database; created and migrated if missing.
    #[arg(long, env = "FLEET_DB", default_value = "fleet.db")]
    pub db: PathBuf,

    #[command(flatten)]
    pub handler: HandlerArgs,

    #[command(flatten)]
    pub job: JobArgs,

    /// Bearer token for POST /pause, /resume and /videos/{id}/retry. Without one those
    /// endpoints are refused.
    #[arg(long, env = "FLEET_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,

    /// Exit (0) once the shard has no pending or running video left.
    #[arg(long)]
    pub exit_when_done: bool,

    /// How often an idle worker looks for newly due videos.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = duration_arg)]
    pub poll: Duration,

    /// The memory limit the supervisor holds this worker to; reported on /status.
    #[arg(long, env = "FLEET_MEM_LIMIT")]
    pub mem_limit: Option<ByteSize>,

    /// Restarts of this worker slot so far (set by the supervisor).
    #[arg(long, env = "FLEET_RESTARTS", default_value_t = 0, hide = true)]
    pub restarts: u32,

    /// Why the supervisor last restarted this slot (set by the supervisor).
    #[arg(long, env = "FLEET_LAST_RESTART_REASON", hide = true)]
    pub last_restart_reason: Option<String>,
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: u32,
    pub workers: u32,
    pub bind: IpAddr,
    pub port: u16,
    pub db: PathBuf,
    pub handler: HandlerArgs,
    pub job: JobArgs,
    pub control_token: Option<String>,
    pub exit_when_done: bool,
    pub poll: Duration,
    pub mem_limit: Option<ByteSize>,
    pub restarts: u32,
    pub last_restart_reason: Option<String>,
}

impl Cli {
    /// Checks the flags against each other; the error is one sentence for the user.
    pub fn into_config(self) -> Result<WorkerConfig, String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.worker_id >= self.workers {
            return Err(format!(
                "--worker-id {} is out of range: with --workers {} it must be between 0 and {}",
                self.worker_id,
                self.workers,
                self.workers - 1
            ));
        }
        self.job.validate()?;
        if self.control_token.as_deref().is_some_and(|t| t.len() < 8) {
            return Err("--control-token must be at least 8 characters".into());
        }
        let port = match self.port {
            Some(p) => p,
            None => self
                .base_port
                .checked_add(self.worker_id as u16)
                .filter(|_| self.worker_id <= u16::MAX as u32)
                .ok_or_else(|| {
                    format!("--base-port {} + worker id {} is past port 65535", self.base_port, self.worker_id)
                })?,
        };
        Ok(WorkerConfig {
            worker_id: self.worker_id,
            workers: self.workers,
            bind: self.bind,
            port,
            db: self.db,
            handler: self.handler,
            job: self.job,
            control_token: self.control_token,
            exit_when_done: self.exit_when_done,
            poll: self.poll.max(Duration::from_millis(10)),
            mem_limit: self.mem_limit,
            restarts: self.restarts,
            last_restart_reason: self.last_restart_reason,
        })
    }
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
    fn worker_id_must_be_below_workers_and_workers_above_zero() {
        let e = parse(&["--worker-id", "3", "--workers", "3"]).unwrap_err();
        assert!(e.contains("--worker-id 3 is out of range"), "{e}");
        let e = parse(&["--worker-id", "0", "--workers", "0"]).unwrap_err();
        assert!(e.contains("--workers must be at least 1"), "{e}");
    }
}
