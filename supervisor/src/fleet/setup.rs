//! Before the loop: the checks `start` makes before anything is spawned or written
//! (flags, ports, a batch with nothing to do, a fleet too big for the host), then the
//! run's setup (database, a dead run's recovery, memory enforcement, logs, the run
//! record and its control token).

use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shared::storage::{FleetRun, RunState, Store, now_ms};
use shared::units::human_bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing_appender::non_blocking::NonBlocking;

use super::health::HealthRounds;
use super::memory::Memory;
use super::restart::RestartPolicy;
use super::slot::Slot;
use super::{Fleet, RunEnd, launch, output, records, recover, takeover};
use crate::cli::StartArgs;

/// Checks of the flags, made before anything is spawned or written; the error is one
/// sentence.
pub fn preflight(args: &StartArgs) -> anyhow::Result<()> {
    args.handler.validate().map_err(anyhow::Error::msg)?;
    args.job.validate().map_err(anyhow::Error::msg)?;
    if let Some(token) = &args.control_token {
        shared::config::validate_control_token(token).map_err(anyhow::Error::msg)?;
    }
    if args.mem_limit.bytes() < 16 << 20 {
        bail!("--mem-limit {} is too small for a worker; use at least 16M", args.mem_limit);
    }
    let last = args.base_port as u32 + args.workers - 1;
    if last > u16::MAX as u32 {
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
    Ok(())
}

/// Tries every worker's port before anything starts, so a busy one changes nothing.
/// A port someone else holds is a fact of the host, not a bad flag: a runtime failure.
/// An address this host does not have, or a port it may not bind, is a bad flag.
pub fn check_ports(args: &StartArgs) -> Result<(), crate::Failure> {
    for k in args.ids().iter() {
        let port = args.base_port + k as u16;
        if let Err(e) = std::net::TcpListener::bind((args.bind, port)) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(anyhow::anyhow!(
                    "port {port} on {} is already in use (worker {k} would listen there)",
                    args.bind
                )
                .into());
            }
            return Err(crate::Failure::usage(anyhow::anyhow!(
                "cannot listen on {}:{port} (worker {k}): {e}",
                args.bind
            )));
        }
    }
    Ok(())
}

/// A batch run (`--exit-when-done`) with no videos would end at once having done
/// nothing: refused before anything is created, naming the command that adds videos.
pub async fn check_batch_has_videos(args: &StartArgs) -> anyhow::Result<()> {
    if !args.exit_when_done {
        return Ok(());
    }
    let db = &args.db.db;
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

/// Warns when the fleet cannot fit the host: it will run, but slowly or into the kernel's
/// OOM killer, and the user should hear why before it happens.
fn warn_if_too_big(args: &StartArgs) {
    // This host's workers: with --worker-ids, the others run elsewhere.
    let here = args.ids().len() as u32;
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    if here > cores * 8 {
        tracing::warn!(
            "{here} workers on {cores} cores: far more processes than cores; start-up and health checks will be slow (a few workers per core is plenty; raise --concurrency instead)"
        );
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let wanted = args.mem_limit.bytes().saturating_mul(u64::from(here));
    if let Some(total) = total
        && wanted > total
    {
        tracing::warn!(
            "{here} workers x {} = {} is more than this host's memory ({}): the kernel may kill workers before their limit does",
            args.mem_limit,
            human_bytes(wanted),
            human_bytes(total)
        );
    }
}

impl Fleet {
    /// Opens the database, sets up memory enforcement and records the run. Nothing is
    /// spawned yet.
    pub async fn prepare(args: StartArgs, out: NonBlocking) -> anyhow::Result<Fleet> {
        let exe = launch::worker_exe()?;
        let db_path = args.db.db.absolute().context("cannot resolve --db")?;
        // One connection: every write of ours comes from this one loop, in turn.
        let db = Store::open(&db_path, 1).await.context("cannot use the database")?;
        let reader = Store::open_read_only(&db_path).await.context("cannot read the database")?;
        if !reader.has_videos().await? {
            tracing::warn!(
                "{db_path} holds no videos yet; the workers wait for some: add them with `supervisor import FILE`"
            );
        }
        warn_if_too_big(&args);
        let tag = format!("shardfleet-{}", std::process::id());
        let memory = Memory::setup(args.mem_enforce, args.mem_limit.bytes(), &tag)?;
        tracing::info!(
            "memory limit {} per worker, enforced by {} ({})",
            args.mem_limit,
            crate::status::enforce_words(memory.mode.name()),
            memory.why
        );
        let log_dir = match &args.log_dir {
            Some(d) => d.clone(),
            // Next to a SQLite file; a PostgreSQL fleet's logs are this host's, in the
            // working directory.
            None => db_path.path().and_then(|p| p.parent()).unwrap_or(std::path::Path::new(".")).join("fleet-logs"),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&log_dir)
            .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
        let token = args.control_token.clone().unwrap_or_else(random_token);
        let ids = args.ids();
        let mut run = FleetRun {
            run_id: 0,
            supervisor_pid: std::process::id() as i64,
            host: shared::host::name(),
            started_at: now_ms(),
            stopped_at: None,
            state: RunState::Running,
            workers: args.workers as i64,
            base_port: args.base_port as i64,
            bind: args.bind.to_string(),
            mem_limit_bytes: Some(args.mem_limit.bytes() as i64),
            mem_enforce: memory.mode.name().into(),
            handler: args.handler.describe(),
            concurrency: args.job.concurrency as i64,
            log_dir: Some(log_dir.display().to_string()),
            control_token: Some(token.clone()),
            worker_ids: (!ids.is_all(args.workers)).then(|| ids.to_string()),
            heartbeat_at: None,
            stop_requested_at: None,
            advertise: args.advertise.clone(),
        };
        let taken = begin(&db, &mut run).await.map_err(|why| anyhow::anyhow!("{why} (database {db_path})"))?;
        // The heartbeat first, on a connection of its own: nothing this start does next
        // (handing back a dead run's claims, a recount) may keep it from beating, or
        // another host could take this run for dead.
        let (orders_tx, orders) = mpsc::unbounded_channel();
        let beat_db = Store::open(&db_path, 1).await.context("cannot use the database")?;
        let heartbeat = records::beat(beat_db, run.run_id, orders_tx);
        for prev in taken {
            recover::recover_previous(&db, &prev, &args.job.retry_policy()).await?;
        }
        // Kept shard counts for this N, so status and the done check never count the
        // table. After the run is recorded: a start refused for another N changes nothing.
        db.ensure_count_layout(args.workers).await.context("cannot count the videos by shard")?;
        let (logs, logger) =
            output::start(log_dir, &ids, args.log_max_size.bytes(), args.log_keep, args.log_format, out)?;
        let (records, recorder) = records::start(db.clone(), run.run_id);
        let (events_tx, events) = mpsc::unbounded_channel();
        let policy = RestartPolicy {
            delay: args.restart_delay,
            delay_max: args.restart_delay_max,
            stable_after: args.stable_after,
            crash_loop: args.crash_loop,
            cooldown: args.errored_cooldown,
        };
        // Only this host's ids get a slot; the others' workers are another supervisor's.
        let slots = ids.iter().map(|k| Slot::new(k, args.base_port + k as u16)).collect();
        let reach = if args.bind.is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { args.bind };
        Ok(Fleet {
            reader,
            args,
            db,
            db_path,
            run,
            memory,
            policy,
            slots,
            exe,
            token,
            reach,
            events_tx,
            events,
            logs,
            logger,
            records,
            recorder,
            releases: TaskTracker::new(),
            health_rounds: HealthRounds::new(Instant::now()),
            next_start: 0,
            last_start: None,
            began: Instant::now(),
            stopping: None,
            end: RunEnd::Stopped,
            history: Vec::new(),
            fatal: None,
            orders,
            taken_over: false,
            heartbeat,
            rescaling: None,
        })
    }
}

/// Records `run` (setting its id) unless a live run forbids it; returns the dead runs it
/// took over. The decision and the record are one step (`Store::begin_run`), so two
/// supervisors starting at the same moment cannot both pass.
///
/// A run on another host that is in the way may have died a moment ago: its heartbeat is
/// young, but will not advance. So before refusing, the start watches it for two beats;
/// if it stands still, the start keeps trying until the run is stale and takes it over
/// (no person has to come and clear it). One that beats is alive: refused.
async fn begin(db: &Store, run: &mut FleetRun) -> Result<Vec<FleetRun>, String> {
    let patience =
        Instant::now() + Duration::from_millis(takeover::STALE_AFTER_MS as u64) + 4 * takeover::HEARTBEAT_EVERY;
    // The run in the way, and its heartbeat when last seen.
    let mut watched: Option<(i64, Option<i64>)> = None;
    loop {
        let begun = db
            .begin_run(run, |live, db_now| takeover::decide(run, live, db_now))
            .await
            .map_err(|e| format!("cannot record the run: {e}"))?;
        let refusal = match begun {
            Ok(begun) => {
                run.run_id = begun.run_id;
                return Ok(begun.taken);
            }
            Err(refusal) => refusal,
        };
        let by = &refusal.by;
        let remote = !shared::host::is_this_host(by.host.as_deref());
        let beat_since = watched.is_some_and(|(id, beat)| id == by.run_id && beat != by.heartbeat_at);
        if !remote || by.heartbeat_at.is_none() || beat_since || Instant::now() > patience {
            return Err(refusal.why);
        }
        if watched.is_none_or(|(id, _)| id != by.run_id) {
            tracing::info!(
                "{} runs worker ids {}; waiting to see whether it is alive (a run whose heartbeat stops is taken over after {} s)",
                takeover::describe(by),
                by.ids(),
                takeover::STALE_AFTER_MS / 1000
            );
        }
        watched = Some((by.run_id, by.heartbeat_at));
        tokio::time::sleep(2 * takeover::HEARTBEAT_EVERY).await;
    }
}

fn random_token() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}
