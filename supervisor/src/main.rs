//! `supervisor`: parse flags (merging fleet.toml), set up logging, run. Everything else
//! is in the library.

use std::process::ExitCode;

use clap::Parser;
use shared::logging::{LogOptions, plain_line};
use std::io::Write;
use std::time::Duration;
use supervisor::cli::Cli;

use nix::sys::signal::{SigHandler, Signal};
use supervisor::{Done, Failure, exit};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let argv = match supervisor::config_file::merge(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("supervisor: {e:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let cli = Cli::parse_from(argv);
    // Everything the supervisor prints goes through one non-blocking, lossy writer
    // thread: a stdout nobody reads (a full pipe, a paused terminal) drops lines instead
    // of stalling the loop that watches the workers. The guard flushes it at exit.
    let (out, flush) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // The queue is allocated whole up front: 4096 lines cover a slow reader's hiccups
        // at a few hundred KiB, where 100k lines cost 3 MiB of the supervisor's RSS.
        .buffered_lines_limit(4096)
        .finish(std::io::stdout());
    let format = cli.command.log_format();
    let options = LogOptions {
        ansi: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        without_time: false,
        target: false,
        worker_id: None,
    };
    shared::logging::init(format, options, out.clone());
    // One thread: it is the thread that spawns workers, and a worker's parent-death
    // signal fires when the spawning thread exits, so it must live as long as we do.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("supervisor: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        if let Err(e) = shared::signals::on_signals(shutdown.clone(), hurry.clone()) {
            return Err(Failure { code: exit::FAILURE, error: anyhow::anyhow!("cannot install signal handlers: {e}") });
        }
        supervisor::run(cli.command, shutdown, hurry, out).await
    });
    // From here on a signal ends us as it ends any program that is printing.
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    // Flush what is queued for stdout, but do not hang on a reader that went away.
    let (flushed, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(flush);
        let _ = flushed.send(());
    });
    let _ = done.recv_timeout(Duration::from_secs(2));
    match result {
        Ok(Done { code, summary }) => {
            if let Some(text) = summary {
                // Written whole, after the queued log lines. A stdout nobody reads gets 5 s;
                // the summary is also in the log directory.
                let (wrote, written) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut stdout = std::io::stdout().lock();
                    let text = plain_line(format, "INFO", None, &text);
                    let _ = writeln!(stdout, "{text}").and_then(|_| stdout.flush());
                    let _ = wrote.send(());
                });
                let _ = written.recv_timeout(Duration::from_secs(5));
            }
            ExitCode::from(code)
        }
        // A reader that went away (`export | head`) is not an error of ours.
        Err(Failure { error, .. })
            if error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.to_string().contains("Broken pipe")
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(Failure { code, error }) => {
            eprintln!("{}", plain_line(format, "ERROR", None, &format!("supervisor: {error:#}")));
            ExitCode::from(code)
        }
    }
}
