//! `supervisor scale N`: changes the number of shards of a running fleet without
//! stopping its run. The request goes through the database, as a stop's does: each
//! live supervisor of the fleet is given the new size and the worker ids it should run
//! in it, sees them at its next heartbeat, drains its workers and starts the new layout
//! (`fleet/rescale.rs`). On several hosts the new ids are split among them in
//! proportion to what each ran, in the order of their ids: `0-2` and `3-5` of 6 become
//! `0-1` and `2-3` of 4. The command waits until every supervisor runs the new layout.

use std::time::{Duration, Instant};

use anyhow::bail;
use shared::ids::WorkerIds;
use shared::storage::{DbLocation, FleetRun, RunState, ScaleAsk, Store};

use crate::liveness;

/// Why a scale cannot be asked for: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Asks for `workers` shards and waits up to `timeout` for every supervisor to run
/// them; returns lines for the user. `db` is `location` opened read-only.
pub async fn scale(db: Store, location: &DbLocation, workers: u32, timeout: Duration) -> anyhow::Result<String> {
    let db_now = db.clock().await?;
    // A run that is stopping would ignore the request, and its share of the new ids
    // would be run by no one: only runs that carry on get a part.
    let mut alive: Vec<FleetRun> = db
        .live_runs()
        .await?
        .into_iter()
        .filter(|r| r.state == RunState::Running && r.stop_requested_at.is_none() && liveness::is_alive(r, db_now))
        .collect();
    if alive.is_empty() {
        db.close().await;
        return Err(Refused(
            "no fleet is running on this database: there is nothing to scale (start one with \
                            `supervisor start --workers N`)"
                .into(),
        )
        .into());
    }
    alive.sort_by_key(|r| r.ids().iter().next().unwrap_or(0));
    let shares: Vec<usize> = alive.iter().map(|r| r.ids().len()).collect();
    let Some(split) = WorkerIds::split(workers, &shares) else {
        db.close().await;
        return Err(Refused(format!(
            "cannot scale to {workers} workers: {} supervisors run this fleet and each keeps at least one worker; \
             stop one first (`supervisor stop --worker-ids IDS`)",
            alive.len()
        ))
        .into());
    };
    if let Some((run, ids)) = alive.iter().zip(&split).find(|(r, ids)| {
        u16::try_from(r.base_port).ok().and_then(|base| shared::ports::worker_port(base, ids.max())).is_none()
    }) {
        db.close().await;
        return Err(Refused(format!(
            "cannot scale to {workers} workers: {} would run worker {} on port {}, past 65535 (its --base-port is {})",
            liveness::describe(run),
            ids.max(),
            run.base_port + i64::from(ids.max()),
            run.base_port
        ))
        .into());
    }
    let asks: Vec<ScaleAsk> = alive
        .iter()
        .zip(&split)
        .map(|(r, ids)| ScaleAsk { run_id: r.run_id, workers, ids: (!ids.is_all(workers)).then(|| ids.to_string()) })
        .collect();
    if alive.iter().zip(&asks).all(|(r, a)| r.workers == i64::from(workers) && r.worker_ids == a.ids) {
        db.close().await;
        return Ok(format!("the fleet already runs {workers} workers; nothing to change"));
    }
    let writer = Store::open_existing(location, 1).await?;
    let written = writer.request_scale(&asks).await;
    writer.close().await;
    written?;

    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<(FleetRun, ScaleAsk)> = alive.into_iter().zip(asks).collect();
    let mut lines = Vec::new();
    let mut ended = Vec::new();
    while !waiting.is_empty() {
        let now = db.clock().await?;
        let live = db.live_runs().await?;
        waiting.retain(|(run, ask)| match live.iter().find(|r| r.run_id == run.run_id) {
            Some(r) if r.workers == i64::from(workers) && r.worker_ids == ask.ids => {
                lines.push(format!("{}: now {workers} shards, running workers {}", liveness::describe(r), r.ids()));
                false
            }
            Some(r) if liveness::is_alive(r, now) => true,
            _ => {
                ended.push(liveness::describe(run));
                false
            }
        });
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            db.close().await;
            let names: Vec<String> = waiting.iter().map(|(r, _)| liveness::describe(r)).collect();
            bail!(
                "asked for {workers} shards, but {} had not re-partitioned within {} (each drains its workers first, \
                 up to --grace); `supervisor status` shows when it has",
                names.join(", "),
                shared::units::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await;
    if !ended.is_empty() {
        lines.push(format!("{} ended before it re-partitioned (its work done, or stopped)", ended.join(", ")));
        bail!(lines.join("\n"));
    }
    Ok(lines.join("\n"))
}
