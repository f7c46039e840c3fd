//! The HTTP server loop of the worker's API and the monitor's page (the `http` feature):
//! `axum::serve` cannot time out a client's headers, so each connection is served by
//! hyper here, with that timeout, until the stop.

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stopping server waits for its open connections.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `stop` fires, then stops accepting, lets requests in
/// progress finish, and returns once every connection has closed, or after a short wait
/// (a client that keeps a request open must not keep the process from exiting).
///
/// A client gets `header_timeout` to send a request's headers, counted from when the
/// connection opens or its previous answer went out; then the connection is closed. So
/// half-sent requests and idle sockets (slowloris) cannot pile up until the process runs
/// out of file descriptors. `report` is told of an accept that failed for a reason of
/// this host's (out of descriptors), after which the loop waits a second.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
    report: fn(&std::io::Error),
) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    wait_after_accept_error(e, &stop, report).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // A header timeout or a client that went away: the client's business.
            if let Err(e) = ended {
                tracing::debug!("http connection ended: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, connections.wait()).await.is_err() {
        tracing::debug!("closed http connections still open {SHUTDOWN_WAIT:?} after the stop");
    }
}

/// After a failed accept: a connection that failed before we took it is nothing, but
/// running out of descriptors would spin, so wait a second (as `axum::serve` does).
async fn wait_after_accept_error(e: std::io::Error, stop: &CancellationToken, report: fn(&std::io::Error)) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    report(&e);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
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
        let server = tokio::spawn(serve(listener, app, Duration::from_millis(300), stop.clone(), |_| {}));
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
