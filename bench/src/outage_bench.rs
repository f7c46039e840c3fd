//! How soon work resumes after the database returns. A fleet of long-ish jobs runs on a
//! PostgreSQL server of the bench's own (`.ci/postgres`); the server is stopped (`pg_ctl
//! stop -m fast`) for `outage` and started again, and the bench times, from the moment
//! the server accepts connections again:
//! - the first completion written: an ending the workers kept through the outage (a
//!   job that ended after the server had stopped);
//! - the first completion of a video claimed after the return (less its job time, that
//!   is how soon claims resume).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shared::storage::{DbLocation, now_ms};

use crate::pacing_bench::fleet_command;
use crate::postgres_bench::{Running, import, write_csv};
use crate::{bin, free_port_run, median};

pub(crate) struct Options {
    pub videos: i64,
    pub workers: u32,
    pub concurrency: u32,
    pub job: Duration,
    pub outage: Duration,
}

/// The repository's throwaway-server script, as built from this checkout.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres")
}

fn pg(what: &str, dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(script()).arg(what).arg(dir).output().context("cannot run .ci/postgres")?;
    if !out.status.success() {
        bail!(".ci/postgres {what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server of the bench's own, removed when dropped.
struct Server {
    dir: PathBuf,
    url: String,
}

impl Server {
    fn up(dir: PathBuf) -> anyhow::Result<Server> {
        let env = pg("up", &dir)?;
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("FLEET_TEST_POSTGRES_URL="))
            .context(".ci/postgres printed no URL")?
            .to_string();
        Ok(Server { dir, url })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = pg("down", &self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psql_int(url: &str, sql: &str) -> Option<i64> {
    let out = Command::new("psql").args([url, "-Atqc", sql]).stderr(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// One run: seconds from the return to the first completion written, and to the first
/// completion of a video claimed after the return.
struct Measured {
    first_written: f64,
    first_new: f64,
}

pub(crate) async fn bench_outage(dir: &Path, runs: usize, opts: &Options) -> anyhow::Result<String> {
    let supervisor = bin("supervisor")?;
    let worker = bin("worker")?;
    let csv = dir.join("videos.csv");
    write_csv(&csv, opts.videos)?;
    let mut measured = Vec::new();
    for run in 0..runs {
        eprintln!("run {}/{runs}: {} s outage", run + 1, opts.outage.as_secs());
        // Not under `dir`: the server runs as the `postgres` user, who must reach its folder.
        let server = Server::up(std::env::temp_dir().join(format!("fleet-bench-pg-{}-{run}", std::process::id())))?;
        let db: DbLocation = server.url.parse()?;
        import(&supervisor, dir, &csv, &db)?;
        let base = free_port_run(opts.workers as u16)?;
        let job = format!("{}ms", opts.job.as_millis());
        let child = fleet_command(&supervisor, dir)
            .env("FLEET_WORKER_BIN", &worker)
            .args(["start", "--mem-limit", "250M", "--db", &server.url, "--sleep", &job])
            .args(["--workers", &opts.workers.to_string(), "--concurrency", &opts.concurrency.to_string()])
            .args(["--base-port", &base.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("supervisor-{run}.err")))?)
            .spawn()
            .context("cannot start the supervisor")?;
        let fleet = Running(Some(child));
        // Steady state: every slot busy and some videos done.
        let slots = i64::from(opts.workers * opts.concurrency);
        let steady = Instant::now() + Duration::from_secs(60);
        while psql_int(&server.url, "SELECT count(*) FROM videos WHERE status = 'done'").unwrap_or(0) < slots {
            if Instant::now() > steady {
                bail!("the fleet never reached a steady state (see supervisor-{run}.err)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pg("stop", &server.dir)?;
        // Jobs that end from now on can only be written once the server is back.
        let stopped_ms = now_ms();
        std::thread::sleep(opts.outage);
        pg("start", &server.dir)?;
        let back = Instant::now();
        let back_ms = now_ms();
        let mut first_written = None;
        let limit = back + Duration::from_secs(60);
        let first_new = loop {
            let now = back.elapsed().as_secs_f64();
            let kept = format!("SELECT count(*) FROM attempts WHERE finished_at >= {stopped_ms}");
            if first_written.is_none() && psql_int(&server.url, &kept).is_some_and(|n| n > 0) {
                first_written = Some(now);
            }
            let new = format!("SELECT min(finished_at) FROM attempts WHERE started_at >= {back_ms}");
            if let Some(at) = psql_int(&server.url, &new) {
                break (at - back_ms) as f64 / 1000.0;
            }
            if Instant::now() > limit {
                bail!("no video claimed after the return finished within a minute (see supervisor-{run}.err)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let first_written = first_written.unwrap_or(first_new);
        eprintln!("  first completion written {first_written:.2} s after the return; first new one {first_new:.2} s");
        measured.push(Measured { first_written, first_new });
        drop(fleet);
        drop(server);
    }
    let written = median(measured.iter().map(|m| m.first_written).collect());
    let new = median(measured.iter().map(|m| m.first_new).collect());
    let job = opts.job.as_secs_f64();
    let each: Vec<String> = measured.iter().map(|m| format!("{:.2} / {:.2}", m.first_written, m.first_new)).collect();
    Ok(format!(
        "{} workers x {} slots, `--sleep {}ms`, on a PostgreSQL server of the bench's own (`.ci/postgres`), stopped \
         with `pg_ctl stop -m fast` once every slot was busy, for {} s, then started again. Timed from the moment \
         `pg_ctl start -w` returned (the server accepts connections), by polling `attempts` with psql every 20 ms. \
         Median of {runs} run(s).\n\n\
         | from the database's return to | seconds | goal |\n|---|---|---|\n\
         | the first completion written (an ending kept through the outage) | {written:.2} | ≤ 5 |\n\
         | the first completion of a video claimed after the return | {new:.2} (of which {job:.2} is the job) | |\n\n\
         Each run, written / new: {}.\n\n",
        opts.workers,
        opts.concurrency,
        opts.job.as_millis(),
        opts.outage.as_secs(),
        each.join("; ")
    ))
}
