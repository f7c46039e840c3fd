//! `supervisor status`: the fleet as `pm2 ls` shows it, from the database, whether or
//! not a supervisor is running.

use serde::Serialize;
use shared::status::ShardCounts;
use shared::storage::{FleetEvent, FleetRun, FleetWorker, SlotStatus, Store, now_ms};
use shared::units::human_bytes;

use crate::procfs;

/// `supervisor status --json`.
#[derive(Debug, Serialize)]
pub struct FleetView {
    /// The latest run, if a fleet was ever started on this database.
    pub run: Option<FleetRun>,
    /// Whether that run's supervisor process is alive now.
    pub supervisor_alive: bool,
    pub workers: Vec<WorkerView>,
    /// Every video by status (all shards).
    pub totals: ShardCounts,
    /// The last restarts and memory kills, oldest first.
    pub events: Vec<FleetEvent>,
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    #[serde(flatten)]
    pub record: FleetWorker,
    pub shard: ShardCounts,
}

pub async fn load(db: &Store) -> anyhow::Result<FleetView> {
    let run = db.latest_run().await?;
    let Some(run) = run else {
        let totals = db.totals().await?;
        return Ok(FleetView { run: None, supervisor_alive: false, workers: Vec::new(), totals, events: Vec::new() });
    };
    let shards = db.shard_progress(run.workers as u32).await?;
    let mut totals = ShardCounts::default();
    for s in &shards {
        totals += *s;
    }
    let workers = db
        .run_workers(run.run_id)
        .await?
        .into_iter()
        .map(|record| {
            let shard = shards.get(record.worker_id as usize).copied().unwrap_or_default();
            WorkerView { record, shard }
        })
        .collect();
    let mut events = db.run_events(run.run_id).await?;
    let keep = events.len().saturating_sub(10);
    events.drain(..keep);
    let supervisor_alive = procfs::is_running(run.supervisor_pid, "supervisor");
    Ok(FleetView { run: Some(run), supervisor_alive, workers, totals, events })
}

/// The human table.
pub fn render(v: &FleetView) -> String {
    let mut out = String::new();
    let t = &v.totals;
    let Some(run) = &v.run else {
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
    };
    let now = now_ms();
    let state = if v.supervisor_alive || !run.state.is_live() {
        run.state.to_string()
    } else {
        "crashed (supervisor is gone)".into()
    };
    let since = if v.supervisor_alive {
        format!("up {}", ago(now - run.started_at))
    } else {
        format!("started {} ago", ago(now - run.started_at))
    };
    out.push_str(&format!(
        "fleet: {state} · supervisor pid {} · {since} · {} workers · {}\n",
        run.supervisor_pid, run.workers, run.handler
    ));
    let limit =
        run.mem_limit_bytes.map(|b| shared::units::ByteSize(b as u64).to_string()).unwrap_or_else(|| "none".into());
    out.push_str(&format!("memory limit: {limit} per worker, enforced by {}\n", enforce_words(&run.mem_enforce)));
    out.push_str(&format!(
        "videos: {} total · {} done · {} failed · {} running · {} pending\n\n",
        t.total(),
        t.done,
        t.failed,
        t.running,
        t.pending
    ));
    let header = ["worker", "pid", "port", "state", "uptime", "restarts", "last restart", "memory", "progress"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for w in &v.workers {
        let r = &w.record;
        let alive = v.supervisor_alive && r.state == SlotStatus::Running;
        let uptime = match (alive, r.started_at) {
            (true, Some(s)) => ago(now - s),
            _ => "-".into(),
        };
        let reason = match (&r.last_reason, r.last_restart_at) {
            (Some(reason), Some(at)) => format!("{reason} ({} ago)", ago(now - at)),
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
        rows.push(vec![
            r.worker_id.to_string(),
            r.pid.filter(|_| alive).map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.port.to_string(),
            if v.supervisor_alive { r.state.to_string() } else { SlotStatus::Stopped.to_string() },
            uptime,
            r.restarts.to_string(),
            reason,
            memory,
            format!("{finished}/{total} ({pct}%) {} failed", w.shard.failed),
        ]);
    }
    out.push_str(&table(&rows));
    if !v.events.is_empty() {
        out.push_str("\nrecent events:\n");
        for e in &v.events {
            out.push_str(&format!("  {} ago  worker {}  {}: {}\n", ago(now - e.at), e.worker_id, e.kind, e.reason));
        }
    }
    out
}

pub fn enforce_words(mode: &str) -> &'static str {
    match mode {
        "cgroup-v2" => "cgroup v2 (memory.max)",
        "cgroup-v1" => "cgroup v1 (memory.limit_in_bytes)",
        "sample" => "sampling each worker's process tree",
        _ => "nothing",
    }
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

/// "3s", "4m12s", "2h05m", "3d04h".
pub fn ago(ms: i64) -> String {
    let s = (ms.max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use shared::storage::{RunState, testing};

    use super::*;

    #[test]
    fn durations_read_like_pm2() {
        assert_eq!(ago(3_500), "3s");
        assert_eq!(ago(252_000), "4m12s");
        assert_eq!(ago(7_500_000), "2h05m");
        assert_eq!(ago(273_600_000), "3d04h");
    }

    #[tokio::test]
    async fn status_answers_from_the_kept_shard_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let db = Store::open(&path, 1).await.unwrap();
        testing::seed_numbered(&db, 1..=10, ("v", ""), false).await.unwrap();
        db.ensure_count_layout(2).await.unwrap();
        let run = FleetRun {
            run_id: 0,
            supervisor_pid: i32::MAX as i64,
            host: None,
            started_at: now_ms(),
            stopped_at: None,
            state: RunState::Stopped,
            workers: 2,
            base_port: 3001,
            bind: "127.0.0.1".into(),
            mem_limit_bytes: None,
            mem_enforce: "none".into(),
            handler: "--sleep 0".into(),
            concurrency: 1,
            log_dir: None,
            control_token: None,
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
