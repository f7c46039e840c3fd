//! Pausing, resuming and draining a worker: `POST /pause`, `/resume` or `/drain` with
//! the fleet's bearer token. The answer becomes one line for the dashboard's status bar
//! or the web page.

use reqwest::Client;
use serde::Deserialize;

use crate::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    /// Stop claiming, finish what it holds, exit 0.
    Drain,
}

impl Command {
    fn path(self) -> &'static str {
        match self {
            Command::Pause => "/pause",
            Command::Resume => "/resume",
            Command::Drain => "/drain",
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Drain => "drain",
        }
    }
}

/// What the dashboard sends commands with.
#[derive(Debug, Clone)]
pub struct Controls {
    pub client: Client,
    /// The bearer token, if one is known; without it p and r only explain why not.
    pub token: Option<String>,
    /// Whether the token came from the run's records (not a flag), so that a new run's
    /// token replaces it.
    pub token_from_run: bool,
}

/// The token and the client to send one command with.
#[derive(Debug, Clone)]
pub struct Control {
    client: Client,
    token: String,
}

impl Control {
    pub fn new(client: Client, token: String) -> Control {
        Control { client, token }
    }

    /// Sends `command` to `target`; either way the result is a sentence to show.
    pub async fn send(&self, target: &Target, worker_id: u32, command: Command) -> Result<String, String> {
        let response = self
            .client
            .post(target.url(command.path()))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("worker {worker_id}: {} failed: {}", command.verb(), crate::poll::describe(&e)))?;
        let code = response.status();
        #[derive(Deserialize)]
        struct Body {
            state: Option<String>,
            error: Option<String>,
        }
        let body: Option<Body> = response.json().await.ok();
        if code.is_success() {
            let state = body.and_then(|b| b.state).unwrap_or_else(|| "ok".into());
            Ok(match command {
                Command::Pause => format!("worker {worker_id}: paused"),
                Command::Resume => format!("worker {worker_id}: resumed ({state})"),
                Command::Drain => format!("worker {worker_id}: draining; it exits once its jobs end"),
            })
        } else {
            let why = body.and_then(|b| b.error).unwrap_or_else(|| format!("HTTP {code}"));
            Err(format!("worker {worker_id}: {} refused: {why}", command.verb()))
        }
    }
}
