//! `supervisor start`'s flags, checked once before anything runs: the run's settings
//! (`FleetConfig`, which never change while it runs) and the layout it starts in
//! (`Layout`, which `supervisor scale` replaces), and the checks against the host
//! (ports, a batch with nothing to do) made before anything is spawned or written.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use shared::config::{HandlerArgs, JobArgs};
use shared::ids::WorkerIds;
use shared::logging::LogFormat;
use shared::storage::{DbLocation, Store};
use shared::units::ByteSize;

use super::crashes::RestartPolicy;
use crate::cli::{MemEnforce, StartArgs};

/// How a run goes, from its flags; checked, and never changed while it runs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The database as given; the run resolves a SQLite path to an absolute one.
    pub db: DbLocation,
    /// Port of worker 0; worker K listens on base-port + K.
    pub base_port: u16,
    /// The address the workers listen on.
    pub bind: IpAddr,
    /// The host other hosts reach this one's workers at, kept in the run record.
    pub advertise: Option<String>,
    /// Every worker's memory limit, and how it is to be held.
    pub mem_limit: ByteSize,
    pub mem_enforce: MemEnforce,
    /// In sampling mode, how often each worker's tree is measured.
    pub sample_interval: Duration,
    /// What the workers run, and how (passed on to each worker's command line).
    pub handler: HandlerArgs,
    pub job: JobArgs,
    /// The gap between two first starts (0: all at once).
    pub stagger: Duration,
    /// How long a starting worker may take to answer /health before it counts as not
    /// ready.
    pub ready_timeout: Duration,
    /// How often /health is polled, and how long a running worker may be silent.
    pub health_interval: Duration,
    pub unhealthy_after: Duration,
    /// When crashed workers come back.
    pub restart: RestartPolicy,
    /// End the run when the work is done, with a summary.
    pub exit_when_done: bool,
    /// Where and how the workers' output is kept.
    pub log_dir: Option<PathBuf>,
    pub log_max_size: ByteSize,
    pub log_keep: u32,
    pub log_format: LogFormat,
    /// The workers' control token, if the user chose one (else a random one per run).
    pub control_token: Option<String>,
}

/// The fleet's shards and which of them this supervisor runs. A run starts in the one
/// its flags name; `supervisor scale` replaces it (`rescale.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// N: worker K owns the videos where video_id % N = K.
    pub workers: u32,
    /// This supervisor's worker ids: all of them, or `--worker-ids`.
    pub ids: WorkerIds,
}

impl Layout {
    /// All `workers` ids, or only `ids`.
    pub fn new(workers: u32, ids: Option<WorkerIds>) -> Layout {
        Layout { workers, ids: ids.unwrap_or_else(|| WorkerIds::all(workers)) }
    }

    /// The ids as the run record keeps them: none when this supervisor runs them all.
    pub fn recorded_ids(&self) -> Option<String> {
        (!self.ids.is_all(self.workers)).then(|| self.ids.to_string())
    }
}

impl FleetConfig {
    /// Checks the flags (the error is one sentence) and splits them into the run's
    /// settings and its first layout.
    pub fn from_args(args: StartArgs) -> anyhow::Result<(FleetConfig, Layout)> {
        args.handler.validate().map_err(anyhow::Error::msg)?;
        args.job.validate().map_err(anyhow::Error::msg)?;
        if let Some(token) = &args.control_token {
            shared::config::validate_control_token(token).map_err(anyhow::Error::msg)?;
        }
        if args.mem_limit.bytes() < 16 << 20 {
            bail!("--mem-limit {} is too small for a worker; use at least 16M", args.mem_limit);
        }
        if shared::ports::last_port(args.base_port, args.workers).is_none() {
            let last = u32::from(args.base_port) + args.workers - 1;
            bail!("--base-port {} with {} workers needs ports up to {last}, past 65535", args.base_port, args.workers);
        }
        if let Some(ids) = &args.worker_ids {
            ids.check(args.workers).map_err(anyhow::Error::msg)?;
        }
        if let Some(host) = &args.advertise
            && !shared::host::is_valid(host)
        {
            bail!("--advertise {host:?} is not a host name or IP address (no port, scheme or zone)");
        }
        if args.sample_interval > Duration::from_millis(250) || args.sample_interval < Duration::from_millis(10) {
            bail!("--sample-interval must be between 10ms and 250ms");
        }
        let layout = Layout::new(args.workers, args.worker_ids);
        let restart = RestartPolicy {
            delay: args.restart_delay,
            delay_max: args.restart_delay_max,
            stable_after: args.stable_after,
            crash_loop: args.crash_loop,
            cooldown: args.errored_cooldown,
        };
        let config = FleetConfig {
            db: args.db.db,
            base_port: args.base_port,
            bind: args.bind,
            advertise: args.advertise,
            mem_limit: args.mem_limit,
            mem_enforce: args.mem_enforce,
            sample_interval: args.sample_interval,
            handler: args.handler,
            job: args.job,
            stagger: args.stagger,
            ready_timeout: args.ready_timeout,
            health_interval: args.health_interval,
            unhealthy_after: args.unhealthy_after,
            restart,
            exit_when_done: args.exit_when_done,
            log_dir: args.log_dir,
            log_max_size: args.log_max_size,
            log_keep: args.log_keep,
            log_format: args.log_format,
            control_token: args.control_token,
        };
        Ok((config, layout))
    }

    /// Worker `k`'s port. The flags were checked to fit every worker of the first
    /// layout, and a new layout's ids to fit (`rescaled`).
    pub fn port(&self, k: u32) -> u16 {
        shared::ports::worker_port(self.base_port, k).expect("a layout's ports are checked to fit when it is made")
    }

    /// The layout `supervisor scale` asked for: `workers` shards, of which this
    /// supervisor runs `ids` (all by default); an error names what is wrong with it.
    pub fn rescaled(&self, workers: u32, ids: Option<&str>) -> Result<Layout, String> {
        let Some(ids) = ids else { return Ok(Layout::new(workers, None)) };
        match ids.parse::<WorkerIds>() {
            Ok(ids)
                if ids.check(workers).is_ok() && shared::ports::worker_port(self.base_port, ids.max()).is_some() =>
            {
                Ok(Layout::new(workers, Some(ids)))
            }
            Ok(ids) => Err(format!(
                "ignoring a scale request for worker ids {ids} of {workers}: no such ids, or a port past 65535"
            )),
            Err(e) => Err(format!("ignoring a scale request with unreadable worker ids: {e}")),
        }
    }
}

/// Tries every worker's port before anything starts, so a busy one changes nothing.
/// A port someone else holds is a fact of the host, not a bad flag: a runtime failure.
/// An address this host does not have, or a port it may not bind, is a bad flag.
pub fn check_ports(config: &FleetConfig, layout: &Layout) -> Result<(), crate::Failure> {
    for k in layout.ids.iter() {
        let port = config.port(k);
        if let Err(e) = std::net::TcpListener::bind((config.bind, port)) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(anyhow::anyhow!(
                    "port {port} on {} is already in use (worker {k} would listen there)",
                    config.bind
                )
                .into());
            }
            return Err(crate::Failure::usage(anyhow::anyhow!(
                "cannot listen on {}:{port} (worker {k}): {e}",
                config.bind
            )));
        }
    }
    Ok(())
}

/// A batch run (`--exit-when-done`) with no videos would end at once having done
/// nothing: refused before anything is created, naming the command that adds videos.
pub async fn check_batch_has_videos(config: &FleetConfig) -> anyhow::Result<()> {
    if !config.exit_when_done {
        return Ok(());
    }
    let db = &config.db;
    let file = db.path().map(std::fs::metadata);
    let empty = match file {
        Some(Err(_)) => true,
        Some(Ok(m)) if m.len() == 0 => true,
        // A database that is not a fleet's (or a PostgreSQL one with no schema yet) is
        // for `prepare` to refuse or set up, in its own words.
        _ => match Store::open_read_only(db).await {
            Ok(db) => {
                let has = db.has_videos().await;
                db.close().await;
                !has?
            }
            Err(_) => false,
        },
    };
    if empty {
        bail!("{db} holds no videos, so a batch run has nothing to do; add some with `supervisor import FILE` first");
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `supervisor start` with the required flags and `flags`, checked.
    pub fn config(flags: &[&str]) -> (FleetConfig, Layout) {
        let argv = ["supervisor", "start", "--mem-limit", "250M", "--db", "/tmp/fleet.db"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Start(args) => FleetConfig::from_args(*args).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_ids_make_the_layout_and_are_recorded_only_when_some_are_left_out() {
        let (_, whole) = config(&["--workers", "4", "--sleep", "1ms"]);
        assert_eq!((whole.ids.to_string(), whole.recorded_ids()), ("0-3".to_string(), None));
        let (_, part) = config(&["--workers", "4", "--worker-ids", "2-3", "--sleep", "1ms"]);
        assert_eq!(part.recorded_ids().as_deref(), Some("2-3"));
    }

    #[test]
    fn a_scale_request_for_ids_past_the_last_port_or_the_fleet_is_refused_in_words() {
        let (config, _) = config(&["--workers", "2", "--base-port", "65530", "--sleep", "1ms"]);
        assert_eq!(config.rescaled(8, Some("4-5")), Ok(Layout::new(8, Some("4-5".parse().unwrap()))));
        let past = config.rescaled(8, Some("6-7")).unwrap_err();
        assert!(past.contains("a port past 65535"), "{past}");
        let missing = config.rescaled(4, Some("4")).unwrap_err();
        assert!(missing.contains("no such ids"), "{missing}");
        assert!(config.rescaled(4, Some("x")).unwrap_err().contains("unreadable worker ids"));
        assert_eq!(config.rescaled(3, None), Ok(Layout::new(3, None)));
    }
}
