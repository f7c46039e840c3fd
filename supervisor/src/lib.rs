//! The shardfleet supervisor as a library: `run` takes parsed flags and returns the exit
//! code, so tests can drive it as the real binary does.
//!
//! Where things are:
//! - starting, watching and restarting workers: `fleet/` (`fleet/mod.rs` says where each
//!   part is: the checked flags, the loop and the run's phases, the run's end),
//!   `fleet/slot.rs` (one worker's state), `fleet/launch.rs` and `fleet/spawn.rs` (command
//!   line, token pipe, process group, parent-death signal, cgroup join),
//!   `fleet/restart.rs` and `fleet/exit_cause.rs` (why a worker ended, backoff, crash
//!   loop), `fleet/health.rs`, `fleet/recover.rs` (handing back claims, a dead run);
//! - memory limits: `fleet/memory/` (cgroups; `sample.rs`: sampling) over `procfs.rs`;
//! - logs: `fleet/output.rs` (capture), `logs.rs` (files, rotation, `supervisor logs`);
//! - what a run record says of its run: `liveness.rs` (alive or not, and its name),
//!   `memory_mode.rs` (how it holds memory);
//! - data in and out: `import.rs`, `export.rs`; `status.rs`, `stop.rs`, `scale.rs`.

pub mod cli;
pub mod config_file;
pub mod export;
pub mod fleet;
pub mod import;
pub mod liveness;
pub mod logs;
pub mod memory_mode;
pub mod procfs;
pub mod scale;
pub mod status;
pub mod stop;

use shared::storage::Store;
use tokio_util::sync::CancellationToken;

use crate::cli::{Command, LogsArgs, RetryArgs};
pub use crate::fleet::exit;

/// A command that succeeded: its exit code and, for a batch run, the summary to print
/// last (after the log lines still queued for stdout).
#[derive(Debug)]
pub struct Done {
    pub code: u8,
    pub summary: Option<String>,
}

impl From<u8> for Done {
    fn from(code: u8) -> Done {
        Done { code, summary: None }
    }
}

/// A failure with its exit code: bad input (2) or a runtime failure (1).
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: exit::USAGE, error: error.into() }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure { code: exit::FAILURE, error: e.into() }
    }
}

/// Runs one subcommand; returns the exit code on success.
/// `out` is the supervisor's stdout, written without ever blocking (the merged stream
/// of the workers' lines goes there).
pub async fn run(
    command: Command,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    out: tracing_appender::non_blocking::NonBlocking,
) -> Result<Done, Failure> {
    let db = command.db().clone();
    run_command(command, shutdown, hurry, out).await.map_err(|f| classify(f, &db))
}

/// Database failures read the same from every command, by kind, whichever backend said
/// it: a database the user must fix (not a database, another application's, a login
/// refused, no such database) is bad input (exit 2, and it was left alone); one that
/// cannot be reached now is a runtime failure (1); a damaged file is told as one
/// sentence that names it and how to recover it, not as SQLite's error code.
fn classify(f: Failure, db: &shared::storage::DbLocation) -> Failure {
    use shared::DbError;
    if shared::error::chain_is_corrupt(f.error.as_ref()) {
        return Failure { code: exit::FAILURE, error: anyhow::anyhow!(shared::storage::corrupt_advice(db)) };
    }
    if shared::error::chain_is_pooler_clash(f.error.as_ref()) {
        let error = anyhow::anyhow!(
            "{:#}; a pooler in transaction mode (PgBouncer's pool_mode = transaction) stands in front of {db}: add pool_mode=transaction to the URL (README, \"Behind PgBouncer\")",
            f.error
        );
        return Failure { code: exit::USAGE, error };
    }
    match f.error.chain().find_map(|c| c.downcast_ref::<DbError>()) {
        Some(e) => Failure { code: if e.is_usage() { exit::USAGE } else { exit::FAILURE }, ..f },
        None => f,
    }
}

/// Writes one line to stdout, handing back a closed pipe as an error to end on quietly
/// (`supervisor status | head -1`), where `println!` would panic.
fn say(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}")
}

async fn run_command(
    command: Command,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    out: tracing_appender::non_blocking::NonBlocking,
) -> Result<Done, Failure> {
    match command {
        Command::Start(args) => {
            let (config, layout) = fleet::FleetConfig::from_args(*args).map_err(Failure::usage)?;
            // A supervisor restarted right after a SIGKILL finds its old workers still
            // on their way out: give them a moment before judging the ports.
            fleet::wait_for_previous_workers(&config.db).await;
            fleet::check_ports(&config, &layout)?;

            fleet::check_batch_has_videos(&config).await.map_err(Failure::usage)?;
            let fleet = fleet::Fleet::prepare(config, layout, out, &shutdown).await?;
            let (end, summary) = fleet.run(shutdown, hurry).await?;
            Ok(Done { code: end.exit_code(), summary })
        }
        Command::Import(a) => {
            say(import::run(&a).await?)?;
            Ok(exit::DONE.into())
        }
        Command::Status(a) => {
            let db = Store::open_read_only(&a.db.db).await?;
            let mut view = status::load(&db).await?;
            view.disk_full = status::full_disk(&a.db.db);
            if a.json {
                say(serde_json::to_string_pretty(&view)?)?;
            } else {
                say(status::render(&view).trim_end())?;
            }
            Ok(exit::DONE.into())
        }
        Command::Stop(a) => {
            let db = Store::open_read_only(&a.db.db).await?;
            say(stop::stop(db, &a.db.db, a.worker_ids.as_ref(), a.timeout).await?)?;
            Ok(exit::DONE.into())
        }
        Command::Scale(a) => {
            let db = Store::open_read_only(&a.db.db).await?;
            match scale::scale(db, &a.db.db, a.workers, a.timeout).await {
                Ok(lines) => say(lines)?,
                // Refused before anything was written: bad input, exit 2.
                Err(e) if e.is::<scale::Refused>() => return Err(Failure::usage(e)),
                Err(e) => return Err(e.into()),
            }
            Ok(exit::DONE.into())
        }
        Command::Retry(a) => retry(a).await.map(Done::from),
        Command::Export(a) => {
            let db = Store::open_read_only(&a.db.db).await?;
            let select = shared::storage::ExportFilter { statuses: &a.status, warned: a.warnings };
            let n = export::export(&db, a.format, select, a.out.as_deref()).await?;
            if let Some(out) = &a.out {
                eprintln!("exported {n} videos to {}", out.display());
            }
            Ok(exit::DONE.into())
        }
        Command::Logs(a) => logs_command(a, shutdown).await.map(Done::from),
    }
}

/// `supervisor logs`: the latest run's (or `--log-dir`'s) worker logs, tailed, and
/// followed with `--follow` until the shutdown.
async fn logs_command(a: LogsArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let (dir, recorded) = match a.log_dir {
        Some(d) => (d, false),
        None => {
            let db = Store::open_read_only(&a.db.db).await?;
            let run = db.latest_run().await?;
            let dir = run.and_then(|r| r.log_dir).map(std::path::PathBuf::from).ok_or_else(|| {
                Failure::usage(anyhow::anyhow!("no fleet has been started on this database; pass --log-dir"))
            })?;
            (dir, true)
        }
    };
    let whose = if recorded { " (the latest run's; another can be named with --log-dir)" } else { "" };
    let logged = match logs::logged_workers(&dir) {
        Ok(ks) => ks,
        // A fleet about to start may still make it: followed, it is waited for.
        Err(e) if a.follow && e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("supervisor: no log directory {}{whose} yet; waiting for it", dir.display());
            Vec::new()
        }
        Err(e) => {
            let why = format!("cannot read the log directory {}{whose}: {e}", dir.display());
            return Err(Failure::usage(anyhow::anyhow!(why)));
        }
    };
    let workers = match a.worker {
        None => logged,
        Some(k) if logged.contains(&k) => vec![k],
        // A worker not started yet may still write its log: followed, it is waited for.
        Some(k) if a.follow => {
            eprintln!("supervisor: no log of worker {k} in {} yet; waiting for one", dir.display());
            vec![k]
        }
        Some(k) => return Err(Failure::usage(anyhow::anyhow!(logs::no_log(&dir, k, &logged)))),
    };
    for line in logs::tail(&dir, &workers, a.lines)? {
        say(line)?;
    }
    if a.follow {
        tokio::select! {
            r = logs::follow(&dir, &workers) => r?,
            _ = shutdown.cancelled() => {}
        }
    }
    Ok(exit::DONE)
}

async fn retry(a: RetryArgs) -> Result<u8, Failure> {
    let db = Store::open_existing(&a.db.db, 1).await?;
    if a.select.failed {
        let n = db.requeue_all_failed().await?;
        say(format!("requeued {n} failed videos"))?;
        return Ok(exit::DONE);
    }
    match db.requeue_ids(&a.select.ids).await? {
        Ok(n) => {
            say(format!("requeued {n} videos"))?;
            Ok(exit::DONE)
        }
        Err(bad) => {
            let what: Vec<String> = bad
                .iter()
                .map(|(id, s)| match s {
                    None => format!("{id} does not exist"),
                    Some(s) => format!("{id} is {s}"),
                })
                .collect();
            Err(Failure::usage(anyhow::anyhow!(
                "only failed videos can be retried, and {}; nothing was requeued",
                what.join(", ")
            )))
        }
    }
}
