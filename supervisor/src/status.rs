//! `supervisor status`: the fleet as `pm2 ls` shows it, from the database, whether or
//! not a supervisor is running.

use serde::Serialize;
use shared::ids::WorkerIds;
use shared::status::ShardCounts;
use shared::storage::{FleetEvent, FleetRun, FleetWorker, SlotStatus, Store, now_ms};
use shared::time_fmt::age_ms;
use shared::units::human_bytes;

use crate::liveness;
use crate::memory_mode::MemoryMode;

/// One sentence when the disk holding SQLite file `db` is full, naming the filesystem
/// and what is free on it.
pub fn full_disk(db: &shared::location::DbLocation) -> Option<String> {
    let disk = shared::disk::Disk::of(db.path()?)?;
    disk.is_full().then(|| {
        format!(
            "the disk holding {db} is full: {}; the workers wait, and carry on by themselves once space is freed",
            disk.describe()
        )
    })
}

/// `supervisor status --json`.
#[derive(Debug, Serialize)]
pub struct FleetView {
    /// The latest run, if a fleet was ever started on this database.
    pub run: Option<FleetRun>,
    /// Whether that run's supervisor is alive now.
    pub supervisor_alive: bool,
    /// The runs shown: every live one (one per host of a fleet that spans hosts, each
    /// with its worker ids), or the latest if none is live.
    pub runs: Vec<RunView>,
    /// The workers of every run shown, by worker id.
    pub workers: Vec<WorkerView>,
    /// Every video by status (all shards).
    pub totals: ShardCounts,
    /// The last restarts and memory kills of the runs shown, oldest first.
    pub events: Vec<FleetEvent>,
    /// Worker ids of the fleet that no live supervisor runs (with `--worker-ids`: a host
    /// that is down or not started), as ranges; None when every id is run.
    pub unowned_ids: Option<String>,
    /// The database's clock when this was read, which heartbeats are stamped by.
    #[serde(skip)]
    pub db_now: i64,
    /// For a SQLite file whose disk is full: which filesystem and what is free. The
    /// workers wait until space is freed, then carry on by themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_full: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: FleetRun,
    /// Whether its supervisor is alive: its pid on this host, a fresh heartbeat on another.
    pub alive: bool,
    /// The layouts it ran, oldest first: more than one after `supervisor scale`.
    pub layouts: Vec<shared::storage::Layout>,
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    #[serde(flatten)]
    pub record: FleetWorker,
    pub shard: ShardCounts,
    /// The host its supervisor runs on, and where it is reached (`host:port`).
    pub host: Option<String>,
    pub address: String,
    /// Whether its supervisor is alive.
    #[serde(skip)]
    pub supervised: bool,
}

pub async fn load(db: &Store) -> anyhow::Result<FleetView> {
    let latest = db.latest_run().await?;
    let Some(latest) = latest else {
        let totals = db.totals().await?;
        return Ok(FleetView {
            run: None,
            supervisor_alive: false,
            runs: Vec::new(),
            workers: Vec::new(),
            totals,
            events: Vec::new(),
            unowned_ids: None,
            db_now: now_ms(),
            disk_full: None,
        });
    };
    let db_now = db.clock().await?;
    let mut shown = db.live_runs().await?;
    if shown.is_empty() {
        shown.push(latest.clone());
    }
    // The newest run's size counts the shards (runs beside it share it).
    let workers_n = shown.last().map_or(latest.workers, |r| r.workers);
    let shards = db.shard_progress(workers_n.max(1) as u32).await?;
    let mut totals = ShardCounts::default();
    for s in &shards {
        totals += *s;
    }
    let mut workers = Vec::new();
    let mut events = Vec::new();
    let mut runs = Vec::new();
    for run in shown {
        let alive = liveness::is_alive(&run, db_now);
        let reach = connect_host(&run.reach());
        for record in db.run_workers(run.run_id).await? {
            let shard = shards.get(record.worker_id as usize).copied().unwrap_or_default();
            let address = format!("{reach}:{}", record.port);
            workers.push(WorkerView { record, shard, host: run.host.clone(), address, supervised: alive });
        }
        events.extend(db.run_events(run.run_id).await?);
        // Extra detail: a database this build has not migrated (read-only commands never
        // migrate) has no layouts table, and status must still answer.
        let layouts = db.layouts(run.run_id).await.unwrap_or_default();
        runs.push(RunView { run, alive, layouts });
    }
    workers.sort_by_key(|w| w.record.worker_id);
    events.sort_by_key(|e| e.at);
    let keep = events.len().saturating_sub(10);
    events.drain(..keep);
    let supervisor_alive = liveness::is_alive(&latest, db_now);
    let unowned: std::collections::BTreeSet<u32> = (0..workers_n.max(0) as u32)
        .filter(|k| !runs.iter().any(|r| r.run.state.is_live() && r.alive && r.run.ids().contains(*k)))
        .collect();
    // Only worth saying while some supervisor runs: a stopped fleet runs no id at all.
    let unowned_ids = (runs.iter().any(|r| r.run.state.is_live() && r.alive) && !unowned.is_empty())
        .then(|| unowned.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",").parse::<WorkerIds>())
        .and_then(Result::ok)
        .map(|ids| ids.to_string());
    Ok(FleetView {
        run: Some(latest),
        supervisor_alive,
        runs,
        workers,
        totals,
        events,
        unowned_ids,
        db_now,
        disk_full: None,
    })
}

/// A host as it goes before `:port`: an IPv6 address in brackets.
fn connect_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

/// The human table.
pub fn render(v: &FleetView) -> String {
    let mut out = String::new();
    if let Some(full) = &v.disk_full {
        out.push_str(&format!("{full}\n"));
    }
    let t = &v.totals;
    if v.runs.is_empty() {
        out.push_str("no fleet has been started on this database\n");
        out.push_str(&format!(
            "videos: {} total · {} done · {} failed · {} running · {} pending\n",
            t.total(),
            t.done,
            t.failed,
            t.running,
            t.pending
        ));
        return out;
    }
    let now = now_ms();
    // One host's fleet reads as it always has; a fleet over several supervisors names
    // each, and the table gains their hosts.
    let spread = v.runs.len() > 1 || v.runs.iter().any(|r| r.run.worker_ids.is_some());
    for RunView { run, alive, layouts } in &v.runs {
        let state = if *alive || !run.state.is_live() {
            run.state.to_string()
        } else if shared::host::is_this_host(run.host.as_deref()) {
            "crashed (supervisor is gone)".into()
        } else {
            let seen = run.heartbeat_at.unwrap_or(run.started_at);
            format!("not heard from for {} (its next start takes it over)", age_ms(v.db_now - seen))
        };
        let since = if *alive {
            format!("up {}", age_ms(now - run.started_at))
        } else {
            format!("started {} ago", age_ms(now - run.started_at))
        };
        let who = liveness::describe(run);
        if spread {
            out.push_str(&format!(
                "fleet: {state} · {who} · {since} · worker ids {} of {} · {}\n",
                run.ids(),
                run.workers,
                run.handler
            ));
        } else {
            out.push_str(&format!("fleet: {state} · {who} · {since} · {} workers · {}\n", run.workers, run.handler));
        }
        if layouts.len() > 1 {
            let steps: Vec<String> = layouts
                .iter()
                .map(|l| {
                    let ids = l.worker_ids.as_deref().map_or_else(String::new, |ids| format!(" (ids {ids})"));
                    format!("{}{ids} at {}", l.workers, shared::time_fmt::timestamp_ms(l.at))
                })
                .collect();
            out.push_str(&format!("  re-partitioned (supervisor scale): {}\n", steps.join(" → ")));
        }
    }
    if let Some(ids) = &v.unowned_ids {
        out.push_str(&format!("worker ids {ids}: no supervisor runs them; their videos wait\n"));
    }
    let limit = |run: &FleetRun| {
        run.mem_limit_bytes.map(|b| shared::units::ByteSize(b as u64).to_string()).unwrap_or_else(|| "none".into())
    };
    let first = &v.runs[0].run;
    out.push_str(&format!(
        "memory limit: {} per worker, enforced by {}\n",
        limit(first),
        MemoryMode::enforced_by_word(&first.mem_enforce)
    ));
    out.push_str(&format!(
        "videos: {} total · {} done · {} failed · {} running · {} pending\n\n",
        t.total(),
        t.done,
        t.failed,
        t.running,
        t.pending
    ));
    let mut header = vec!["worker", "pid", "port", "state", "uptime", "restarts", "last restart", "memory", "progress"];
    if spread {
        header.splice(1..1, ["host", "address"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for w in &v.workers {
        let r = &w.record;
        let run = v.runs.iter().find(|run| run.run.run_id == r.run_id).map(|run| &run.run).unwrap_or(first);
        let limit = limit(run);
        let alive = w.supervised && r.state == SlotStatus::Running;
        let uptime = match (alive, r.started_at) {
            (true, Some(s)) => age_ms(now - s),
            _ => "-".into(),
        };
        let reason = match (&r.last_reason, r.last_restart_at) {
            (Some(reason), Some(at)) => format!("{reason} ({} ago)", age_ms(now - at)),
            (Some(reason), None) => reason.clone(),
            _ => "-".into(),
        };
        let memory = match (r.rss_bytes, alive) {
            (Some(b), true) => format!("{} / {limit}", human_bytes(b as u64)),
            _ => format!("- / {limit}"),
        };
        let total = w.shard.total();
        let finished = w.shard.done + w.shard.failed;
        let pct = (finished * 100).checked_div(total).unwrap_or(100);
        let mut row = vec![
            r.worker_id.to_string(),
            r.pid.filter(|_| alive).map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.port.to_string(),
            if w.supervised { r.state.to_string() } else { SlotStatus::Stopped.to_string() },
            uptime,
            r.restarts.to_string(),
            reason,
            memory,
            format!("{finished}/{total} ({pct}%) {} failed", w.shard.failed),
        ];
        if spread {
            row.splice(1..1, [w.host.clone().unwrap_or_else(|| "-".into()), w.address.clone()]);
        }
        rows.push(row);
    }
    out.push_str(&table(&rows));
    if !v.events.is_empty() {
        out.push_str("\nrecent events:\n");
        for e in &v.events {
            out.push_str(&format!("  {} ago  worker {}  {}: {}\n", age_ms(now - e.at), e.worker_id, e.kind, e.reason));
        }
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use shared::storage::{RunState, testing};

    use super::*;

    #[tokio::test]
    async fn status_answers_from_the_kept_shard_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let db = Store::open(&path, 1).await.unwrap();
        testing::seed_numbered(&db, 1..=10, ("v", ""), false).await.unwrap();
        db.ensure_count_layout(2).await.unwrap();
        let run = FleetRun {
            supervisor_pid: i32::MAX as i64,
            state: RunState::Stopped,
            handler: "--sleep 0".into(),
            ..FleetRun::example(2, 3001)
        };
        db.insert_run(&run).await.unwrap();
        db.close().await;
        // A count of the table would say 0 done; the kept counts are skewed to tell them apart.
        let skew = "UPDATE video_counts SET videos = 1000 WHERE shard = 1 AND status = 'done'";
        testing::execute_foreign(&path, skew).await.unwrap();

        let view = load(&Store::open_read_only(&path).await.unwrap()).await.unwrap();
        assert_eq!(view.workers[1].shard, ShardCounts { pending: 5, running: 0, done: 1000, failed: 0 });
        assert_eq!(view.totals.done, 1000);
        assert_eq!(view.totals.pending, 10);
    }
}
