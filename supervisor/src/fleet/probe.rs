//! The supervisor's two requests to its own workers on loopback: `GET /health` and
//! `POST /memory-kill/{pgid}`.
//!
//! Written as one plain HTTP/1.1 exchange instead of using an HTTP client crate: the
//! supervisor's resident memory (goal: 10 MiB with 8 workers) is mostly its own code
//! pages, and a full client stack (connection pools, redirects, proxies) was the largest
//! part of them that these two requests never need.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request and returns the status code of the answer.
async fn exchange(addr: SocketAddr, request: String, timeout: Duration) -> std::io::Result<u16> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        // The status line is all we read: "HTTP/1.1 200 OK".
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < 12 {
            let n = stream.read(&mut head[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        std::str::from_utf8(&head[..got])
            .ok()
            .and_then(|s| s.strip_prefix("HTTP/1.1 ").or_else(|| s.strip_prefix("HTTP/1.0 ")))
            .and_then(|s| s.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Whether the worker at `ip:port` answers `/health` with 200 within `timeout`.
pub async fn healthy(ip: IpAddr, port: u16, timeout: Duration) -> bool {
    let request = format!("GET /health HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
    exchange(SocketAddr::new(ip, port), request, timeout).await.is_ok_and(|code| code == 200)
}

/// Tells the worker at `ip:port` that its handler's process group `pgid` is about to be
/// killed for memory, with `reason` as the attempt's error.
pub async fn announce_memory_kill(
    ip: IpAddr,
    port: u16,
    token: &str,
    pgid: u32,
    reason: &str,
    timeout: Duration,
) -> std::io::Result<()> {
    let request = format!(
        "POST /memory-kill/{pgid} HTTP/1.1\r\nHost: {ip}:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
        reason.len()
    );
    match exchange(SocketAddr::new(ip, port), request, timeout).await? {
        204 | 200 => Ok(()),
        code => Err(std::io::Error::other(format!("the worker answered HTTP {code}"))),
    }
}
