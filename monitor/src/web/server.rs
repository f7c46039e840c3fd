//! Starting the page: the poll loop, the loop that publishes its snapshots, and the
//! server, all under one cancel token; `run` returns once each has stopped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::feed::{self, Snapshot};
use super::routes::{Settings, WebState, app};
use crate::aggregate::Fleet;
use crate::cli::{Config, Source};
use crate::poll::{self, Poller};
use crate::targets::Discovery;

/// The page asks for new figures no more often than this, whatever `--interval` says.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Serves the page on `listener` until `cancel` fires, polling the fleet once per
/// interval for every browser at once. Returns once the server and the poll loop have
/// stopped.
pub async fn run(
    config: Config,
    discovery: Discovery,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let serve = config.serve.clone().context("the web page needs --serve")?;
    let client = poll::client(config.timeout).context("cannot set up the HTTP client")?;
    let Discovery { targets, records, control_token: _ } = discovery;
    let mut fleet = Fleet::new(targets.clone());
    if let Some(r) = &records {
        fleet = fleet.with_records(r.slots(), r.mem_limit_bytes());
    }
    let reader = records.as_ref().map(|r| r.store());
    let poller = Poller::new(client.clone(), targets, records);

    let (rounds_tx, rounds) = mpsc::channel(1);
    let (publish, feed) = watch::channel(Arc::new(Snapshot::initial(fleet.clone())));
    let poll_now = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    tasks.spawn(poller.run(config.interval, rounds_tx, poll_now.clone(), cancel.clone()));
    tasks.spawn(feed::run(fleet, rounds, publish, cancel.clone()));

    let local = listener.local_addr().context("cannot read the address the page listens on")?;
    let settings = Settings {
        prefix: serve.prefix.clone(),
        hosts: super::state::Hosts::new(local, &serve.allow_hosts),
        read_only: serve.read_only,
        refresh: config.interval.max(MIN_REFRESH),
        db: match &config.source {
            Source::Db(db) => Some(db.clone()),
            _ => None,
        },
    };
    let state = WebState {
        settings: Arc::new(settings),
        feed,
        client,
        flag_token: config.control_token.as_deref().map(Arc::from),
        poll_now,
        store: Arc::new(OnceCell::new()),
        reader,
    };
    if !local.ip().is_loopback() {
        eprintln!(
            "monitor: warning: serving on {local}, beyond loopback: anyone who can reach this port sees the fleet \
             (controls still need the token); prefer 127.0.0.1 and an SSH tunnel"
        );
    }
    eprintln!("monitor: serving the fleet on http://{local}{}/", serve.prefix);
    let report = |e: &std::io::Error| eprintln!("monitor: cannot accept a connection: {e}; trying again in 1s");
    shared::http::serve(listener, app(state), HEADER_TIMEOUT, cancel.clone(), report).await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// How long a client has to send a request's headers: a client that trickles them
/// (slowloris) must not hold a connection, and a task, for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
