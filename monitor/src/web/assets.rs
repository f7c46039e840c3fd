//! The page's stylesheet, script and icon, compiled into the binary: no CDN, no build
//! step, nothing to install beside the monitor.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
/// A 16x16 icon, so that browsers asking for one get it instead of a console error.
const FAVICON: &[u8] = include_bytes!("assets/favicon.ico");

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS.as_bytes())
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS.as_bytes())
}

pub async fn favicon() -> Response {
    asset("image/x-icon", FAVICON)
}

/// Answers a static asset with its type; the asset may be cached (it changes only with
/// the binary) but must be revalidated so that an upgrade shows at once.
fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
