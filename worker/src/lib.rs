//! The shardfleet worker as a library: `run` takes a validated config, a bound listener
//! and a cancellation token, so tests drive it in-process or as the real binary.
//!
//! Where things are:
//! - claiming, finishing, leases: `runner.rs` (the loop) over `shared::storage`'s
//!   `Shard` (the SQL);
//! - running one video: `handler/` (`exec.rs`, `http.rs`, `sleep.rs`), driven by
//!   `pool.rs`;
//! - HTTP endpoints: `http.rs`; what they report: `live.rs`, `metrics.rs`.

pub mod config;
pub mod handler;
pub mod http;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod orphan;
pub mod outage;
pub mod pool;
pub mod runner;
pub mod steal;

use std::sync::Arc;
use std::time::Duration;

use shared::storage::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, WorkerConfig};
pub use runner::RunEnd;

use crate::handler::{Handler, Pacer, work_share};
use crate::live::{Identity, Live};
use crate::metrics::Metrics;
use crate::runner::Runner;

/// How often the worker samples its own memory for `/status`.
const RSS_EVERY: Duration = Duration::from_secs(1);
/// How often an HTTP worker's share of the work left is read (`feed_work_share`).
const SHARE_EVERY: Duration = Duration::from_secs(1);

/// Runs the worker until `shutdown` fires (or its shard is done, with
/// `--exit-when-done`). The HTTP server on `listener` serves until the runner has
/// drained.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> anyhow::Result<RunEnd> {
    let memory = Arc::new(memory::MemoryKills::detect(config.mem_limit.map(|b| b.bytes())));
    let handler =
        Arc::new(Handler::from_args(&config.handler, &config.job, memory.clone()).map_err(anyhow::Error::msg)?);
    let local = listener.local_addr()?;
    let port = local.port();
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}, beyond loopback: /status and /metrics are readable by anyone who can reach this port"
        );
    }
    let live = Arc::new(
        Live::new(Identity {
            worker_id: config.worker_id,
            workers: config.workers,
            port,
            handler: config.handler.describe(),
            concurrency: config.job.concurrency,
            mem_limit_bytes: config.mem_limit.map(|b| b.bytes()),
            restarts: config.restarts,
            last_restart_reason: config.last_restart_reason.clone(),
            steal: config.job.steal,
        })
        .with_pacer(handler.pacer()),
    );
    let metrics = Arc::new(
        Metrics::new(config.worker_id, handler.pacer().is_some())
            .with_memory_limit(config.mem_limit.map(|b| b.bytes())),
    );
    let control_token = config.control_token.clone();
    let config = Arc::new(config);

    let stop_serving = CancellationToken::new();
    let opened = Arc::new(std::sync::OnceLock::new());
    let app = http::router(http::AppState {
        live: live.clone(),
        metrics: metrics.clone(),
        db: opened.clone(),
        control_token,
        memory,
        drain: shutdown.clone(),
    });
    let server = tokio::spawn(shared::http::serve(listener, app, config.header_timeout, stop_serving.clone(), |e| {
        tracing::error!("cannot accept http connections: {e}; trying again in 1s")
    }));
    let sampler = tokio::spawn(sample_rss(live.clone(), stop_serving.clone()));
    // The database, the shard's session and its counted layout, waited for while the
    // database is away (as it is waited out later), until a stop.
    let started = patiently(&shutdown, &live, &metrics, || async {
        // On PostgreSQL, the budget (2 unless the URL says `connections=N`): the claims
        // keep one, renewals, beats and `/health` share the rest. A SQLite file has no
        // server.
        let db = Store::open(&config.db, config.db.connections().unwrap_or(4)).await?;
        let runner = Runner::new(config.clone(), &db, handler.clone(), live.clone(), metrics.clone()).await?;
        Ok((db, runner))
    })
    .await;
    let (db, mut runner, waited) = match started {
        Ok(Some(((db, runner), waited))) => (db, runner, waited),
        stopped_or_failed => {
            stop_serving.cancel();
            let _ = sampler.await;
            let _ = server.await;
            return match stopped_or_failed {
                Err(e) => Err(anyhow::Error::new(e).context("cannot use the database")),
                _ => Ok(RunEnd::Stopped),
            };
        }
    };
    let _ = opened.set(db.clone());
    if let Some(pacer) = handler.pacer() {
        tokio::spawn(feed_work_share(db.clone(), config.worker_id, config.workers, pacer, stop_serving.clone()));
    }

    tracing::info!(
        worker_id = config.worker_id,
        workers = config.workers,
        db = %config.db,
        handler = %config.handler.describe(),
        concurrency = config.job.concurrency,
        "worker started"
    );
    if let Some(last_error) = waited {
        runner = runner.waited_for_database(Some(last_error));
    }
    let end = runner.run(shutdown, hurry).await;

    stop_serving.cancel();
    let _ = sampler.await;
    if let Err(e) = server.await {
        tracing::warn!("http server task failed: {e}");
    }
    db.close().await;
    end
}

/// Runs `start` until it succeeds, waiting out an outage (`DbError::outage`) on the same
/// capped backoff as a running worker and showing it on `/status`. Returns None when
/// `shutdown` fires first; with what it got, the last outage's error if it had to wait.
async fn patiently<T, F, Fut>(
    shutdown: &CancellationToken,
    live: &Live,
    metrics: &Metrics,
    mut start: F,
) -> Result<Option<(T, Option<String>)>, shared::DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, shared::DbError>>,
{
    let mut outage = outage::Outage::new();
    loop {
        match start().await {
            Ok(v) => {
                let waited = outage.is_out().then(|| outage.shown().last_error.clone()).flatten();
                if waited.is_some() {
                    tracing::info!("the database answers; starting");
                    metrics.database_up.set(1);
                    live.set_database(shared::status::Database::default());
                }
                return Ok(Some((v, waited)));
            }
            Err(e) => {
                let Some((kind, began)) = outage.failed(&e, tokio::time::Instant::now(), shared::storage::now_ms())
                else {
                    return Err(e);
                };
                if began {
                    tracing::warn!("the database is {kind} ({e}); waiting for it before starting");
                }
                metrics.database_up.set(0);
                live.set_database(outage.shown().clone());
            }
        }
        let retry_at = outage.retry_at().unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep_until(retry_at) => {}
        }
    }
}

/// Once a second, tells the HTTP handler's pacer this worker's share of the fleet's
/// work left, from the database's kept counts (a few rows): its calls go at its learnt
/// pace times that share, so that every shard ends at the same moment (`pacer.rs` says
/// why). A count that cannot be read leaves the share as it was.
async fn feed_work_share(db: Store, worker_id: u32, workers: u32, pacer: Arc<Pacer>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let Ok(shards) = db.shard_progress(workers).await else { continue };
                let left: Vec<u64> = shards.iter().map(|c| c.pending + c.running).collect();
                let worked: Vec<bool> = shards.iter().map(|c| c.running > 0).collect();
                pacer.set_share(work_share(worker_id as usize, &left, &worked));
            }
        }
    }
}

/// Keeps `/status`'s `rss_bytes` current without reading /proc per request.
async fn sample_rss(live: Arc<Live>, stop: CancellationToken) {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(std::process::id());
    let Ok(mut sys) = System::new() else {
        tracing::warn!("cannot read process memory on this system; rss_bytes stays 0");
        return;
    };
    let mut tick = tokio::time::interval(RSS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, ProcessRefreshKind::nothing().with_memory());
                if let Some(p) = sys.process(pid) {
                    live.set_rss(p.memory());
                }
            }
        }
    }
}
