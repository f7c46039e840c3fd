//! The shardfleet monitor as a library: `discover` finds the workers, `run` polls them
//! and shows the fleet as a dashboard, plain text or JSON until it is told to stop.
//!
//! Where things are:
//! - flags: `cli.rs`; finding workers: `targets.rs`; asking them: `poll.rs`;
//! - the fleet's state, totals, rate and ETA, and the `--json` schema: `aggregate.rs`;
//! - output: `dashboard.rs` (drawing and keys), `tui.rs` (the terminal), `plain.rs`;
//! - pause, resume and drain: `control.rs`;
//! - the web page (`--serve`): `web/`.

pub mod aggregate;
pub mod cli;
pub mod control;
pub mod dashboard;
pub mod plain;
pub mod poll;
pub mod shutdown;
pub mod targets;
pub mod text;
pub mod tui;
pub mod web;

use std::io::{BufWriter, Write};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use aggregate::{Fleet, Report};
pub use cli::{Cli, Config, Mode};
pub use targets::Discovery;

use crate::control::Controls;
use crate::dashboard::Ui;
use crate::poll::Poller;

/// Finds the workers `config` names. Its errors are the user's to fix (no database, no
/// run recorded in it).
pub async fn discover(config: &Config) -> anyhow::Result<Discovery> {
    targets::discover(&config.source, config.control_token.clone()).await
}

/// Serves the fleet as a web page on `listener` (`--serve`) until `cancel` fires.
pub async fn serve(
    config: Config,
    discovery: Discovery,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    web::run(config, discovery, listener, cancel).await
}

/// Polls the fleet and shows it as `config.mode` says: once (`--once`, `--json`), or
/// every interval until `cancel` fires or the dashboard is quit.
pub async fn run(config: Config, discovery: Discovery, cancel: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(config.mode != Mode::Serve, "--serve is run by monitor::serve, which takes the listener");
    let client = poll::client(config.timeout).context("cannot set up the HTTP client")?;
    let Discovery { targets, records, control_token } = discovery;
    let mut fleet = Fleet::new(targets.clone());
    if let Some(r) = &records {
        fleet = fleet.with_records(r.slots(), r.mem_limit_bytes());
    }
    let mut poller = Poller::new(client.clone(), targets, records);
    let mut stdout = BufWriter::new(std::io::stdout());

    if matches!(config.mode, Mode::Json | Mode::Once) {
        let round = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            round = poller.round() => round,
        };
        fleet.apply(round);
        if config.mode == Mode::Json {
            serde_json::to_writer_pretty(&mut stdout, &fleet.report())?;
            writeln!(stdout)?;
        } else {
            plain::once(&fleet, &mut stdout)?;
        }
        stdout.flush()?;
        return Ok(());
    }

    // One round in flight at a time: a slow consumer slows the poller rather than
    // queueing stale rounds.
    let (rounds_tx, rounds) = mpsc::channel(1);
    let poll_now = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    tasks.spawn(poller.run(config.interval, rounds_tx, poll_now.clone(), cancel.clone()));
    let result = match config.mode {
        Mode::Dashboard => {
            let ui = Ui::new(control_token.is_some(), shared::units::format_duration(config.interval));
            let controls = Controls { client, token: control_token, token_from_run: config.control_token.is_none() };
            tui::run(fleet, ui, rounds, controls, poll_now, cancel.clone()).await
        }
        _ => plain::run(fleet, rounds, &mut stdout, cancel.clone()).await.context("cannot write to stdout"),
    };
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    result
}
