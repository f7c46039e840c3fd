//! `--http URL`: POSTs each video as JSON, over http or https. A 2xx answer is success
//! with its body as the result. 429, 503 and connection errors are push-back: the pacer
//! slows down (see `pacer.rs`) and the call is repeated within the same attempt, after
//! the server's Retry-After or a backoff, a few times before the attempt counts as
//! failed. A TLS handshake that fails (a certificate that does not verify) is not
//! push-back: it fails the attempt at once, naming the certificate's problem.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use shared::backoff::Doubling;
use shared::tls::TrustedRoots;

use super::{Job, JobResult, Pacer, STDOUT_LIMIT};

/// Calls per attempt before push-back turns into a failed attempt.
pub(super) const PUSHBACK_TRIES: u32 = 8;
/// The longest one call may take, so an endpoint that accepts and never answers cannot
/// hold a video forever; `--job-timeout` bounds the whole attempt on top of this.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The wait before a pushed-back call is sent again when the server gave no
/// Retry-After; it doubles per try (250 ms, 500 ms, 1 s, 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest a call waits on a Retry-After; a server asking for more has the attempt
/// time out (`--job-timeout`) or fail after its tries, and the video retried later.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct HttpHandler {
    url: reqwest::Url,
    client: reqwest::Client,
    /// Shared with `/status` and `/metrics`, which report its pace.
    pacer: Arc<Pacer>,
}

impl HttpHandler {
    /// A handler calling `url`; with https it trusts the system's roots and the
    /// certificates in `ca_cert`.
    pub fn new(url: &str, ca_cert: Option<&Path>, pacer: Arc<Pacer>) -> Result<HttpHandler, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("--http {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("--http {url:?}: only http:// and https:// URLs are supported"));
        }
        shared::tls::install_crypto_provider();
        // Roots are loaded for an http:// URL too: a redirect may lead to https.
        let roots = TrustedRoots::load(ca_cert, parsed.scheme() == "https").map_err(|e| e.to_string())?;
        let certs = roots.all().map(|der| reqwest::Certificate::from_der(der)).collect::<Result<Vec<_>, _>>();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            // Exactly these roots, already read and checked: reqwest's own platform
            // verifier would read the system's again and refuse to start without any.
            .tls_certs_only(certs.map_err(|e| format!("cannot use a trusted certificate: {e}"))?)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(HttpHandler { url: parsed, client, pacer })
    }

    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// Calls the endpoint for `job`. `cancel` ends it wherever it is; `drain` hands the
    /// video back while no call of it is under way (waiting for the pacer or a
    /// Retry-After), and lets a call being answered finish.
    pub async fn run(&self, job: &Job, cancel: &CancellationToken, drain: &CancellationToken) -> JobResult {
        // The payload goes as JSON when it is JSON, else as a string.
        let payload =
            job.payload.as_deref().map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap_or_else(|_| json!(p)));
        let body = json!({
            "video_id": job.video_id,
            "source": job.source,
            "payload": payload,
            "attempt": job.attempt,
            "worker_id": job.worker_id,
        });
        let mut last = String::new();
        for tries in 1..=PUSHBACK_TRIES {
            let call = tokio::select! {
                c = self.pacer.acquire() => c,
                _ = cancel.cancelled() => return JobResult::Cancelled,
                _ = drain.cancelled() => return JobResult::Cancelled,
            };
            let sent = tokio::select! {
                r = self.client.post(self.url.clone()).json(&body).send() => r,
                _ = cancel.cancelled() => return JobResult::Cancelled,
            };
            let retry_after = match sent {
                Ok(resp) if resp.status().is_success() => {
                    return match read_body(resp).await {
                        Ok(text) => JobResult::success(text),
                        Err(e) => JobResult::error(e),
                    };
                }
                Ok(resp)
                    if matches!(resp.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) =>
                {
                    last = format!("HTTP {}", resp.status());
                    resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = read_body(resp).await.unwrap_or_default();
                    let tail: String = text.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
                    return JobResult::error(format!("HTTP {status}: {}", tail.trim()));
                }
                // A certificate refused now is refused on every call: not push-back.
                Err(e) if tls_failure(&e).is_some() => return JobResult::error(tls_message(&self.url, &e)),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last = format!("connection failed: {e}");
                    None
                }
                Err(e) => return JobResult::error(format!("request failed: {e}")),
            };
            self.pacer.pushed_back(call, retry_after);
            if tries == PUSHBACK_TRIES {
                break;
            }
            // This call is not sent again before the server said; without a word from
            // it, after a backoff that doubles per try. The pacer spreads the waits and
            // spaces the call from the other jobs' calls on top of this.
            let backoff = Doubling { first: FIRST_BACKOFF, max: MAX_RETRY_AFTER };
            let wait =
                self.pacer.retry_wait(retry_after.map_or_else(|| backoff.after(tries - 1), |r| r.min(MAX_RETRY_AFTER)));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return JobResult::Cancelled,
                _ = drain.cancelled() => return JobResult::Cancelled,
            }
        }
        JobResult::error(format!("{last} (gave up after {PUSHBACK_TRIES} tries)"))
    }
}

/// The TLS error behind a failed call, if the handshake is what failed. reqwest's own
/// text says only "error sending request"; the certificate's problem is further down.
fn tls_failure(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error shows the error it wraps but skips it in `source()`, and the
        // handshake's error comes wrapped in two of them.
        next = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

/// One sentence for a failed handshake: the host, and what is wrong with its
/// certificate in words a user can act on.
fn tls_message(url: &reqwest::Url, e: &reqwest::Error) -> String {
    use rustls::CertificateError as C;
    let host = url.host_str().unwrap_or_default();
    let at = |unix_secs: u64| shared::time_fmt::timestamp_ms((unix_secs as i64).saturating_mul(1000));
    let problem = match tls_failure(e) {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            C::UnknownIssuer => "its certificate is from an unknown issuer, a CA that is not trusted here \
                                (a private CA can be added with --ca-cert)"
                .to_string(),
            C::ExpiredContext { not_after, .. } => format!("its certificate expired at {}", at(not_after.as_secs())),
            C::Expired => "its certificate expired".into(),
            C::NotValidYetContext { not_before, .. } => {
                format!("its certificate is not valid yet (not before {})", at(not_before.as_secs()))
            }
            C::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
                format!("its certificate does not match the host name {host}: it is for {}", presented.join(", "))
            }
            C::NotValidForNameContext { .. } | C::NotValidForName => {
                format!("its certificate does not match the host name {host}")
            }
            other => format!("its certificate is refused: {other}"),
        },
        Some(other) => other.to_string(),
        None => e.to_string(),
    };
    format!("TLS handshake with {host} failed: {problem}")
}

async fn read_body(resp: reqwest::Response) -> Result<String, String> {
    if resp.content_length().is_some_and(|n| n > STDOUT_LIMIT as u64) {
        return Err(format!("response body is larger than {STDOUT_LIMIT} bytes"));
    }
    let bytes = resp.bytes().await.map_err(|e| format!("reading the response failed: {e}"))?;
    if bytes.len() > STDOUT_LIMIT {
        return Err(format!("response body is larger than {STDOUT_LIMIT} bytes"));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Retry-After is either seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn http_and_https_urls_are_taken_and_other_schemes_and_garbage_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = testkit::tls::TestCa::new("in-house CA").write(dir.path(), "ca.pem");
        let new = |url: &str| HttpHandler::new(url, Some(&ca), Arc::new(Pacer::new(None, None)));
        assert!(new("http://127.0.0.1:8080/analyse").is_ok());
        assert!(new("HTTPS://127.0.0.1:8443/analyse").is_ok());
        assert!(new("ftp://127.0.0.1/").unwrap_err().contains("only http:// and https:// URLs are supported"));
        assert!(new("not a url").unwrap_err().contains("is not a URL"));
    }

    #[test]
    fn an_unreadable_ca_file_is_refused_at_start() {
        let e = HttpHandler::new(
            "https://127.0.0.1/",
            Some(Path::new("/no/such/ca.pem")),
            Arc::new(Pacer::new(None, None)),
        );
        assert_eq!(e.unwrap_err(), "--ca-cert /no/such/ca.pem: the file does not exist");
    }
}
