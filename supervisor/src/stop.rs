//! `supervisor stop`: asks every live supervisor of the fleet (or those running
//! `--worker-ids`) to drain, and waits until they have exited. The request goes through
//! the database, which every supervisor polls with its heartbeat, so one command stops
//! a fleet spread over several hosts; a supervisor on this host also gets SIGTERM, the
//! quickest way to tell it.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::ids::WorkerIds;
use shared::storage::{DbLocation, FleetRun, Store, now_ms};

use crate::liveness;
use crate::procfs;

/// Returns a line for the user.
/// `db` is `location` opened read-only.
pub async fn stop(
    db: Store,
    location: &DbLocation,
    which: Option<&WorkerIds>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let live = db.live_runs().await?;
    let db_now = db.clock().await?;
    let in_scope: Vec<FleetRun> =
        live.into_iter().filter(|r| which.is_none_or(|ids| !ids.overlap(&r.ids()).is_empty())).collect();
    let here = |r: &FleetRun| shared::host::is_this_host(r.host.as_deref());
    let (alive, dead): (Vec<FleetRun>, Vec<FleetRun>) =
        in_scope.iter().cloned().partition(|r| liveness::is_alive(r, db_now));
    let mut lines: Vec<String> = dead
        .iter()
        .map(|r| match (&r.worker_ids, here(r)) {
            (None, true) => format!(
                "no fleet is running (the last one, supervisor pid {}, died without stopping; the next start takes it over)",
                r.supervisor_pid
            ),
            _ => format!(
                "{} (worker ids {}) is not running: last heard from {} ago; the next start of its ids takes it over",
                liveness::describe(r),
                r.ids(),
                shared::time_fmt::age_ms(db_now - r.heartbeat_at.unwrap_or(r.started_at))
            ),
        })
        .collect();
    if in_scope.is_empty() {
        let latest = db.latest_run().await?;
        db.close().await;
        return Ok(match (latest, which) {
            (None, _) => "no fleet has been started on this database; nothing to stop".into(),
            (Some(_), Some(ids)) => format!("no supervisor is running worker ids {ids}; nothing to stop"),
            (Some(run), None) => {
                format!("no fleet is running (the last one, supervisor pid {}, is {})", run.supervisor_pid, run.state)
            }
        });
    }
    // The request goes to every live run in scope, even one that looks dead from here:
    // if it is alive after all, it hears it. A request that cannot be written is no
    // loss for this host's supervisors, which get SIGTERM.
    let ids: Vec<i64> = in_scope.iter().map(|r| r.run_id).collect();
    let requested = async {
        let writer = Store::open_existing(location, 1).await?;
        let written = writer.request_stop(&ids, now_ms()).await;
        writer.close().await;
        written
    }
    .await;
    if let Err(e) = requested {
        if alive.iter().all(here) {
            tracing::warn!(
                "could not write the stop request into the database ({e}); signalling this host's supervisors"
            );
        } else {
            bail!("could not write the stop request into the database: {e}");
        }
    }
    if alive.is_empty() {
        db.close().await;
        return Ok(lines.join("\n"));
    }
    // Let go of a SQLite file before waiting: the supervisor checkpoints the WAL into the
    // file when it closes the last connection, and ours would be one. (Runs on other
    // hosts are PostgreSQL's, and are watched through the database.)
    let watch_db = alive.iter().any(|r| !here(r));
    if !watch_db {
        db.close().await;
    }
    for r in alive.iter().filter(|r| here(r)) {
        let _ = kill(Pid::from_raw(r.supervisor_pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    let mut waiting = alive.clone();
    while !waiting.is_empty() {
        // Another host's run is waited for while it is live and beating: one that dies
        // while draining stops beating, and is not waited for past that.
        let still: Vec<i64> = if watch_db {
            let now = db.clock().await?;
            db.live_runs().await?.iter().filter(|r| liveness::is_alive(r, now)).map(|r| r.run_id).collect()
        } else {
            Vec::new()
        };
        waiting.retain(|r| {
            if here(r) { procfs::is_running(r.supervisor_pid, "supervisor") } else { still.contains(&r.run_id) }
        });
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = waiting.iter().map(liveness::describe).collect();
            bail!("{} did not stop within {}", names.join(", "), shared::units::format_duration(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await;
    lines.extend(alive.iter().map(|r| match &r.worker_ids {
        None if here(r) => format!("fleet stopped ({})", liveness::describe(r)),
        _ => format!("fleet stopped: worker ids {} ({})", r.ids(), liveness::describe(r)),
    }));
    Ok(lines.join("\n"))
}
