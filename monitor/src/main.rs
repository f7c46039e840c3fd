//! `monitor`: parse flags, find the workers, run. Everything else is in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use monitor::Cli;
use tokio_util::sync::CancellationToken;

/// Exit codes: 0 quit or printed; 1 a runtime failure (terminal, stdout); 2 bad usage,
/// including workers that cannot be found (no database, no run recorded).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.into_config(std::io::stdout().is_terminal()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("monitor: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One thread is plenty to poll a fleet once a second, and keeps the monitor small.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("monitor: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        let discovery = match monitor::discover(&config).await {
            Ok(d) => d,
            // A database that cannot be reached now is a runtime failure (1), as for every
            // command; a --db that names no usable database is the user's to fix (2).
            Err(e) if e.chain().any(|c| c.downcast_ref::<shared::DbError>().is_some_and(|d| !d.is_usage())) => {
                eprintln!("monitor: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
            Err(e) => {
                eprintln!("monitor: {e:#}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let cancel = CancellationToken::new();
        if let Err(e) = monitor::shutdown::on_signals(cancel.clone()) {
            eprintln!("monitor: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        let ran = match config.serve.as_ref().map(|s| s.addr) {
            Some(addr) => {
                // Bound before anything is served, so a busy port is a usage error.
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        eprintln!("monitor: cannot serve on {addr}: the port is already in use");
                        return ExitCode::from(EXIT_USAGE);
                    }
                    Err(e) => {
                        eprintln!("monitor: cannot serve on {addr}: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                monitor::serve(config, discovery, listener, cancel).await
            }
            None => monitor::run(config, discovery, cancel).await,
        };
        match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("monitor: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
}
