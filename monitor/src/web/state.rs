//! What the server holds while it runs: its settings, the state every handler shares,
//! and the one shape of an error answer. Kept apart from the routes and the checks so
//! that both read it and neither imports the other for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Client;
use serde_json::json;
use shared::storage::{DbLocation, Store};
use tokio::sync::{Notify, OnceCell, watch};

use super::feed::Snapshot;

/// What never changes while the server runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `""` or `/fleet`: every route and link hangs below it.
    pub prefix: String,
    pub hosts: Hosts,
    /// No control routes at all.
    pub read_only: bool,
    /// How often the page's script asks for new figures: the poll interval, at least 1s.
    pub refresh: Duration,
    /// With --db: where retries are written. Without, the failed list and retries do
    /// not exist and the page says so.
    pub db: Option<DbLocation>,
}

impl Settings {
    /// `path` (starting with `/`) under the prefix.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
}

/// Everything a handler may touch. Cloned per request; every field is shared.
#[derive(Clone)]
pub struct WebState {
    pub settings: Arc<Settings>,
    /// The latest snapshot of the one poll loop.
    pub feed: watch::Receiver<Arc<Snapshot>>,
    /// Sends commands to workers; with `--read-only` no route uses it.
    pub client: Client,
    /// `--control-token`, if given.
    pub flag_token: Option<Arc<str>>,
    /// Asks the poll loop for a round now, so that a command's effect shows at once.
    pub poll_now: Arc<Notify>,
    /// The fleet database for retries, opened writable on the first retry only: a page
    /// nobody retries from never writes.
    pub store: Arc<OnceCell<Store>>,
    /// With --db: the poll loop's read-only handle, for the failed list and histories,
    /// read per request (one indexed page each), never per refresh.
    pub reader: Option<Store>,
}

impl WebState {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.feed.borrow().clone()
    }

    /// The tokens a caller may present: the flag's and every live run's.
    pub fn known_tokens<'a>(&'a self, snap: &'a Snapshot) -> Vec<&'a str> {
        let mut known: Vec<&str> = self.flag_token.as_deref().into_iter().collect();
        known.extend(snap.targets.iter().filter_map(|t| t.token.as_deref()));
        known.retain(|t| !t.is_empty());
        known.dedup();
        known
    }
}

/// An error answer: a status and one sentence, as JSON. Causes are kept out of it.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }

    pub fn status(&self) -> StatusCode {
        self.0
    }

    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The names a request's Host may carry.
#[derive(Debug, Clone)]
pub struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    /// The bound address, localhost and the loopback addresses, and `extra`
    /// (`--allow-host`, lowercased). Loopback literals are safe to answer: a rebinding
    /// attack needs a name of the attacker's, which is what the check refuses.
    pub fn new(bound: SocketAddr, extra: &[String]) -> Hosts {
        let ip = match bound {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let mut names: Vec<String> = vec![ip, "localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        names.extend(extra.iter().cloned());
        Hosts { names }
    }

    /// Whether `host` (a Host header: a name or address, maybe with a port) is served.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.rfind(':') {
            // `[::1]:8080` or `name:8080`; a bare `[::1]` has its last colon inside.
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => &host[..],
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.names.iter().any(|n| n == name)
    }
}
