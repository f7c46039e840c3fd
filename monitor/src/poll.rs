//! Polling: every worker's `/status` at once, each bounded by the timeout, once per
//! interval. A worker that does not answer is down, one that answers something else is
//! an error; neither holds up the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::Client;
use shared::status::{ShardCounts, WorkerStatus};
use tokio::sync::{Notify, mpsc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::targets::{Records, Refresh, Target};
use shared::status::{Database, DbState};

/// A `/status` answer is a few KiB; anything far larger is not a worker talking.
const MAX_BODY: usize = 1 << 20;
/// With a database, the shards' counts are read every round: they are the kept counts
/// (a few rows), and the only figures that include videos other workers finished for a
/// shard (`--steal`), which its own worker learns at its next resync. A read slower
/// than this means a scan of the table (no counts kept for the layout) ...
const DB_COUNTS_CHEAP: Duration = Duration::from_millis(50);
/// ... and the next one waits this long.
const DB_COUNTS_EVERY: Duration = Duration::from_secs(10);

/// What one worker said.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Up(Box<WorkerStatus>),
    /// No answer: refused, timed out, reset. Says why.
    Down(String),
    /// An answer, but not a worker's `/status`. Says what was wrong.
    Error(String),
}

/// One poll of the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Unix milliseconds when the poll began.
    pub at_ms: i64,
    /// One answer per target, in slot order.
    pub answers: Vec<Answer>,
    /// With --db: the supervisor's records as of this round.
    pub records: Option<Refresh>,
    /// With --db, when some worker did not answer: every shard's counts from the table.
    pub db_shards: Option<Vec<ShardCounts>>,
    /// With --db, the database as the monitor found it this round.
    pub database: Option<Database>,
}

/// Polls the fleet. One HTTP client for every request, so connections are kept alive
/// between rounds instead of opened 16 times a second.
pub struct Poller {
    client: Client,
    targets: Vec<Target>,
    records: Option<Records>,
    /// When the counts may be read next; None: at once.
    next_db_counts: Option<Instant>,
}

/// The client every request of the monitor goes through.
pub fn client(timeout: Duration) -> reqwest::Result<Client> {
    // reqwest has no TLS crypto of its own in this workspace: see shared::tls.
    shared::tls::install_crypto_provider();
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // Workers are reached directly: a proxy from the environment must not see the
        // fleet's traffic or its control token.
        .no_proxy()
        .pool_max_idle_per_host(1)
        .user_agent(concat!("shardfleet-monitor/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Poller {
    pub fn new(client: Client, targets: Vec<Target>, records: Option<Records>) -> Poller {
        Poller { client, targets, records, next_db_counts: None }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Asks every worker once, all at the same time.
    pub async fn round(&mut self) -> Round {
        let at_ms = shared::storage::now_ms();
        let mut records = None;
        let mut database = None;
        if let Some(r) = self.records.as_mut() {
            // A database that is busy or gone for a moment costs this round's records,
            // not the poll: the workers are still asked.
            match r.refresh().await {
                Ok(refresh) => {
                    if let Some(run) = &refresh.new_run {
                        self.targets = run.targets.clone();
                    }
                    records = Some(refresh);
                    database = Some(Database::default());
                }
                Err(e) => {
                    let state = e.outage().unwrap_or(DbState::Unreachable);
                    database = Some(Database { state, since: Some(at_ms), last_error: Some(e.to_string()) });
                }
            }
        }
        let answers = join_all(self.targets.iter().map(|t| ask(&self.client, t))).await;
        let db_shards =
            if database.as_ref().is_some_and(|d| d.state == DbState::Ok) { self.db_counts().await } else { None };
        Round { at_ms, answers, records, db_shards, database }
    }

    async fn db_counts(&mut self) -> Option<Vec<ShardCounts>> {
        let records = self.records.as_ref()?;
        if self.next_db_counts.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let started = Instant::now();
        let counts = records.shard_counts().await.ok();
        let took = started.elapsed();
        self.next_db_counts = (took > DB_COUNTS_CHEAP).then(|| Instant::now() + DB_COUNTS_EVERY);
        counts
    }

    /// Polls every `interval` (and at once when `poll_now` is notified) until cancelled,
    /// sending each round to `rounds`.
    pub async fn run(
        mut self,
        interval: Duration,
        rounds: mpsc::Sender<Round>,
        poll_now: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        // After a slow round, wait a whole interval rather than firing a burst.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                _ = poll_now.notified() => {}
            }
            let round = tokio::select! {
                _ = cancel.cancelled() => return,
                round = self.round() => round,
            };
            if rounds.send(round).await.is_err() {
                return;
            }
        }
    }
}

/// GET `/status` of one worker. Never fails: every outcome is an answer.
pub async fn ask(client: &Client, target: &Target) -> Answer {
    let response = match client.get(target.url("/status")).send().await {
        Ok(r) => r,
        Err(e) => return Answer::Down(describe(&e)),
    };
    let code = response.status();
    if !code.is_success() {
        return Answer::Error(format!("unexpected answer: HTTP {code}"));
    }
    let body = match read_capped(response).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Answer::Error(format!("unexpected answer: a body over {} KiB", MAX_BODY / 1024));
        }
        Err(BodyError::Transport(e)) => return Answer::Down(describe(&e)),
    };
    let status: WorkerStatus = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return Answer::Error(format!("unexpected answer: not a worker's /status ({e})")),
    };
    match target.expect {
        Some((id, n)) if (status.worker_id, status.workers) != (id, n) => Answer::Error(format!(
            "unexpected answer: this is worker {} of {}, not worker {id} of {n}",
            status.worker_id, status.workers
        )),
        _ => Answer::Up(Box::new(status)),
    }
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(4096).min(MAX_BODY as u64) as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a request got no answer, in a few words: the innermost cause says it best
/// ("Connection refused"), reqwest's own message only names the URL.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    let lower = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "no answer".to_string(),
    };
    if e.is_connect() && !lower.contains("connect") { format!("cannot connect: {lower}") } else { lower }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::status;
    use std::time::Instant as StdInstant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-route HTTP server on 127.0.0.1 that answers every request with `code` and
    /// `body` after `delay`.
    async fn serve(code: u16, body: String, delay: Duration) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let head = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                });
            }
        });
        target(port, None)
    }

    fn target(port: u16, expect: Option<(u32, u32)>) -> Target {
        Target { slot: 0, base: format!("http://127.0.0.1:{port}").parse().unwrap(), expect, token: None }
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_worker_that_does_not_answer_shows_as_down() {
        let c = client(Duration::from_secs(1)).unwrap();
        match ask(&c, &target(closed_port(), None)).await {
            Answer::Down(why) => assert!(why.contains("refused"), "{why}"),
            other => panic!("expected down, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_status_answer_is_read_into_the_shared_type() {
        let s = status(1, 2);
        let t = serve(200, serde_json::to_string(&s).unwrap(), Duration::ZERO).await;
        let c = client(Duration::from_secs(1)).unwrap();
        assert_eq!(ask(&c, &t).await, Answer::Up(Box::new(s)));
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_worker_status_is_an_error_row() {
        let c = client(Duration::from_secs(1)).unwrap();
        let t = serve(200, r#"{"hello":"world"}"#.into(), Duration::ZERO).await;
        match ask(&c, &t).await {
            Answer::Error(why) => assert!(why.contains("not a worker's /status"), "{why}"),
            other => panic!("expected an error row, got {other:?}"),
        }
        let t = serve(404, "{}".into(), Duration::ZERO).await;
        assert_eq!(ask(&c, &t).await, Answer::Error("unexpected answer: HTTP 404 Not Found".into()));
    }

    #[tokio::test]
    async fn a_worker_with_another_id_than_its_port_promises_is_an_error_row() {
        let t = serve(200, serde_json::to_string(&status(1, 3)).unwrap(), Duration::ZERO).await;
        let t = Target { expect: Some((0, 2)), ..t };
        let c = client(Duration::from_secs(1)).unwrap();
        assert_eq!(
            ask(&c, &t).await,
            Answer::Error("unexpected answer: this is worker 1 of 3, not worker 0 of 2".into())
        );
    }

    #[tokio::test]
    async fn a_hanging_worker_is_down_after_the_timeout_and_does_not_hold_up_the_others() {
        let hanging = serve(200, "{}".into(), Duration::from_secs(30)).await;
        let good = serve(200, serde_json::to_string(&status(1, 2)).unwrap(), Duration::ZERO).await;
        let targets = vec![Target { slot: 0, ..hanging }, Target { slot: 1, ..good }, target(closed_port(), None)];
        let mut poller = Poller::new(client(Duration::from_millis(300)).unwrap(), targets, None);
        let start = StdInstant::now();
        let round = poller.round().await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "the round took {took:?}");
        assert_eq!(round.answers[0], Answer::Down("no answer in time".into()));
        assert!(matches!(round.answers[1], Answer::Up(_)));
        assert!(matches!(round.answers[2], Answer::Down(_)));
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_without_reading_it_all() {
        let t = serve(200, "x".repeat(MAX_BODY + 1), Duration::ZERO).await;
        let c = client(Duration::from_secs(2)).unwrap();
        match ask(&c, &t).await {
            Answer::Error(why) => assert!(why.contains("over 1024 KiB"), "{why}"),
            other => panic!("expected an error row, got {other:?}"),
        }
    }
}
