//! Finding the workers: from the supervisor's records in the database, from a port
//! range, or from a list of URLs; and, with a database, keeping up with the records
//! (restarts, a new run) while the monitor runs.

use anyhow::Context;
use reqwest::Url;
use shared::status::ShardCounts;
use shared::storage::{DbLocation, FleetRun, FleetWorker, Store};

use crate::cli::Source;

/// One worker to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its place in the fleet: the worker id with --db and --base-port, the position in
    /// --targets otherwise.
    pub slot: u32,
    /// Where it serves; `/status`, `/pause` and `/resume` hang below it.
    pub base: Url,
    /// The `(worker_id, workers)` it must report when the layout is known, so that a
    /// stray process on the port is not counted as part of the fleet.
    pub expect: Option<(u32, u32)>,
    /// With --db: the control token of the run it belongs to (each host's supervisor
    /// may have its own).
    pub token: Option<String>,
}

impl Target {
    /// `base` with `path` appended, keeping any path prefix of the base.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path.trim_start_matches('/'));
        url.set_path(&joined);
        url
    }

    pub fn port(&self) -> Option<u16> {
        self.base.port_or_known_default()
    }
}

/// The workers found, and what else the source told.
#[derive(Debug)]
pub struct Discovery {
    pub targets: Vec<Target>,
    /// With --db: the supervisor's records, re-read as the monitor runs.
    pub records: Option<Records>,
    /// The token for `/pause` and `/resume`: the flag's, or else the run's.
    pub control_token: Option<String>,
}

/// Finds the workers. Errors are for the user: a missing database, a database with no
/// run in it.
pub async fn discover(source: &Source, control_token: Option<String>) -> anyhow::Result<Discovery> {
    match source {
        Source::Ports { base, workers } => Ok(Discovery {
            targets: (0..*workers).map(|k| local_target(k, base + k as u16, *workers)).collect(),
            records: None,
            control_token,
        }),
        Source::Urls(urls) => Ok(Discovery {
            targets: urls
                .iter()
                .enumerate()
                .map(|(i, u)| Target { slot: i as u32, base: u.clone(), expect: None, token: None })
                .collect(),
            records: None,
            control_token,
        }),
        Source::Db(path) => {
            let records = Records::open(path).await?;
            let targets = records.targets();
            let control_token = control_token.or_else(|| records.newest().control_token.clone());
            Ok(Discovery { targets, records: Some(records), control_token })
        }
    }
}

fn local_target(worker_id: u32, port: u16, workers: u32) -> Target {
    target_on("127.0.0.1", worker_id, port, workers)
}

fn target_on(host: &str, worker_id: u32, port: u16, workers: u32) -> Target {
    let base = Url::parse(&format!("http://{host}:{port}/")).expect("a host and a port make a valid URL");
    Target { slot: worker_id, base, expect: Some((worker_id, workers)), token: None }
}

/// The supervisor's records in a fleet database: the live runs (one per host of a fleet
/// that spans hosts, each running some of the worker ids), or the latest run if none is.
#[derive(Debug)]
pub struct Records {
    db: Store,
    /// Oldest first; never empty.
    runs: Vec<FleetRun>,
    /// Every worker slot of those runs.
    workers: Vec<FleetWorker>,
}

/// What changed in the records since the last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    /// The worker slots as the supervisors last saw them (restarts, last reason, state).
    pub slots: Vec<FleetWorker>,
    /// Set when the runs changed (a new start on any host): they replace the old ones.
    pub new_run: Option<NewRun>,
    /// The runs these slots belong to, for the page's run line.
    pub runs: Vec<RunInfo>,
}

/// A run as the web page shows it: where and since when, never its token.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: i64,
    /// The host its supervisor runs on, if it recorded one.
    pub host: Option<String>,
    /// Its layout: how many shards, and which of them it runs (`3-5`; None: all).
    pub workers: i64,
    pub worker_ids: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    pub state: String,
}

impl From<&FleetRun> for RunInfo {
    fn from(r: &FleetRun) -> RunInfo {
        RunInfo {
            run_id: r.run_id,
            host: r.host.clone(),
            workers: r.workers,
            worker_ids: r.worker_ids.clone(),
            started_at: r.started_at,
            state: r.state.to_string(),
        }
    }
}

/// Runs started since the monitor began: their workers, token and memory limit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub targets: Vec<Target>,
    pub control_token: Option<String>,
    pub mem_limit_bytes: Option<u64>,
}

impl Records {
    async fn open(path: &DbLocation) -> anyhow::Result<Records> {
        // Read-only and never migrating: watching a fleet must not change its database.
        let db = Store::open_read_only(path).await?;
        let runs = read_runs(&db).await.with_context(|| format!("cannot read the fleet records in {path}"))?;
        if runs.is_empty() {
            anyhow::bail!(
                "{path} has no fleet run recorded: start one with `supervisor start`, or name the workers with \
                 --workers N or --targets URL,..."
            );
        }
        let workers = read_workers(&db, &runs).await?;
        Ok(Records { db, runs, workers })
    }

    /// The newest of the runs.
    pub fn newest(&self) -> &FleetRun {
        self.runs.last().expect("records hold at least one run")
    }

    /// Every worker of the fleet, each on the address its run records (`--advertise`,
    /// else the address it was bound to, loopback for a wildcard).
    pub fn targets(&self) -> Vec<Target> {
        let newest = self.newest();
        let n = newest.workers.max(0) as u32;
        (0..n)
            .map(|k| {
                let slot = self.workers.iter().rev().find(|w| w.worker_id == i64::from(k));
                let run = slot.and_then(|w| self.runs.iter().find(|r| r.run_id == w.run_id)).unwrap_or(newest);
                let port = slot.map(|w| w.port).unwrap_or(newest.base_port + i64::from(k));
                let mut target = target_on(&connect_host(&run.reach()), k, u16::try_from(port).unwrap_or(0), n);
                target.token = run.control_token.clone();
                target
            })
            .collect()
    }

    /// The monitor's one read-only handle on the fleet database, shared with the page.
    pub fn store(&self) -> Store {
        self.db.clone()
    }

    pub fn slots(&self) -> &[FleetWorker] {
        &self.workers
    }

    pub fn mem_limit_bytes(&self) -> Option<u64> {
        self.newest().mem_limit_bytes.and_then(|b| u64::try_from(b).ok())
    }

    /// Re-reads the runs and their slots. A new run, or a run re-partitioned by
    /// `supervisor scale` (a new size or new ids), gives new targets.
    pub async fn refresh(&mut self) -> Result<Refresh, shared::DbError> {
        let runs = read_runs(&self.db).await?;
        let ids =
            |runs: &[FleetRun]| runs.iter().map(|r| (r.run_id, r.workers, r.worker_ids.clone())).collect::<Vec<_>>();
        let mut new_run = None;
        if !runs.is_empty() && ids(&runs) != ids(&self.runs) {
            self.runs = runs;
            self.workers = read_workers(&self.db, &self.runs).await?;
            new_run = Some(NewRun {
                targets: self.targets(),
                control_token: self.newest().control_token.clone(),
                mem_limit_bytes: self.mem_limit_bytes(),
            });
        } else {
            self.workers = read_workers(&self.db, &self.runs).await?;
        }
        Ok(Refresh { slots: self.workers.clone(), new_run, runs: self.runs.iter().map(RunInfo::from).collect() })
    }

    /// Every shard's counts straight from the videos table: one scan, for shards whose
    /// worker cannot tell.
    pub async fn shard_counts(&self) -> Result<Vec<ShardCounts>, shared::DbError> {
        self.db.shard_progress(self.newest().workers.max(1) as u32).await
    }
}

/// The live runs, or the latest run if none is live.
async fn read_runs(db: &Store) -> Result<Vec<FleetRun>, shared::DbError> {
    let live = db.live_runs().await?;
    if !live.is_empty() {
        return Ok(live);
    }
    Ok(db.latest_run().await?.into_iter().collect())
}

async fn read_workers(db: &Store, runs: &[FleetRun]) -> Result<Vec<FleetWorker>, shared::DbError> {
    let mut workers = Vec::new();
    for r in runs {
        workers.extend(db.run_workers(r.run_id).await?);
    }
    Ok(workers)
}

/// Where to connect to reach a worker bound to `bind`: a wildcard address is reached on
/// loopback, an IPv6 address needs brackets in a URL.
fn connect_host(bind: &str) -> String {
    match bind.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv6() => "[::1]".into(),
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) if bind.trim().is_empty() => "127.0.0.1".into(),
        Err(_) => bind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_url_keeps_the_base_path_prefix() {
        let t =
            Target { slot: 0, base: Url::parse("http://127.0.0.1:8080/fleet/w0/").unwrap(), expect: None, token: None };
        assert_eq!(t.url("/status").as_str(), "http://127.0.0.1:8080/fleet/w0/status");
        let t = Target { slot: 0, base: Url::parse("http://127.0.0.1:3001").unwrap(), expect: None, token: None };
        assert_eq!(t.url("/status").as_str(), "http://127.0.0.1:3001/status");
        assert_eq!(t.port(), Some(3001));
    }

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        assert_eq!(connect_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(connect_host("::"), "[::1]");
        assert_eq!(connect_host("10.0.0.5"), "10.0.0.5");
        assert_eq!(connect_host("fd00::1"), "[fd00::1]");
    }

    #[tokio::test]
    async fn ports_give_one_target_per_worker_expecting_its_id() {
        let d = discover(&Source::Ports { base: 4000, workers: 3 }, None).await.unwrap();
        let ports: Vec<_> = d.targets.iter().map(|t| t.port().unwrap()).collect();
        assert_eq!(ports, [4000, 4001, 4002]);
        assert_eq!(d.targets[2].expect, Some((2, 3)));
    }
}
