//! Handing back what dead workers held: a worker that dies mid-run (at once, so nothing
//! waits for its leases to lapse), and a previous run whose supervisor was killed (its
//! workers died with it; the next start waits for them to go and hands back their claims).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shared::retry::RetryPolicy;
use shared::status::Outcome;
use shared::storage::{DbLocation, FleetRun, Store, now_ms};
use shared::time_fmt;

use super::state::Fleet;
use crate::procfs;

/// How long a new `start` waits for the workers of a run whose supervisor was killed:
/// their parent-death signal ends them within tens of milliseconds, longer on a busy
/// host, and a service manager restarts the supervisor at once.
const PREVIOUS_WORKERS_WAIT: Duration = Duration::from_secs(5);

/// Waits (bounded) until the workers of this host's live-looking runs whose supervisor
/// is gone have exited and freed their ports. Reads only; a database that cannot be read
/// here is left for `prepare` to report.
pub async fn wait_for_previous_workers(db: &DbLocation) {
    if db.path().is_some_and(|p| !p.exists()) {
        return;
    }
    let Ok(db) = Store::open_read_only(db).await else { return };
    let mut pids: Vec<i64> = Vec::new();
    for prev in db.live_runs().await.unwrap_or_default() {
        if shared::host::is_this_host(prev.host.as_deref()) && !procfs::is_running(prev.supervisor_pid, "supervisor") {
            pids.extend(db.run_workers(prev.run_id).await.unwrap_or_default().iter().filter_map(|w| w.pid));
        }
    }
    db.close().await;
    let deadline = Instant::now() + PREVIOUS_WORKERS_WAIT;
    let alive = || pids.iter().filter(|&&p| procfs::is_running(p, "worker")).count();
    let mut waiting = alive();
    if waiting > 0 {
        tracing::info!("waiting for {waiting} workers of the previous run to exit");
    }
    while waiting > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting = alive();
    }
    if waiting > 0 {
        tracing::warn!(
            "{waiting} workers of the previous run are still alive after {}",
            time_fmt::duration(PREVIOUS_WORKERS_WAIT)
        );
    }
}

impl Fleet {
    /// Hands back what a dead worker held, at once: nothing waits for its leases. In a
    /// task of its own, so a busy database does not stall the loop.
    pub(super) fn release_claims(&self, k: u32, pid: u32, outcome: Outcome, reason: &str) {
        let (db, error, policy) =
            (self.db.clone(), format!("worker {k} died: {reason}"), self.config.job.retry_policy());
        self.releases.spawn(async move {
            match db.release_process(k, pid, outcome, &error, now_ms(), &policy).await {
                Ok(v) if !v.is_empty() => tracing::info!("worker {k}: handed back {} videos it held", v.len()),
                Ok(_) => {}
                Err(e) => tracing::error!("worker {k}: could not hand back its videos ({e}); their leases will lapse"),
            }
        });
    }
}

/// The file a run stopped during a database outage leaves in its log folder: the next
/// start on this host reads it as "these claims were handed back, not crashed".
pub(super) fn outage_marker(log_dir: &Path, run_id: i64) -> PathBuf {
    log_dir.join(format!("run-{run_id}-stopped-during-outage"))
}

/// A previous run whose supervisor died (taken over by this start, `takeover.rs`) left
/// claims behind: its workers died with it (parent-death signal), so whatever they held
/// is handed back now. On another host that may not be known; its workers' finishes
/// are fenced either way.
///
/// A run stopped on request while its database was away could not record the stop; it
/// left a marker in its log folder instead (`stopped_during_outage`), and then its
/// workers' claims are handed back uncounted, as a stop hands them back.
pub(super) async fn recover_previous(db: &Store, prev: &FleetRun, policy: &RetryPolicy) -> anyhow::Result<()> {
    let marker = prev.log_dir.as_deref().map(|dir| outage_marker(Path::new(dir), prev.run_id));
    let stopped = marker.as_deref().is_some_and(Path::exists);
    let mut handed_back = 0;
    for w in db.run_workers(prev.run_id).await? {
        if let Some(pid) = w.pid {
            let k = w.worker_id as u32;
            let (outcome, error) = if stopped {
                (Outcome::Released, format!("run {} was stopped while its database was away", prev.run_id))
            } else {
                (Outcome::Crashed, format!("worker {k} died: the supervisor of run {} died", prev.run_id))
            };
            handed_back += db.release_process(k, pid as u32, outcome, &error, now_ms(), policy).await?.len();
        }
    }
    if let Some(marker) = marker.filter(|_| stopped) {
        tracing::info!(
            "run {} was stopped while its database was away: handed back {handed_back} videos its workers held, counting no attempt",
            prev.run_id
        );
        let _ = std::fs::remove_file(marker);
        return Ok(());
    }
    tracing::warn!(
        "run {} ({}) ended without stopping; took over its worker ids {} and handed back {handed_back} videos its workers held",
        prev.run_id,
        crate::liveness::describe(prev),
        prev.ids()
    );
    Ok(())
}
