//! The worker's HTTP surface: health, status and metrics for anyone on the bind
//! address; pause, resume, drain and retry only for callers with the control token.
//! `shared::http::serve` serves it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use shared::status::{DbState, Health, VideoStatus};
use shared::storage::{RequeueOutcome, Store};
use tokio_util::sync::CancellationToken;

use crate::live::Live;
use crate::memory::MemoryKills;
use crate::metrics::Metrics;

/// Requests larger than this are refused; no endpoint takes a body worth more.
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// Set once the database first answers: a worker that starts while it is away
    /// serves `/health` and `/status` meanwhile.
    pub db: Arc<OnceLock<Store>>,
    pub control_token: Option<String>,
    pub memory: Arc<MemoryKills>,
    /// The worker's own stop: `POST /drain` fires it, and the worker stops claiming,
    /// finishes what it holds and exits 0, as on SIGTERM.
    pub drain: CancellationToken,
}

/// The content type of `/metrics`: its body is OpenMetrics text (it ends in `# EOF`),
/// which Prometheus reads only when told so.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a request's body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(15);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/drain", post(drain))
        .route("/videos/{id}/retry", post(retry))
        .route("/memory-kill/{pgid}", post(memory_kill))
        .fallback(|| async {
            ApiError(StatusCode::NOT_FOUND, "no such endpoint; try /health, /status or /metrics".into())
        })
        // Refuses on Content-Length before any handler runs, whether or not it reads
        // the body; streamed bodies are cut at the same size.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        // A body that never finishes arriving would hold its connection (and, at a stop,
        // the worker) as long as the client likes.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every request by endpoint, so that a load on the worker (say, from monitors'
/// pages) shows in `shardfleet_http_requests_total`.
async fn count_request(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    s.metrics.http_request(&endpoint);
    next.run(req).await
}

/// An error answer: a status and one sentence, as JSON. Internal causes are logged,
/// not shown.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// How long the runner's loop may go without turning before `/health` fails: as long as
/// systemd's watchdog allows (`WatchdogSec=30s`). A database that is away does not stop
/// the loop (it waits the outage out), so it does not fail `/health`; a statement that
/// hangs does.
const LOOP_SILENCE: Duration = Duration::from_secs(30);

async fn health(State(s): State<AppState>) -> Response {
    let database = s.live.database();
    let error = if let Some(d) = s.live.since_turn().filter(|d| *d > LOOP_SILENCE) {
        Some(format!("the worker's loop has not turned for {}s", d.as_secs()))
    } else if s.db.get().is_none() && database.state == DbState::Ok {
        // Ready means the database answered too; a start that waits out an outage is
        // healthy meanwhile, as a running worker is.
        Some("starting: opening the database".to_string())
    } else {
        None
    };
    let health = Health {
        ok: error.is_none(),
        worker_id: s.live.id.worker_id,
        pid: std::process::id(),
        state: s.live.state(),
        error,
        database,
    };
    let code = if health.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(health)).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.live.snapshot()).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let snap = s.live.snapshot();
    let body = s.metrics.render(snap.shard, snap.rss_bytes, snap.pacing);
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
}

/// Lets a request through only with `Authorization: Bearer <the configured token>`.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = s.control_token.as_deref() else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "control endpoints are disabled: start the worker with a control token (--control-token-fd, --control-token or FLEET_CONTROL_TOKEN)".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn pause(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    s.live.set_paused(true);
    tracing::info!("paused: no new claims until /resume");
    Ok(Json(json!({ "state": "paused" })).into_response())
}

async fn resume(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    s.live.set_paused(false);
    tracing::info!("resumed");
    Ok(Json(json!({ "state": s.live.snapshot().state })).into_response())
}

/// Stops the worker as SIGTERM does: no new claims, jobs in flight finish (within the
/// grace), then it exits 0.
async fn drain(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    tracing::info!("draining on request: no new claims; exiting once the jobs in flight end");
    s.drain.cancel();
    Ok(Json(json!({ "state": "draining" })).into_response())
}

/// The supervisor (in sampling mode) announces it is about to kill a handler's process
/// group for memory; the body is the reason, kept as that attempt's error.
async fn memory_kill(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pgid): Path<u32>,
    body: String,
) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let reason =
        if body.trim().is_empty() { "killed by the memory limit".to_string() } else { body.trim().to_string() };
    s.memory.mark(pgid, reason);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn retry(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let id: i64 =
        id.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("video id {id:?} is not an integer")))?;
    let k = s.live.id.worker_id;
    match shared::ids::shard_of(id, s.live.id.workers) {
        Some(shard) if shard == k => {}
        Some(shard) => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("video {id} belongs to worker {shard}, not worker {k}"),
            ));
        }
        None => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("video {id} belongs to no worker: a negative id is in no shard"),
            ));
        }
    }
    // A request that comes as the worker starts waits for its database a moment, as it
    // did when the server started only after the database answered.
    let opening = tokio::time::Instant::now() + Duration::from_secs(5);
    let db = loop {
        match s.db.get() {
            Some(db) => break db,
            None if tokio::time::Instant::now() < opening => tokio::time::sleep(Duration::from_millis(20)).await,
            None => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the worker has not reached its database yet".into(),
                ));
            }
        }
    };
    let outcome = db.requeue_video(id).await.map_err(|e| {
        tracing::error!("retry of video {id} failed: {e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the database refused the change; see the worker's log".into())
    })?;
    match outcome {
        RequeueOutcome::Requeued => {
            s.live.shift(VideoStatus::Failed, VideoStatus::Pending, 1);
            s.live.wake.notify_one();
            Ok(Json(json!({ "video_id": id, "status": "pending" })).into_response())
        }
        RequeueOutcome::Missing => Err(ApiError(StatusCode::NOT_FOUND, format!("there is no video {id}"))),
        RequeueOutcome::NotFailed(status) => {
            Err(ApiError(StatusCode::CONFLICT, format!("video {id} is {status}; only failed videos can be retried")))
        }
    }
}
