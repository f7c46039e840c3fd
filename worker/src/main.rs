//! `worker`: parse flags, bind the port, run. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use shared::logging::{LogOptions, plain_line};
use tokio_util::sync::CancellationToken;
use worker::{Cli, RunEnd};

use shared::exit::{WORKER_DB_CORRUPT, WORKER_FAILURE as EXIT_FAILURE, WORKER_USAGE as EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let worker_id = cli.resolve_worker_id().ok();
    let options = LogOptions {
        ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        // Under the supervisor, which timestamps every line it collects, ours would repeat it.
        without_time: std::env::var_os("FLEET_LOG_NO_TIME").is_some(),
        target: true,
        worker_id,
    };
    shared::logging::init(format, options, std::io::stderr);
    // Lines printed past tracing keep to the format too: under `json`, every line parses.
    let fail = |message: String| eprintln!("{}", plain_line(format, "ERROR", worker_id, &message));
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            fail(format!("worker: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            fail(format!("worker: cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        // Bind before touching the database, so a busy port changes nothing.
        let addr = std::net::SocketAddr::new(config.bind, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                fail(format!("worker: port {} on {} is already in use", config.port, config.bind));
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                fail(format!("worker: cannot listen on {addr}: {e}"));
                return ExitCode::from(EXIT_USAGE);
            }
        };
        worker::orphan::watch();
        if let Ok(local) = listener.local_addr() {
            tracing::info!("listening on {local}");
        }
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        if let Err(e) = shared::signals::on_signals(shutdown.clone(), hurry.clone()) {
            fail(format!("worker: cannot install signal handlers: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
        let db_path = config.db.clone();
        match worker::run(config, listener, shutdown, hurry).await {
            Ok(RunEnd::Stopped) => ExitCode::SUCCESS,
            Ok(RunEnd::ShardDone(c)) => {
                let line = format!("shard finished: {} done, {} failed", c.done, c.failed);
                println!("{}", plain_line(format, "INFO", worker_id, &line));
                ExitCode::SUCCESS
            }
            Err(e) if is_corrupt(&e) => {
                fail(format!("worker: {e:#}"));
                fail(format!("worker: {}", shared::storage::corrupt_advice(&db_path)));
                ExitCode::from(WORKER_DB_CORRUPT)
            }
            // A database the user must fix: no restart can mend it.
            Err(e) if e.chain().any(|c| c.downcast_ref::<shared::DbError>().is_some_and(shared::DbError::is_usage)) => {
                fail(format!("worker: {e:#}"));
                ExitCode::from(EXIT_USAGE)
            }
            Err(e) => {
                fail(format!("worker: {e:#}"));
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
}

/// Whether the run ended because the database file is damaged: no restart can help.
fn is_corrupt(e: &anyhow::Error) -> bool {
    shared::error::chain_is_corrupt(e.as_ref())
}
