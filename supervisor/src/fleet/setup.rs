//! Before the loop: the run's setup (database, a dead run's recovery, memory
//! enforcement, logs, the run record and its control token), with a warning for a
//! fleet too big for the host. The flags were checked before (`config.rs`).

use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use shared::storage::{FleetRun, RunState, Store, now_ms};
use shared::units::human_bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_appender::non_blocking::NonBlocking;

use super::config::{FleetConfig, Layout};
use super::db_watch::{self, DbWatch};
use super::health_rounds::HealthRounds;
use super::memory::Memory;
use super::phase::Phase;
use super::slot::Slot;
use super::state::{FirstStarts, Fleet};
use super::{heartbeat, launch, output, records, recover, takeover};
use crate::liveness::{HEARTBEAT_EVERY, STALE_AFTER_MS, describe};

/// Warns when the fleet cannot fit the host: it will run, but slowly or into the kernel's
/// OOM killer, and the user should hear why before it happens.
fn warn_if_too_big(config: &FleetConfig, layout: &Layout) {
    // This host's workers: with --worker-ids, the others run elsewhere.
    let here = layout.ids.len() as u32;
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
    let wanted = config.mem_limit.bytes().saturating_mul(u64::from(here));
    if let Some(total) = total
        && wanted > total
    {
        tracing::warn!(
            "{here} workers x {} = {} is more than this host's memory ({}): the kernel may kill workers before their limit does",
            config.mem_limit,
            human_bytes(wanted),
            human_bytes(total)
        );
    }
}

impl Fleet {
    /// Opens the database, sets up memory enforcement and records the run. Nothing is
    /// spawned yet.
    pub async fn prepare(
        config: FleetConfig,
        layout: Layout,
        out: NonBlocking,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Fleet> {
        let exe = launch::worker_exe()?;
        let db_path = config.db.absolute().context("cannot resolve --db")?;
        // One connection: every write of ours comes from this one loop, in turn. On
        // PostgreSQL, the budget less the heartbeat's (2 - 1 unless the URL says
        // `connections=N`), and the reads share it: a server's connections are few. A
        // database that is away is waited for, as a running fleet waits it out.
        let writers = db_path.connections().map_or(1, |n| n - 1);
        let (db, waited) = db_watch::patiently(shutdown, || Store::open(&db_path, writers)).await?;
        if waited {
            // Every heartbeat went stale while nobody could write one: give the runs that
            // are alive one staleness limit to beat again before any is judged dead.
            tracing::info!("waiting {STALE_AFTER_MS} ms for live runs to beat again before judging any dead");
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the database"),
                _ = tokio::time::sleep(Duration::from_millis(STALE_AFTER_MS as u64)) => {}
            }
        }
        let reader = if db_path.is_postgres() {
            db.clone()
        } else {
            Store::open_read_only(&db_path).await.context("cannot read the database")?
        };
        if !reader.has_videos().await? {
            tracing::warn!(
                "{db_path} holds no videos yet; the workers wait for some: add them with `supervisor import FILE`"
            );
        }
        warn_if_too_big(&config, &layout);
        let tag = format!("shardfleet-{}", std::process::id());
        let memory = Memory::setup(config.mem_enforce, config.mem_limit.bytes(), &tag)?;
        tracing::info!(
            "memory limit {} per worker, enforced by {} ({})",
            config.mem_limit,
            memory.mode.enforced_by(),
            memory.why
        );
        let log_dir = match &config.log_dir {
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
        let token = config.control_token.clone().unwrap_or_else(random_token);
        let mut run = FleetRun {
            run_id: 0,
            supervisor_pid: std::process::id() as i64,
            host: shared::host::name(),
            started_at: now_ms(),
            stopped_at: None,
            state: RunState::Running,
            workers: layout.workers as i64,
            base_port: config.base_port as i64,
            bind: config.bind.to_string(),
            mem_limit_bytes: Some(config.mem_limit.bytes() as i64),
            mem_enforce: memory.mode.to_string(),
            handler: config.handler.describe(),
            concurrency: config.job.concurrency as i64,
            // Absolute: `supervisor logs` and the next start's recovery read it from
            // wherever they run.
            log_dir: Some(std::path::absolute(&log_dir).unwrap_or_else(|_| log_dir.clone()).display().to_string()),
            control_token: Some(token.clone()),
            worker_ids: layout.recorded_ids(),
            heartbeat_at: None,
            stop_requested_at: None,
            advertise: config.advertise.clone(),
        };
        let taken = begin(&db, &mut run).await.map_err(|why| anyhow::anyhow!("{why} (database {db_path})"))?;
        // The heartbeat first, on a connection of its own: nothing this start does next
        // (handing back a dead run's claims, a recount) may keep it from beating, or
        // another host could take this run for dead.
        let (orders_tx, orders) = mpsc::unbounded_channel();
        let beat_db = Store::open(&db_path, 1).await.context("cannot use the database")?;
        let watch = DbWatch::new(&db_path);
        let heartbeat = heartbeat::beat(beat_db, run.run_id, orders_tx, watch.clone());
        for prev in taken {
            recover::recover_previous(&db, &prev, &config.job.retry_policy()).await?;
        }
        // Kept shard counts for this N, so status and the done check never count the
        // table. After the run is recorded: a start refused for another N changes nothing.
        db.ensure_count_layout(layout.workers).await.context("cannot count the videos by shard")?;
        let (logs, logger) =
            output::start(log_dir, &layout.ids, config.log_max_size.bytes(), config.log_keep, config.log_format, out)?;
        let (records, recorder) = records::start(db.clone(), run.run_id, watch.clone());
        let (events_tx, events) = mpsc::unbounded_channel();
        // Only this host's ids get a slot; the others' workers are another supervisor's.
        let slots = layout.ids.iter().map(|k| Slot::new(k, config.port(k))).collect();
        let reach = if config.bind.is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { config.bind };
        Ok(Fleet {
            config,
            layout,
            phase: Phase::Running,
            db,
            reader,
            db_path,
            watch,
            run,
            memory,
            slots,
            first_starts: FirstStarts::default(),
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
            heartbeat,
            orders,
            health_rounds: HealthRounds::new(Instant::now()),
            began: Instant::now(),
            history: Vec::new(),
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
    let patience = Instant::now() + Duration::from_millis(STALE_AFTER_MS as u64) + 4 * HEARTBEAT_EVERY;
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
                describe(by),
                by.ids(),
                STALE_AFTER_MS / 1000
            );
        }
        watched = Some((by.run_id, by.heartbeat_at));
        tokio::time::sleep(2 * HEARTBEAT_EVERY).await;
    }
}

fn random_token() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}
