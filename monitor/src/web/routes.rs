//! The web server's routes: `app` builds the router from the shared state, and each
//! handler is thin: read the latest snapshot, render or forward.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use shared::storage::{Page, RequeueOutcome, Store};

pub use super::state::{ApiError, Settings, WebState};
use super::{assets, page, security};
use crate::control::{Command, Control};

/// Requests carry no body worth more; a bigger one is refused before any handler runs.
const BODY_LIMIT: usize = 16 * 1024;

/// The whole server: page, fragment, assets, API and controls, behind the host check,
/// the same-origin rule and the security headers.
pub fn app(state: WebState) -> Router {
    let s = &state.settings;
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route(&s.path("/"), get(index))
        .route(&s.path("/fragment"), get(fragment))
        .route(&s.path("/api/fleet"), get(api_fleet))
        .route(&s.path("/failed"), get(failed))
        .route(&s.path("/videos/{id}"), get(history))
        .route(&s.path("/favicon.ico"), get(assets::favicon))
        .route(&s.path("/assets/app.css"), get(assets::css))
        .route(&s.path("/assets/app.js"), get(assets::js));
    if !s.prefix.is_empty() {
        let home = s.path("/");
        router = router
            .route(&s.path("/healthz"), get(healthz))
            // `/fleet` is the page too; its links are relative to `/fleet/`.
            .route(&s.prefix, get(move || async move { Redirect::permanent(&home) }));
    }
    if !s.read_only {
        router = router.route(&s.path("/api/workers/{id}/{command}"), post(worker_command));
        if s.db.is_some() {
            router = router
                .route(&s.path("/api/videos/retry-failed"), post(retry_failed))
                .route(&s.path("/api/videos/{id}/retry"), post(retry_video));
        }
    }
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(security::same_origin_posts))
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::check_host))
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn index(State(s): State<WebState>) -> Html<String> {
    Html(page::page(&s.snapshot(), &s.settings, shared::storage::now_ms()).into_string())
}

async fn fragment(State(s): State<WebState>) -> Html<String> {
    Html(page::live(&s.snapshot(), &s.settings, shared::storage::now_ms()).into_string())
}

/// The failed list's query: a search, and a keyset cursor (ids only).
#[derive(Debug, Default, serde::Deserialize)]
pub struct FailedQuery {
    pub q: Option<String>,
    pub after: Option<i64>,
    pub before: Option<i64>,
}

/// Failed videos per page: small, so a page is one short index read.
pub const FAILED_PER_PAGE: u32 = 50;
/// A search longer than this is cut: a source substring needs no more.
const SEARCH_CUT: usize = 200;

async fn failed(State(s): State<WebState>, Query(query): Query<FailedQuery>) -> Result<Html<String>, ApiError> {
    let reader = reader(&s)?;
    let q: Option<String> = query.q.as_deref().map(|q| q.trim().chars().take(SEARCH_CUT).collect());
    let cursor = match (query.after, query.before) {
        (Some(id), _) => Page::After(id),
        (None, Some(id)) => Page::Before(id),
        (None, None) => Page::First,
    };
    let searching = q.as_deref().is_some_and(|q| !q.is_empty());
    let page = reader.failed_page(q.as_deref(), cursor, FAILED_PER_PAGE).await.map_err(|e| read_error(e, searching))?;
    let failed = s.snapshot().report.totals.failed;
    Ok(Html(page::failed(&s.settings, q.as_deref().unwrap_or(""), &page, failed).into_string()))
}

async fn history(State(s): State<WebState>, Path(id): Path<String>) -> Result<Html<String>, ApiError> {
    let reader = reader(&s)?;
    let id: i64 = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "video ids are numbers"))?;
    match reader.video_history(id).await.map_err(|e| read_error(e, false))? {
        Some(h) => Ok(Html(page::history(&s.settings, &h, shared::storage::now_ms()).into_string())),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("there is no video {id}"))),
    }
}

/// The read-only handle, or a 404 saying why there is none.
fn reader(s: &WebState) -> Result<&Store, ApiError> {
    s.reader.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "failed videos and their history need the fleet's database: start the monitor with --db",
        )
    })
}

async fn api_fleet(State(s): State<WebState>) -> Response {
    Json(&s.snapshot().report).into_response()
}

/// `POST /api/workers/{id}/pause|resume|drain`: forwarded to the worker with its own
/// run's token.
async fn worker_command(
    State(s): State<WebState>,
    headers: HeaderMap,
    Path((id, command)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let command = match command.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "drain" => Command::Drain,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such page")),
    };
    let snap = s.snapshot();
    security::authorize(&headers, &s.known_tokens(&snap))?;
    let id: u32 = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "worker ids are numbers"))?;
    // A drained worker's process is gone: its resume goes to its supervisor, on
    // whatever host, as a request on the live run's slot (see supervisor/fleet/resume.rs).
    if command == Command::Resume && s.settings.db.is_some() {
        let asked = store(&s).await?.request_resume(id).await.map_err(|e| db_error("resume", e))?;
        if asked {
            s.poll_now.notify_one();
            let said = format!("worker {id} was drained; its supervisor starts it again within a few seconds");
            return Ok(Json(json!({ "message": said })).into_response());
        }
    }
    // The page names workers by their own id, which with --targets need not be their
    // place in the list: find the target through the report, which is in target order.
    let place = snap.report.workers.iter().position(|w| w.worker_id() == id);
    let Some(target) = place.and_then(|i| snap.targets.get(i)) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("there is no worker {id} in this fleet")));
    };
    // Each supervisor gives its run its own token; a worker knows only its run's.
    let Some(token) = target.token.clone().or_else(|| s.flag_token.as_deref().map(str::to_string)) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("no control token is known for worker {id}: start the monitor with --control-token"),
        ));
    };
    match Control::new(s.client.clone(), token).send(target, id, command).await {
        Ok(said) => {
            s.poll_now.notify_one();
            Ok(Json(json!({ "message": said })).into_response())
        }
        Err(why) => Err(ApiError::new(StatusCode::BAD_GATEWAY, why)),
    }
}

async fn retry_video(
    State(s): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    security::authorize(&headers, &s.known_tokens(&s.snapshot()))?;
    let id: i64 = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "video ids are numbers"))?;
    let outcome = store(&s).await?.requeue_video(id).await.map_err(|e| db_error("retry", e))?;
    match outcome {
        RequeueOutcome::Requeued => {
            s.poll_now.notify_one();
            Ok(Json(json!({ "video_id": id, "status": "pending", "message": format!("video {id} requeued") }))
                .into_response())
        }
        RequeueOutcome::Missing => Err(ApiError::new(StatusCode::NOT_FOUND, format!("there is no video {id}"))),
        RequeueOutcome::NotFailed(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("video {id} is {status}; only failed videos can be retried"),
        )),
    }
}

async fn retry_failed(State(s): State<WebState>, headers: HeaderMap) -> Result<Response, ApiError> {
    security::authorize(&headers, &s.known_tokens(&s.snapshot()))?;
    let n = store(&s).await?.requeue_all_failed().await.map_err(|e| db_error("retry", e))?;
    s.poll_now.notify_one();
    Ok(Json(json!({ "requeued": n, "message": format!("requeued {n} failed videos") })).into_response())
}

async fn store(s: &WebState) -> Result<&Store, ApiError> {
    let db = s.settings.db.as_ref().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such page"))?;
    s.store.get_or_try_init(|| Store::open_existing(db.clone(), 1)).await.map_err(|e| db_error("open", e))
}

/// A read that failed: logged in full, shown as one sentence. No statement limit cuts a
/// read; what ends one early is the wait for the monitor's one read-only connection
/// (30 s on SQLite, 5 s on PostgreSQL), which a long search holds.
fn read_error(e: shared::DbError, searching: bool) -> ApiError {
    eprintln!("monitor: read failed: {e}");
    let why = if searching {
        "the search did not finish: it reads the source of every failed video and the database did not answer in \
         time; try again, or search by video id"
    } else {
        "the database did not answer the read; see the monitor's log"
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// A database error: logged in full, shown as one sentence.
fn db_error(what: &str, e: shared::DbError) -> ApiError {
    eprintln!("monitor: {what} failed: {e}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database refused the change; see the monitor's log")
}
