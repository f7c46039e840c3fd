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
    self::serve(listener, app(state), HEADER_TIMEOUT, cancel.clone()).await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// How long a client has to send a request's headers: a client that trickles them
/// (slowloris) must not hold a connection, and a task, for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server waits for connections still open.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `stop` fires, each connection with a header-read
/// timeout (which `axum::serve` cannot set); then waits a little for open connections.
pub async fn serve(listener: TcpListener, app: axum::Router, header_timeout: Duration, stop: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors would spin: wait a moment, as axum::serve does.
                    eprintln!("monitor: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // A header timeout or a client that went away is the client's business.
            let _ = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, connections.wait()).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_client_that_trickles_its_headers_is_cut_off_after_the_header_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(serve(listener, app, Duration::from_millis(300), stop.clone()));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        let began = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection was not closed");
        assert!(began.elapsed() < Duration::from_secs(3));
        stop.cancel();
        server.await.unwrap();
    }
}
