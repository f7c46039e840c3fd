//! What every request passes before a handler sees it: the Host check (against DNS
//! rebinding), the same-origin rule for POSTs (against cross-site requests), the
//! security headers on every answer, and the control token.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::state::{ApiError, WebState};

/// No inline script or style: the page's own script and stylesheet only. A value that
/// slipped through escaping still could not run.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Refuses requests for a Host this server does not answer to, except `/healthz`, which
/// probes reach under any name and which tells nothing about the fleet.
pub async fn check_host(State(s): State<WebState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == s.settings.path("/healthz") {
        return next.run(req).await;
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !s.settings.hosts.allows(host) {
        let shown = crate::text::fit(&crate::text::one_line(host), 80);
        return (
            StatusCode::FORBIDDEN,
            format!(
                "this monitor does not answer to the host name {shown:?}; start it with --allow-host NAME to serve a name\n"
            ),
        )
            .into_response();
    }
    next.run(req).await
}

/// Refuses a POST another site's page made a browser send: `Sec-Fetch-Site` must say
/// `same-origin` when a browser sent it; else `Origin`, when present, must be this
/// host. Scripts (curl) send neither and are judged by their token alone.
pub async fn same_origin_posts(req: Request, next: Next) -> Response {
    if req.method() == Method::POST
        && let Err(why) = same_origin(req.headers())
    {
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    next.run(req).await
}

fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = get("sec-fetch-site") {
        return if site.eq_ignore_ascii_case("same-origin") {
            Ok(())
        } else {
            Err("cross-origin requests are refused: send it from this page, or from a script without Sec-Fetch-Site"
                .into())
        };
    }
    let Some(origin) = get("origin") else { return Ok(()) };
    let host = get("host").unwrap_or("");
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    if !host.is_empty() && authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("cross-origin requests are refused: the Origin is not this server".into())
    }
}

/// Adds the security headers to every answer, and `Cache-Control: no-store` to any
/// that does not set its own: live figures must never come from a cache.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Checks `Authorization: Bearer` against every token known (the flag's, each live
/// run's), each in constant time.
pub fn authorize(headers: &HeaderMap, known: &[&str]) -> Result<(), ApiError> {
    if known.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this monitor knows no control token: start it with --control-token (or FLEET_CONTROL_TOKEN), \
             or with --db of a fleet whose run has one",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Every token is compared, so the time taken does not say which one came close.
    let matched = known.iter().fold(0u8, |any, t| any | presented.as_bytes().ct_eq(t.as_bytes()).unwrap_u8());
    if !presented.is_empty() && matched == 1 {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong control token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::state::Hosts;

    #[test]
    fn the_host_check_takes_the_bound_address_localhost_and_allowed_names_with_any_port() {
        let h = Hosts::new("127.0.0.1:8080".parse().unwrap(), &["mon.example".into()]);
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "mon.example", "mon.example:443", "[::1]:8080"] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "", "mon.example.evil"] {
            assert!(!h.allows(bad), "{bad}");
        }
        let v6 = Hosts::new("[fd00::1]:8080".parse().unwrap(), &[]);
        assert!(v6.allows("[fd00::1]:8080") && v6.allows("[fd00::1]"));
    }

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_post_is_same_origin_by_sec_fetch_site_else_by_origin_else_it_is_a_script() {
        assert!(same_origin(&with(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(
            same_origin(&with(&[("sec-fetch-site", "cross-site"), ("origin", "http://h:1"), ("host", "h:1")])).is_err()
        );
        assert!(same_origin(&with(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&with(&[("origin", "http://h:1"), ("host", "h:1")])).is_ok());
        assert!(same_origin(&with(&[("origin", "http://evil:1"), ("host", "h:1")])).is_err());
        assert!(same_origin(&with(&[("origin", "null"), ("host", "h:1")])).is_err());
        assert!(same_origin(&with(&[("host", "h:1")])).is_ok());
    }

    #[test]
    fn a_token_matches_only_exactly_and_no_known_token_is_a_403_saying_how_to_give_one() {
        let bearer = |t: &str| with(&[("authorization", &format!("Bearer {t}"))]);
        assert!(authorize(&bearer("s3cret"), &["other", "s3cret"]).is_ok());
        assert_eq!(authorize(&bearer("s3cre"), &["s3cret"]).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        assert_eq!(authorize(&bearer(""), &[""]).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        assert_eq!(authorize(&HeaderMap::new(), &["s3cret"]).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        let none = authorize(&bearer("x"), &[]).unwrap_err();
        assert_eq!(none.status(), StatusCode::FORBIDDEN);
        assert!(none.message().contains("--control-token"), "{}", none.message());
    }
}
