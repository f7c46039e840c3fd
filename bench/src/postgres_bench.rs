//! `fleet-bench postgres`: the fleet on PostgreSQL against a raw server-side loop (the
//! issue's "Performance goal"). A throwaway server from the repository's own
//! `.ci/postgres` script (Debian's packages, loopback only) is started for the run and
//! stopped at its end, also when the run fails or is interrupted.
//!
//! - Raw loop: two sessions, each one PL/pgSQL `DO` block that claims 512 videos of its
//!   shard with `FOR UPDATE SKIP LOCKED`, sets them running, commits, sets them done and
//!   commits, until its shard is empty. The table's triggers are disabled, so no
//!   history and no kept counts: what the server alone can do with the fleet's rows.
//! - Fleet: the real `supervisor start --workers N --mem-limit 250M --sleep 0
//!   --exit-when-done`, timed from spawn to exit, on a fresh database of the same
//!   videos, then checked (every video done, one done attempt each). The same fleet on
//!   a SQLite file beside it, and the same PostgreSQL fleet through PgBouncer in
//!   transaction pooling (`.ci/pgbouncer`, from `deploy/pgbouncer/pgbouncer.ini`, with
//!   `pool_mode=transaction` in the URL).
//!
//! Where the time goes is read from outside the processes: CPU of the server's
//! processes (the postmaster and every backend it reaped) and of the fleet (the
//! supervisor and the workers it reaped), and the transactions the database committed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::storage::{DbLocation, ShardSpec, Store, testing};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::pacing_bench::fleet_command;
use crate::{bin, free_port_run, median};

/// The goal: the 2-worker fleet at this share of the raw loop, or more.
const GOAL_RATIO: f64 = 0.6;
/// Videos one raw-loop claim takes, as the loop does (and the fleet's largest
/// claim batch).
const RAW_BATCH: usize = 512;

/// What `fleet-bench postgres` runs.
pub struct Options {
    /// Videos in every database.
    pub videos: i64,
    /// Fleet sizes, one row each per backend.
    pub workers: Vec<u32>,
    /// `--concurrency` of the workers, one set of fleet rows each; 0 leaves the flag
    /// off (the worker's default), which is the command.
    pub concurrency: Vec<u32>,
    /// A fleet still running after this long is stopped and the benchmark fails.
    pub timeout: Duration,
}

/// The databases a fleet row runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    /// The same server through PgBouncer in transaction pooling.
    PgBouncer,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::PgBouncer => "PostgreSQL via PgBouncer (transaction pooling)",
            Backend::Sqlite => "SQLite",
        }
    }
}

/// One fleet configuration: backend, workers, concurrency (0: the worker's default).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Setup {
    backend: Backend,
    workers: u32,
    concurrency: u32,
}

impl Setup {
    /// The command as a reader would type it, `--db` and the ports left out.
    fn command(&self) -> String {
        let c = if self.concurrency == 0 { String::new() } else { format!(" --concurrency {}", self.concurrency) };
        format!("supervisor start --workers {} --mem-limit 250M --sleep 0{c} --exit-when-done", self.workers)
    }
}

/// How the raw loop's sessions plan the claim.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Planning {
    /// As any session would: the table as imported, PostgreSQL's plan cache left to
    /// itself (the loop, and the fleet's conditions).
    AsImported,
    /// `ANALYZE videos` first and `plan_cache_mode = force_custom_plan` in both
    /// sessions: the claim planned for its real row counts and this batch's `now`, so
    /// an ordered scan of the shard's index. What the server does when the claim is
    /// planned well.
    AnalyzedCustom,
}

/// One timed run and what it cost.
#[derive(Clone, Copy)]
struct Measured {
    secs: f64,
    /// CPU seconds of the server's processes over the run (None on SQLite).
    server_cpu: Option<f64>,
    /// CPU seconds of the benchmark's children over the run: the fleet (supervisor and
    /// workers), or nothing for the raw loop, which runs in the server.
    client_cpu: f64,
    /// Transactions the database committed during the run (PostgreSQL's count).
    commits: Option<i64>,
    /// When autovacuum last analyzed `videos`, in seconds from the run's start (negative:
    /// before it); None if it had not by the run's end.
    analyzed_at: Option<f64>,
}

pub async fn bench_postgres(dir: &Path, runs: usize, opts: &Options) -> anyhow::Result<String> {
    let supervisor = bin("supervisor")?;
    let worker = bin("worker")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let server = Server::up(&dir.join("pg"))?;
    let bouncer = Bouncer::up(&dir.join("pgbouncer"), &server.url)?;
    // An interrupted benchmark must still stop its server (the guard's drop) and fleet.
    let outcome = tokio::select! {
        r = measure(dir, runs, opts, (&server, &bouncer), &supervisor, &worker) => r,
        _ = interrupted() => Err(anyhow!("interrupted")),
    };
    let version = server.version().await;
    drop(bouncer);
    drop(server);
    Ok(report(opts, runs, &outcome?, &version, &load))
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

struct Results {
    /// The raw loop, the reference of the ratios.
    raw: Vec<Measured>,
    /// The same loop with the claim planned well.
    raw_tuned: Vec<Measured>,
    fleets: Vec<(Setup, Vec<Measured>)>,
}

async fn measure(
    dir: &Path,
    runs: usize,
    opts: &Options,
    (server, bouncer): (&Server, &Bouncer),
    supervisor: &Path,
    worker: &Path,
) -> anyhow::Result<Results> {
    let n = opts.videos;
    let csv = dir.join("videos.csv");
    write_csv(&csv, n)?;
    let mut setups = Vec::new();
    for &concurrency in &opts.concurrency {
        for backend in [Backend::Postgres, Backend::PgBouncer, Backend::Sqlite] {
            for &workers in &opts.workers {
                setups.push(Setup { backend, workers, concurrency });
            }
        }
    }
    let mut raw = Vec::new();
    let mut raw_tuned = Vec::new();
    let mut fleets: Vec<(Setup, Vec<Measured>)> = setups.iter().map(|s| (*s, Vec::new())).collect();
    for run in 1..=runs.max(1) {
        for (planning, out) in [(Planning::AsImported, &mut raw), (Planning::AnalyzedCustom, &mut raw_tuned)] {
            let how = if planning == Planning::AsImported { "" } else { ", analyzed, custom plans" };
            eprintln!("run {run}/{runs}: raw loop over {n} videos{how}");
            let db = server.fresh_database().await?;
            import(supervisor, dir, &csv, &db.location)?;
            let r = raw_loop(&db, server, n, planning).await;
            db.drop_database().await?;
            let r = r?;
            eprintln!("  {}", measured_line(n, &r));
            out.push(r);
        }
        // Interleaved, so a slow spell of the shared machine does not land on one row.
        for (setup, out) in &mut fleets {
            eprintln!("run {run}/{runs}: {} on {}", setup.command(), setup.backend.name());
            let r = match setup.backend {
                Backend::Postgres | Backend::PgBouncer => {
                    let db = server.fresh_database().await?;
                    import(supervisor, dir, &csv, &db.location)?;
                    let on = Some((server, db.name.as_str()));
                    let reached = match setup.backend {
                        Backend::PgBouncer => bouncer.url(&db.name),
                        _ => db.location.clone(),
                    };
                    let r = fleet_run(dir, supervisor, worker, &reached, setup, on, opts).await;
                    let r = match r {
                        Ok(r) => check_done(&db.location, n).await.map(|()| r),
                        Err(e) => Err(e),
                    };
                    db.drop_database().await?;
                    r?
                }
                Backend::Sqlite => {
                    let path = dir.join("fleet.db");
                    remove_sqlite(&path);
                    let db = DbLocation::Sqlite(path.clone());
                    import(supervisor, dir, &csv, &db)?;
                    let r = fleet_run(dir, supervisor, worker, &db, setup, None, opts).await?;
                    check_done(&db, n).await?;
                    remove_sqlite(&path);
                    r
                }
            };
            eprintln!("  {}", measured_line(n, &r));
            out.push(r);
        }
    }
    let _ = std::fs::remove_file(&csv);
    Ok(Results { raw, raw_tuned, fleets })
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn measured_line(n: i64, m: &Measured) -> String {
    let mut s = format!("{:.2} s, {:.0} videos/s, client CPU {:.2} s", m.secs, n as f64 / m.secs, m.client_cpu);
    if let Some(cpu) = m.server_cpu {
        s.push_str(&format!(", server CPU {cpu:.2} s"));
    }
    if let Some(c) = m.commits {
        s.push_str(&format!(", {c} transactions"));
    }
    match m.analyzed_at {
        Some(at) if at < 0.0 => s.push_str(&format!(", autovacuum analyzed videos {:.1} s before the run", -at)),
        Some(at) => s.push_str(&format!(", autovacuum analyzed videos {at:.1} s into the run")),
        None => {}
    }
    s
}

/// `video_id,source` for videos 1..=n, as a user would import them.
pub(crate) fn write_csv(path: &Path, n: i64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "video_id,source")?;
    for i in 1..=n {
        writeln!(out, "{i},https://videos.example/{i}.mp4")?;
    }
    out.flush()?;
    Ok(())
}

/// `supervisor import` of the file into `db`, which it creates and migrates. (That every
/// row arrived is checked at the end: every video must be done.)
pub(crate) fn import(supervisor: &Path, dir: &Path, csv: &Path, db: &DbLocation) -> anyhow::Result<()> {
    let out = fleet_command(supervisor, dir).arg("import").arg(csv).arg("--db").arg(db.as_arg()).output()?;
    if !out.status.success() {
        bail!("supervisor import failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The PL/pgSQL loop of session `k` of two: the fleet's claim (same predicate, order,
/// index and columns, batch of 512), committed; then the fleet's finish of the batch
/// (status done and the lease cleared, fenced on the token), committed. Only the
/// client is missing: no round trips, no handler, and (triggers disabled) no history.
fn raw_loop_sql(k: u32) -> String {
    format!(
        "DO $$
         DECLARE
             ids BIGINT[];
             now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
         BEGIN
             LOOP
                 WITH due AS MATERIALIZED (
                     SELECT video_id FROM videos
                     WHERE status = 'pending' AND video_id % 2 = {k} AND run_after <= now_ms
                     ORDER BY run_after, video_id LIMIT {RAW_BATCH} FOR UPDATE SKIP LOCKED),
                 claimed AS (
                     UPDATE videos v SET status = 'running', attempts = v.attempts + 1, lease_owner = 'raw-{k}',
                            lease_token = {token}, lease_expires_at = now_ms + 60000, started_at = now_ms,
                            finished_at = NULL, duration_ms = NULL
                     FROM due WHERE v.video_id = due.video_id AND v.status = 'pending'
                     RETURNING v.video_id)
                 SELECT array_agg(video_id) INTO ids FROM claimed;
                 EXIT WHEN ids IS NULL;
                 COMMIT;
                 UPDATE videos SET status = 'done', last_outcome = 'done', result = '', last_error = NULL,
                        warnings = NULL, run_after = now_ms, finished_at = now_ms, duration_ms = 0,
                        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE video_id = ANY (ids) AND status = 'running' AND lease_token = {token};
                 COMMIT;
             END LOOP;
         END $$",
        token = k + 1,
    )
}

/// The raw loop on `db` (its videos imported): two sessions at once, timed from the
/// start of both to the end of the later one.
async fn raw_loop(db: &Database, server: &Server, n: i64, planning: Planning) -> anyhow::Result<Measured> {
    let DbLocation::Postgres(url) = &db.location else { bail!("the raw loop runs on PostgreSQL") };
    {
        let store = Store::open(&db.location, 1).await?;
        // The fleet's own claim index for two workers, made the way a worker makes it,
        // so the loop finds its rows as the fleet does.
        let shard = store.open_shard(ShardSpec::new(2, 0)).await?;
        drop(shard);
        // No history, no kept counts: the user triggers are the fleet's only triggers.
        testing::execute(&store, "ALTER TABLE videos DISABLE TRIGGER USER").await?;
        if planning == Planning::AnalyzedCustom {
            testing::execute(&store, "ANALYZE videos").await?;
        }
        store.close().await;
    }
    let mut a = PgConnection::connect(url).await?;
    let mut b = PgConnection::connect(url).await?;
    if planning == Planning::AnalyzedCustom {
        for conn in [&mut a, &mut b] {
            sqlx::raw_sql("SET plan_cache_mode = force_custom_plan").execute(&mut *conn).await?;
        }
    }
    let (sql_a, sql_b) = (raw_loop_sql(0), raw_loop_sql(1));
    let commits_before = server.commits(&db.name).await?;
    let cpu_before = server.cpu_secs();
    let started_epoch = epoch_secs();
    let start = Instant::now();
    let (ra, rb) = tokio::join!(
        sqlx::raw_sql(AssertSqlSafe(sql_a.as_str())).execute(&mut a),
        sqlx::raw_sql(AssertSqlSafe(sql_b.as_str())).execute(&mut b),
    );
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = server.cpu_secs();
    ra.context("raw loop, session 0")?;
    rb.context("raw loop, session 1")?;
    a.close().await?;
    b.close().await?;
    let commits = server.commits_after(&db.name, commits_before).await?;
    let mut check = PgConnection::connect(url).await?;
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM videos WHERE status = 'done'").fetch_one(&mut check).await?;
    check.close().await?;
    if done != n {
        bail!("the raw loop left {done} of {n} videos done");
    }
    Ok(Measured {
        secs,
        server_cpu: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        client_cpu: 0.0,
        commits: Some(commits),
        analyzed_at: autoanalyzed(url, started_epoch, secs).await?,
    })
}

/// CPU seconds (user + system) of every child this process has waited for, and their
/// descendants that those waited for: the fleet, once `supervisor start` has exited.
pub(crate) fn children_cpu() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(u.user_time()) + secs(u.system_time())
        })
        .unwrap_or(0.0)
}

/// One `supervisor start` over `db`, from spawn to exit. It must exit 0 (every video
/// done) within the timeout.
async fn fleet_run(
    dir: &Path,
    supervisor: &Path,
    worker: &Path,
    db: &DbLocation,
    setup: &Setup,
    server: Option<(&Server, &str)>,
    opts: &Options,
) -> anyhow::Result<Measured> {
    let name = server.map(|(_, name)| name);
    let logs = dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let base = free_port_run(setup.workers as u16)?;
    let mut cmd = fleet_command(supervisor, dir);
    cmd.arg("start")
        .args(["--workers", &setup.workers.to_string(), "--mem-limit", "250M", "--sleep", "0"])
        .args(["--exit-when-done", "--base-port", &base.to_string()])
        .arg("--db")
        .arg(db.as_arg())
        .arg("--log-dir")
        .arg(&logs)
        .env("FLEET_WORKER_BIN", worker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("supervisor.err"))?);
    if setup.concurrency > 0 {
        cmd.args(["--concurrency", &setup.concurrency.to_string()]);
    }
    let commits_before = match server {
        Some((s, name)) => Some(s.commits(name).await?),
        None => None,
    };
    let server = server.map(|(s, _)| s);
    let server_before = server.and_then(Server::cpu_secs);
    let client_before = children_cpu();
    let started_epoch = epoch_secs();
    let secs = Running::to_end(&mut cmd, opts.timeout, &dir.join("supervisor.err")).await?;
    let client_cpu = children_cpu() - client_before;
    let server_cpu = server.and_then(Server::cpu_secs).zip(server_before).map(|(b, a)| b - a);
    let commits = match (server, name, commits_before) {
        (Some(s), Some(name), Some(before)) => Some(s.commits_after(name, before).await?),
        _ => None,
    };
    let analyzed_at = match db {
        DbLocation::Postgres(url) => autoanalyzed(url, started_epoch, secs).await?,
        DbLocation::Sqlite(_) => None,
    };
    Ok(Measured { secs, server_cpu, client_cpu, commits, analyzed_at })
}

fn epoch_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// When autovacuum last analyzed `videos`, in seconds from the run's start (negative:
/// before it, between the import and the start), if it did by the run's end. Until it
/// has, the claim is planned without statistics: the database is new.
async fn autoanalyzed(url: &str, started_epoch: f64, secs: f64) -> anyhow::Result<Option<f64>> {
    let mut conn = PgConnection::connect(url).await?;
    let at: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM last_autoanalyze)::float8 FROM pg_stat_user_tables WHERE relname = 'videos'",
    )
    .fetch_optional(&mut conn)
    .await?
    .flatten();
    conn.close().await?;
    Ok(at.map(|at| at - started_epoch).filter(|&at| at <= secs))
}

/// A spawned `supervisor start`; stopped (SIGTERM, then SIGKILL) if dropped while it
/// runs, so a failed or interrupted benchmark leaves no fleet behind.
pub(crate) struct Running(pub(crate) Option<Child>);

impl Running {
    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a running fleet")
    }

    /// Starts `cmd` (a `supervisor start ... --exit-when-done` whose stderr goes to
    /// `err`) and waits for its exit, at most `limit`; returns its wall-clock seconds. An
    /// unsuccessful exit fails with the last lines of `err`; past `limit` the fleet is
    /// stopped and the run fails.
    pub(crate) async fn to_end(cmd: &mut Command, limit: Duration, err: &Path) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut fleet = Running(Some(cmd.spawn().context("cannot start the supervisor")?));
        let status = loop {
            if let Some(status) = fleet.child().try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                bail!("the fleet was still running after {} s; stopped", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let secs = start.elapsed().as_secs_f64();
        fleet.0 = None;
        if !status.success() {
            let text = std::fs::read_to_string(err).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("supervisor start exited with {status}: {}", tail.join("\n"));
        }
        Ok(secs)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(child) = self.0.as_mut() else { return };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        // The workers' default --grace (30 s) and the supervisor's 5 s on top.
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Every video done, and the history one done attempt per video.
pub(crate) async fn check_done(db: &DbLocation, n: i64) -> anyhow::Result<()> {
    let store = Store::open_read_only(db).await?;
    let counts = testing::count_table(&store, 1).await?[0];
    // `count(CASE ...)`: the one spelling of a filtered count both backends take.
    let sql = "SELECT count(*), count(CASE WHEN outcome = 'done' THEN 1 END) FROM attempts";
    let row = testing::query(&store, sql).await?.remove(0);
    let count = |i: usize| row[i].as_deref().and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
    let (attempts, done_attempts) = (count(0), count(1));
    store.close().await;
    if counts.done as i64 != n || attempts != n || done_attempts != n {
        bail!("the fleet left {} of {n} videos done, {attempts} attempts of which {done_attempts} done", counts.done);
    }
    Ok(())
}

/// The throwaway server: `.ci/postgres up DIR` when made, `down` and the directory
/// removed when dropped (the benchmark failing or interrupted included).
struct Server {
    script: PathBuf,
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    url: String,
}

/// A database of the benchmark's own on the server, dropped by `drop_database`.
struct Database {
    location: DbLocation,
    /// Its name on the server.
    name: String,
    server_url: String,
}

impl Server {
    fn up(dir: &Path) -> anyhow::Result<Server> {
        let script = find_script("postgres")?;
        let _ = std::fs::remove_dir_all(dir);
        // Made before the script runs, so a server it started before failing is stopped.
        let mut server = Server { script, dir: dir.to_path_buf(), url: String::new() };
        eprintln!("starting PostgreSQL: {} up {}", server.script.display(), dir.display());
        let out = Command::new(&server.script).arg("up").arg(dir).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(".ci/postgres up failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("FLEET_TEST_POSTGRES_URL="))
            .context(".ci/postgres up printed no FLEET_TEST_POSTGRES_URL")?;
        // The script listens on loopback only; anything else is not this benchmark's.
        if !url.starts_with("postgres://postgres@127.0.0.1:") {
            bail!(".ci/postgres up gave {url}, not a loopback server");
        }
        server.url = url.to_string();
        Ok(server)
    }

    async fn fresh_database(&self) -> anyhow::Result<Database> {
        let location = testing::create_postgres_database(&self.url).await?;
        let DbLocation::Postgres(url) = &location else { bail!("a PostgreSQL database is not a file") };
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        Ok(Database { location, name, server_url: self.url.clone() })
    }

    /// "PostgreSQL 15.x", as the server says.
    async fn version(&self) -> String {
        let asked = async {
            let mut conn = PgConnection::connect(&self.url).await?;
            let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
            conn.close().await?;
            anyhow::Ok(v)
        };
        match asked.await {
            Ok(v) => format!("PostgreSQL {}", v.split_whitespace().next().unwrap_or(&v)),
            Err(_) => "PostgreSQL".into(),
        }
    }

    /// Transactions committed in database `name`, as the statistics say now. Read from
    /// the server's `postgres` database, so the reading is not counted in them.
    async fn commits(&self, name: &str) -> anyhow::Result<i64> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let n: i64 = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(n)
    }

    /// Transactions committed in `name` since `before`. A backend sends its counts when
    /// it exits (or idles), a moment after its session closed: read until two readings
    /// a quarter of a second apart agree.
    async fn commits_after(&self, name: &str, before: i64) -> anyhow::Result<i64> {
        let mut last = self.commits(name).await?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.commits(name).await?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last - before)
    }

    /// CPU seconds (user + system) the server's processes have used so far: the
    /// postmaster, the children it has reaped (backends of closed sessions) and those
    /// still alive (background processes, open sessions).
    fn cpu_secs(&self) -> Option<f64> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let (own, reaped, _) = proc_times(postmaster)?;
        let mut ticks = own + reaped;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some((t, _, parent)) = proc_times(pid)
                && parent == postmaster
            {
                ticks += t;
            }
        }
        Some(ticks as f64 / clock_ticks())
    }
}

/// A PgBouncer in transaction pooling in front of the server, from the shipped
/// `deploy/pgbouncer/pgbouncer.ini` (`.ci/pgbouncer`); stopped when dropped.
struct Bouncer {
    script: PathBuf,
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT`, without a database.
    url: String,
}

impl Bouncer {
    fn up(dir: &Path, server: &str) -> anyhow::Result<Bouncer> {
        let script = find_script("pgbouncer")?;
        let _ = std::fs::remove_dir_all(dir);
        // Made before the script runs, so a PgBouncer it started before failing is stopped.
        let mut bouncer = Bouncer { script, dir: dir.to_path_buf(), url: String::new() };
        eprintln!("starting PgBouncer: {} up {} transaction", bouncer.script.display(), dir.display());
        let out = Command::new(&bouncer.script).arg("up").arg(dir).args(["transaction", server]).output()?;
        if !out.status.success() {
            bail!(".ci/pgbouncer up failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout.lines().find_map(|l| l.strip_prefix("PGBOUNCER_URL=")).context("no PGBOUNCER_URL")?;
        bouncer.url = url.to_string();
        Ok(bouncer)
    }

    /// Database `name` through this PgBouncer.
    fn url(&self, name: &str) -> DbLocation {
        DbLocation::Postgres(format!("{}/{name}?pool_mode=transaction", self.url))
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("down").arg(&self.dir).stdin(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Database {
    async fn drop_database(&self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.server_url).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await?;
        admin.close().await?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        eprintln!("stopping PostgreSQL");
        let stopped = Command::new(&self.script).arg("down").arg(&self.dir).stdin(Stdio::null()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("`.ci/postgres down {}` failed: the server may still run", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `.ci/<name>` of the repository: from the working directory (the documented way to
/// run the benchmark is from the repository's root), else above the executable
/// (target/release/fleet-bench).
fn find_script(name: &str) -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(".ci").join(name);
    if here.is_file() {
        return Ok(std::path::absolute(here)?);
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .map(|d| d.join(".ci").join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("cannot find .ci/{name}: run fleet-bench from the repository's root"))
}

/// (utime + stime, cutime + cstime, parent pid) of a process, in clock ticks, from
/// /proc/<pid>/stat.
fn proc_times(pid: u32) -> Option<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold anything: field 4
    // (ppid) is index 1, utime..cstime (14-17) are 11-14.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some((num(11)? + num(12)?, num(13)? + num(14)?, num(1)? as u32))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn report(opts: &Options, runs: usize, results: &Results, version: &str, load: &str) -> String {
    let Results { raw, raw_tuned, fleets } = results;
    let n = opts.videos;
    let rate = |m: &Measured| n as f64 / m.secs;
    let med = |v: &[Measured], f: &dyn Fn(&Measured) -> f64| median(v.iter().map(f).collect());
    let raw_rate = med(raw, &rate);
    let mut out = format!(
        "{version} from Debian's packages, started for the run by `.ci/postgres up` (loopback TCP, `fsync=off`, \
         `synchronous_commit=off`, `full_page_writes=off`, autovacuum on). Every measurement has a fresh database of \
         the same {n} videos imported with `supervisor import` (SQLite: a new file in /tmp). 1-minute load average \
         before the first run: {load}. Median of {runs} run(s); a ratio is the median fleet rate over the median \
         raw loop rate (the issue's loop, first row), and the goal is judged on it.\n\n\
         - **Raw loop**: two sessions at once, each one PL/pgSQL `DO` block over its shard (`video_id % 2 = k`): \
         the fleet's claim statement for {RAW_BATCH} videos (`FOR UPDATE SKIP LOCKED`, the fleet's own \
         `videos_pending_mod2` index, made by `open_shard`), `COMMIT`, the batch set done as the fleet's finish \
         sets it (fenced on the lease token), `COMMIT`, until the shard is empty. No history: the table's triggers \
         are disabled for this database (`ALTER TABLE videos DISABLE TRIGGER USER`, which turns off the kept \
         counts too). Timed from both sessions' start to the later one's end. The second row is the same loop \
         after `ANALYZE videos`, both sessions with `plan_cache_mode = force_custom_plan`: the claim as an ordered \
         scan of the shard's index instead of a bitmap scan of the whole pending shard and a sort.\n\
         - **Fleet**: the release `supervisor start ... --db URL|FILE` (plus `--base-port` and `--log-dir`), timed \
         from spawn to exit (exit 0 required); afterwards every video must be done and the attempts table must hold \
         {n} rows, all `done`. History on (the update trigger writes each attempt). The issue fixes no \
         `--concurrency`; a worker claims at most its free slots, so `--concurrency {RAW_BATCH}` is the fleet that \
         claims {RAW_BATCH} at a time as the raw loop does, and the goal is judged on its 2-worker PostgreSQL row. \
         No `--concurrency` is the worker's default, 4: four videos a transaction, so the fleet measures \
         PostgreSQL's cost per transaction more than per video. The PgBouncer rows: the same PostgreSQL fleet \
         through PgBouncer in transaction pooling (`.ci/pgbouncer`, the shipped `deploy/pgbouncer/pgbouncer.ini`), \
         its URL with `pool_mode=transaction`; the import and the checks go straight to the server.\n\
         - **CPU**: server = the postmaster, the backends it reaped and those still alive (/proc); fleet = the \
         supervisor and the workers it reaped (`getrusage(RUSAGE_CHILDREN)`). The machine has {cores} cores, so \
         a run can use at most {cores} × its wall time. Transactions: `pg_stat_database.xact_commit` of the \
         database over the run (the supervisor's and workers' reads are transactions too). Autovacuum: whether \
         it analyzed the new table before the run (between the import and the start) or during it, and when \
         (median seconds into the run); until then the claim is planned without statistics.\n\n\
         | measurement | videos/s | ratio to raw loop | wall | CPU: server / fleet | transactions (videos per) | autovacuum ANALYZE |\n\
         |---|---|---|---|---|---|---|\n",
        cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
    );
    let cpu = |v: &[Measured]| {
        let server = med(v, &|m| m.server_cpu.unwrap_or(f64::NAN));
        let client = med(v, &|m| m.client_cpu);
        if server.is_nan() { format!("— / {client:.1} s") } else { format!("{server:.1} s / {client:.1} s") }
    };
    let commits = |v: &[Measured]| {
        let c = med(v, &|m| m.commits.map_or(f64::NAN, |c| c as f64));
        if c.is_nan() { String::new() } else { format!("{c:.0} ({:.0})", n as f64 / c) }
    };
    // Runs in which autovacuum analyzed the table before or during the run, and the
    // median moment it did in those during.
    let analyzed = |v: &[Measured]| {
        let before = v.iter().filter(|m| m.analyzed_at.is_some_and(|at| at < 0.0)).count();
        let during: Vec<f64> = v.iter().filter_map(|m| m.analyzed_at).filter(|&at| at >= 0.0).collect();
        let mut parts = Vec::new();
        if before > 0 {
            parts.push(format!("before the run in {before} of {} runs", v.len()));
        }
        if !during.is_empty() {
            parts.push(format!("at {:.0} s in {} of {} runs", median(during.clone()), during.len(), v.len()));
        }
        if parts.is_empty() { "not by the run's end".to_string() } else { parts.join("; ") }
    };
    for (label, v) in [
        (format!("raw loop: 2 PL/pgSQL sessions, claim {RAW_BATCH} + done, no history"), raw),
        ("raw loop, same, analyzed and custom plans".to_string(), raw_tuned),
    ] {
        out.push_str(&format!(
            "| {label} | {:.0} | {:.2} | {:.2} s | {:.1} s / none (it runs in the server) | {} | {} |\n",
            med(v, &rate),
            med(v, &rate) / raw_rate,
            med(v, &|m| m.secs),
            med(v, &|m| m.server_cpu.unwrap_or(f64::NAN)),
            commits(v),
            analyzed(v),
        ));
    }
    for (setup, ms) in fleets {
        let r = med(ms, &rate);
        let ratio = r / raw_rate;
        let ratio_text = match setup.backend {
            Backend::Postgres if setup.workers == 2 && setup.concurrency as usize == RAW_BATCH => {
                let met = ratio >= GOAL_RATIO;
                format!("**{ratio:.2}** (goal >= {GOAL_RATIO}: {})", if met { "met" } else { "NOT met" })
            }
            _ => format!("{ratio:.2}"),
        };
        let autovacuum = if setup.backend == Backend::Sqlite { String::new() } else { analyzed(ms) };
        out.push_str(&format!(
            "| {} `{}` | {r:.0} | {ratio_text} | {:.2} s | {} | {} | {autovacuum} |\n",
            setup.backend.name(),
            setup.command(),
            med(ms, &|m| m.secs),
            cpu(ms),
            commits(ms),
        ));
    }
    out.push_str(
        "\nAnchors from the issue, other machines: River ~46,000 jobs/s on 8 cores; Oban ~16,700 jobs/s on one node.\n\n\
         Each run:\n\n",
    );
    for (label, v) in [("raw loop", raw), ("raw loop, analyzed and custom plans", raw_tuned)] {
        for (i, m) in v.iter().enumerate() {
            out.push_str(&format!("- run {}, {label}: {}\n", i + 1, measured_line(n, m)));
        }
    }
    for (setup, ms) in fleets {
        for (i, m) in ms.iter().enumerate() {
            out.push_str(&format!(
                "- run {}, {} `{}`: {} (ratio {:.2} to that run's raw loop)\n",
                i + 1,
                setup.backend.name(),
                setup.command(),
                measured_line(n, m),
                rate(m) / rate(&raw[i]),
            ));
        }
    }
    out
}
