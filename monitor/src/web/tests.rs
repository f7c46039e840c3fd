//! The web app in-process: the HTML and headers it answers with for a fleet whose
//! sources and errors are hostile, and the requests it refuses. No network: requests go
//! through `app` with `oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use shared::status::{InFlight, Outcome, RecentError, ShardCounts, WorkerState};
use tokio::sync::{Notify, OnceCell, watch};
use tower::ServiceExt;

use super::feed::{self, Snapshot};
use super::routes::{Settings, WebState, app};
use super::security::CSP;
use super::state::Hosts;
use crate::aggregate::Fleet;
use crate::aggregate::tests::status;
use crate::poll::{Answer, Round};
use crate::targets::Target;

const HOSTILE_ERROR: &str = "<img src=x onerror=alert(1)>\"><script>alert(2)</script>";

fn targets(n: u32, token: Option<&str>) -> Vec<Target> {
    (0..n)
        .map(|k| Target {
            slot: k,
            base: format!("http://127.0.0.1:{}", 3001 + k).parse().unwrap(),
            expect: Some((k, n)),
            token: token.map(str::to_string),
        })
        .collect()
}

/// Two workers: 0 up with a hostile recent error and a video of shard 1 in flight, 1 down.
fn fleet(token: Option<&str>) -> Fleet {
    let mut f = Fleet::new(targets(2, token));
    let up = |at: i64| {
        let mut s = status(0, 2);
        s.shard = ShardCounts { pending: 3, running: 1, done: 7, failed: 2 };
        s.in_flight = vec![InFlight { video_id: 5, attempt: 1, started_at: at - 1500 }];
        s.rss_bytes = 240 << 20;
        s.recent_errors = vec![RecentError {
            video_id: 4,
            attempt: 3,
            at: at - 100,
            outcome: Outcome::Error,
            error: format!("{HOSTILE_ERROR} {}", "x".repeat(500)),
        }];
        Answer::Up(Box::new(s))
    };
    for at in [1_000, 2_000] {
        f.apply(Round {
            at_ms: at,
            answers: vec![up(at), Answer::Down("cannot connect: refused".into())],
            ..Round::default()
        });
    }
    f
}

#[derive(Default)]
struct Setup {
    read_only: bool,
    prefix: &'static str,
    with_db: bool,
    flag_token: Option<&'static str>,
}

fn state(setup: Setup, snapshot: Snapshot) -> WebState {
    let settings = Settings {
        prefix: setup.prefix.into(),
        hosts: Hosts::new("127.0.0.1:8080".parse().unwrap(), &["mon.example".into()]),
        read_only: setup.read_only,
        refresh: Duration::from_secs(1),
        db: setup.with_db.then(|| "/nonexistent/fleet.db".parse().unwrap()),
    };
    let (_tx, feed) = watch::channel(Arc::new(snapshot));
    WebState {
        settings: Arc::new(settings),
        feed,
        client: crate::poll::client(Duration::from_millis(200)).unwrap(),
        flag_token: setup.flag_token.map(Arc::from),
        poll_now: Arc::new(Notify::new()),
        store: Arc::new(OnceCell::new()),
        reader: None,
    }
}

fn snapshot(token: Option<&str>) -> Snapshot {
    let f = fleet(token);
    let mut s = Snapshot::initial(f.clone());
    s.report = f.report();
    s.recent_errors = f.recent_errors().into_iter().map(|(k, e)| (k, e.clone())).collect();
    let mut throughput = feed::Throughput::default();
    throughput.add(0, 5, 1);
    throughput.add(60_000, 9, 0);
    s.throughput = throughput;
    s
}

async fn send(state: WebState, req: Request<Body>) -> (Response, String) {
    let response = app(state).oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 22).await.unwrap();
    (Response::from_parts(parts, Body::empty()), String::from_utf8_lossy(&bytes).into_owned())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).header(header::HOST, "127.0.0.1:8080").body(Body::empty()).unwrap()
}

fn post(path: &str) -> Request<Body> {
    Request::post(path).header(header::HOST, "127.0.0.1:8080").body(Body::empty()).unwrap()
}

fn header_of(r: &Response, name: header::HeaderName) -> &str {
    r.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_page_shows_hostile_errors_as_escaped_text_cut_short() {
    let (r, html) = send(state(Setup::default(), snapshot(None)), get("/")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!html.contains("<img src=x"), "an error became markup:\n{html}");
    assert!(!html.contains("<script>alert"), "an error became a script:\n{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains(&"x".repeat(300)), "a 500-character error is cut");
    assert!(html.contains('…'));
    assert!(!html.contains("style="), "the CSP forbids inline style");
    assert_eq!(html.matches("<script").count(), 1, "one script, the page's own");
    assert!(html.contains(r#"<script src="/assets/app.js" defer></script>"#));
}

#[tokio::test]
async fn the_page_carries_the_totals_rows_and_banners_tests_rely_on() {
    let (_, html) = send(state(Setup::default(), snapshot(None)), get("/")).await;
    for (id, n) in [("total-pending", 3), ("total-running", 1), ("total-done", 7), ("total-failed", 2)] {
        assert!(html.contains(&format!(r#"data-testid="{id}">{n}</span>"#)), "{id} is not {n}:\n{html}");
    }
    assert_eq!(html.matches(r#"data-testid="worker-row""#).count(), 2);
    assert!(html.contains(r#"data-worker-id="1" data-state="down""#), "{html}");
    assert!(html.contains(r#"data-testid="workers-down""#));
    assert!(!html.contains("fleet-stale"), "worker 0 answers, so the figures are current");
    assert!(html.contains("<meter"), "RSS against the limit");
    assert!(html.contains("helping 1"), "video 5 of shard 1 is in flight on worker 0");
    assert!(html.contains("<svg") && html.contains(r#"class="done""#), "the chart");
    assert!(html.contains("need the fleet's database"), "without --db the page says why there is no retry");
}

#[tokio::test]
async fn figures_with_every_worker_down_show_the_stale_banner() {
    let mut f = fleet(None);
    f.apply(Round { at_ms: 3_000, answers: vec![Answer::Down("refused".into()); 2], ..Round::default() });
    let mut snap = snapshot(None);
    snap.report = f.report();
    snap.fleet = f;
    let (_, html) = send(state(Setup::default(), snap), get("/fragment")).await;
    assert!(html.starts_with(r#"<div id="live""#), "the fragment is the live part alone: {html}");
    assert!(html.contains(r#"data-testid="fleet-stale""#), "{html}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_live_ones_are_not_cached() {
    for path in ["/", "/fragment", "/api/fleet", "/nowhere"] {
        let (r, _) = send(state(Setup::default(), snapshot(None)), get(path)).await;
        assert_eq!(header_of(&r, header::CONTENT_SECURITY_POLICY), CSP, "{path}");
        assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert_eq!(header_of(&r, header::REFERRER_POLICY), "no-referrer", "{path}");
        assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-store", "{path}");
        assert!(r.headers().keys().all(|k| !k.as_str().starts_with("access-control-")), "no CORS on {path}");
    }
    let (r, css) = send(state(Setup::default(), snapshot(None)), get("/assets/app.css")).await;
    assert_eq!(header_of(&r, header::CONTENT_TYPE), "text/css; charset=utf-8");
    assert!(css.contains("prefers-color-scheme: dark"));
    let (r, _) = send(state(Setup::default(), snapshot(None)), get("/favicon.ico")).await;
    assert_eq!((r.status(), header_of(&r, header::CONTENT_TYPE)), (StatusCode::OK, "image/x-icon"));
}

#[tokio::test]
async fn api_fleet_is_the_json_report_without_any_token() {
    let (r, body) = send(state(Setup::default(), snapshot(Some("run-s3cret"))), get("/api/fleet")).await;
    assert_eq!(header_of(&r, header::CONTENT_TYPE), "application/json");
    let report: crate::Report = serde_json::from_str(&body).unwrap();
    assert_eq!(report, snapshot(None).report);
    assert!(!body.contains("run-s3cret"));
    let (_, html) = send(state(Setup::default(), snapshot(Some("run-s3cret"))), get("/")).await;
    assert!(!html.contains("run-s3cret"), "the token is never in the page");
}

#[tokio::test]
async fn a_foreign_host_is_refused_except_on_healthz() {
    let evil = |path: &str| Request::get(path).header(header::HOST, "evil.example:8080").body(Body::empty()).unwrap();
    let (r, body) = send(state(Setup::default(), snapshot(None)), evil("/")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(body.contains("--allow-host"), "{body}");
    let (r, _) = send(state(Setup::default(), snapshot(None)), evil("/api/fleet")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (r, body) = send(state(Setup::default(), snapshot(None)), evil("/healthz")).await;
    assert_eq!((r.status(), body.as_str()), (StatusCode::OK, "ok\n"), "probes use any name; no fleet data");
    let allowed = Request::get("/").header(header::HOST, "mon.example").body(Body::empty()).unwrap();
    assert_eq!(send(state(Setup::default(), snapshot(None)), allowed).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_cross_origin_post_is_refused_before_the_token_is_looked_at() {
    let s = || state(Setup { flag_token: Some("tok"), ..Setup::default() }, snapshot(None));
    let cross = Request::post("/api/workers/0/pause")
        .header(header::HOST, "127.0.0.1:8080")
        .header("sec-fetch-site", "cross-site")
        .header(header::AUTHORIZATION, "Bearer tok")
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(s(), cross).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(body.contains("cross-origin"), "{body}");
    let other_origin = Request::post("/api/workers/0/pause")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::AUTHORIZATION, "Bearer tok")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(s(), other_origin).await.0.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_known_token_controls_answer_403_saying_how_to_give_one() {
    let (r, body) = send(state(Setup::default(), snapshot(None)), post("/api/workers/0/pause")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(body.contains("--control-token"), "{body}");
    let s = state(Setup { flag_token: Some("tok"), ..Setup::default() }, snapshot(None));
    let wrong = Request::post("/api/workers/0/drain")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(s, wrong).await.0.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn read_only_has_no_controls_and_no_db_has_no_retry() {
    let ro =
        || state(Setup { read_only: true, with_db: true, flag_token: Some("tok"), ..Setup::default() }, snapshot(None));
    for path in [
        "/api/workers/0/pause",
        "/api/workers/0/resume",
        "/api/workers/0/drain",
        "/api/videos/4/retry",
        "/api/videos/retry-failed",
    ] {
        assert_eq!(send(ro(), post(path)).await.0.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let (_, html) = send(ro(), get("/")).await;
    assert!(!html.contains("data-action="), "no control is drawn");
    assert!(!html.contains("token-form"));
    let no_db = || state(Setup { flag_token: Some("tok"), ..Setup::default() }, snapshot(None));
    for path in ["/api/videos/4/retry", "/api/videos/retry-failed"] {
        assert_eq!(send(no_db(), post(path)).await.0.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_prefix_moves_every_route_and_link_below_it() {
    let s = || state(Setup { prefix: "/fleet", ..Setup::default() }, snapshot(None));
    let (r, html) = send(s(), get("/fleet/")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(html.contains(r#"href="/fleet/assets/app.css""#) && html.contains(r#"data-base="/fleet""#));
    assert_eq!(send(s(), get("/")).await.0.status(), StatusCode::NOT_FOUND);
    assert_eq!(send(s(), get("/fleet")).await.0.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(send(s(), get("/fleet/api/fleet")).await.0.status(), StatusCode::OK);
    assert_eq!(send(s(), get("/fleet/healthz")).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_balanced_steal_idle_fleet_shows_no_helping() {
    let mut f = Fleet::new(targets(2, None));
    let idle = |k: u32| {
        let mut s = status(k, 2);
        s.state = WorkerState::Idle;
        s.helping = vec![1 - k];
        s.took_from = [(1 - k, 3)].into_iter().collect();
        Answer::Up(Box::new(s))
    };
    for at in [1_000, 2_000] {
        f.apply(Round { at_ms: at, answers: vec![idle(0), idle(1)], ..Round::default() });
    }
    let mut snap = Snapshot::initial(f.clone());
    snap.report = f.report();
    let (_, html) = send(state(Setup::default(), snap), get("/")).await;
    assert!(!html.contains(">helping "), "nobody takes anything now:\n{html}");
    assert!(html.contains("took 3 of 1"), "what was taken stays shown");
}

#[tokio::test]
async fn with_db_a_worker_the_supervisor_gave_up_on_reads_errored_and_failed_attempts_offer_a_retry() {
    let slot = shared::storage::FleetWorker {
        run_id: 1,
        worker_id: 1,
        pid: None,
        port: 3002,
        state: shared::storage::SlotStatus::Errored,
        started_at: None,
        restarts: 5,
        last_reason: Some("exit code 1 <b>boom</b>".into()),
        last_restart_at: None,
        rss_bytes: None,
        memory_kills: 0,
        updated_at: None,
    };
    let f = fleet(None).with_records(&[slot], None);
    let mut snap = snapshot(None);
    snap.report = f.report();
    snap.fleet = f;
    let (_, html) = send(state(Setup { with_db: true, ..Setup::default() }, snap), get("/")).await;
    assert!(html.contains(r#"data-worker-id="1" data-state="errored""#), "{html}");
    assert!(html.contains("exit code 1 &lt;b&gt;boom&lt;/b&gt;"), "the last restart reason, escaped");
    assert!(html.contains(r#"data-action="retry" data-video-id="4""#), "retry of the failed attempt's video");
    assert!(html.contains(r#"data-action="retry-failed""#));
    assert!(!html.contains("need the fleet's database"));
}

/// A fresh SQLite fleet database with videos 1..=120, whose sources start with hostile
/// markup; every even one failed with a hostile error. The state reads and writes it.
async fn with_failed_videos(dir: &std::path::Path, setup: Setup) -> (WebState, shared::storage::Store) {
    use shared::storage::{Store, testing};
    let path = dir.join("fleet.db");
    let db = Store::open(path.clone(), 2).await.unwrap();
    testing::seed_numbered(&db, 1..=120, ("<img src=x onerror=alert(1)>/", ".mp4"), false).await.unwrap();
    for id in (2..=120).step_by(2) {
        testing::mark_failed(&db, id, 3, HOSTILE_ERROR).await.unwrap();
    }
    let mut state = state(setup, snapshot(Some("page-token-1234")));
    state.settings = Arc::new(Settings { db: Some(path.into()), ..(*state.settings).clone() });
    state.reader = Some(db.clone());
    (state, db)
}

#[tokio::test]
async fn with_db_the_failed_list_pages_by_id_and_shows_hostile_text_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _db) = with_failed_videos(dir.path(), Setup::default()).await;
    let (r, html) = send(state.clone(), get("/failed")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(html.matches(r#"data-testid="failed-row""#).count(), 50);
    assert!(html.contains(r#"data-testid="failed-row" data-video-id="2""#));
    assert!(html.contains(r#"href="/videos/2""#), "each row links to its history by id");
    assert!(html.contains(r#"href="/failed?after=100""#), "the next page starts after the last id: {html}");
    assert!(!html.contains("rel=\"prev\""), "the first page has no previous one");
    assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "hostile text became markup");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!html.contains("style="), "the CSP forbids inline style");
    assert!(html.contains(r#"data-action="retry-failed""#));

    let (_, html) = send(state.clone(), get("/failed?after=100")).await;
    assert_eq!(html.matches(r#"data-testid="failed-row""#).count(), 10);
    assert!(html.contains(r#"href="/failed?before=102""#) && !html.contains("rel=\"next\""), "{html}");

    // The search travels percent-encoded in the paging links, never as markup.
    let (_, html) = send(state.clone(), get("/failed?q=%2F11")).await;
    let rows: Vec<&str> =
        html.split(r#"data-testid="failed-row" data-video-id=""#).skip(1).filter_map(|s| s.split('"').next()).collect();
    assert_eq!(rows, ["110", "112", "114", "116", "118"]);
    let (_, html) = send(state.clone(), get("/failed?q=42")).await;
    assert!(html.contains(r#"data-video-id="42""#) && html.contains(r#"value="42""#));
    let (r, _) = send(state, get("/failed?after=abc")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a cursor is an id");
}

#[tokio::test]
async fn with_db_a_video_history_lists_its_attempts_and_unknown_or_odd_ids_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let (state, db) = with_failed_videos(dir.path(), Setup::default()).await;
    shared::storage::testing::execute(
        &db,
        "INSERT INTO attempts (video_id, attempt, worker, started_at, finished_at, duration_ms, outcome, error) \
         VALUES (4, 1, '<b>w0</b>', 1000, 2500, 1500, 'timeout', '<script>alert(3)</script>')",
    )
    .await
    .unwrap();
    let (r, html) = send(state.clone(), get("/videos/4")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(html.matches(r#"data-testid="attempt-row""#).count(), 1);
    assert!(html.contains("&lt;b&gt;w0&lt;/b&gt;") && html.contains("&lt;script&gt;alert(3)"), "{html}");
    assert!(!html.contains("<script>alert"));
    assert!(html.contains(r#"data-action="retry" data-video-id="4""#), "a failed video offers a retry");
    for path in ["/videos/9999", "/videos/abc", "/videos/1%20OR%201"] {
        let (r, _) = send(state.clone(), get(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_read_the_database_does_not_answer_is_503_and_a_search_says_it_did_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (state, db) = with_failed_videos(dir.path(), Setup::default()).await;
    // A closed handle fails every read at once, as one that waited too long would.
    db.close().await;
    let (r, body) = send(state.clone(), get("/failed?q=mp4")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("the search did not finish"), "{body}");
    for path in ["/failed", "/videos/2"] {
        let (r, body) = send(state.clone(), get(path)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(body.contains("did not answer the read") && !body.contains("change"), "{path}: {body}");
    }
}

#[tokio::test]
async fn without_db_the_failed_list_and_history_are_404_and_say_why() {
    for path in ["/failed", "/videos/1"] {
        let (r, body) = send(state(Setup::default(), snapshot(None)), get(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("start the monitor with --db"), "{body}");
    }
}

#[tokio::test]
async fn resuming_a_drained_worker_asks_its_supervisor_through_the_database() {
    use shared::storage::{FleetRun, SlotStatus};
    let dir = tempfile::tempdir().unwrap();
    let (state, db) = with_failed_videos(dir.path(), Setup::default()).await;
    let run = FleetRun { started_at: 0, ..FleetRun::example(2, 1) };
    let run_id = db.insert_run(&run).await.unwrap();
    let mut slot = db.run_workers(run_id).await.unwrap().remove(1);
    slot.state = SlotStatus::Drained;
    db.update_worker(&slot).await.unwrap();
    let req = Request::post("/api/workers/1/resume")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::AUTHORIZATION, "Bearer page-token-1234")
        .body(Body::empty())
        .unwrap();
    let (r, body) = send(state, req).await;
    assert_eq!(r.status(), StatusCode::OK, "{body}");
    assert!(body.contains("was drained"), "{body}");
    assert_eq!(db.take_resumes(run_id).await.unwrap(), [1]);
}
