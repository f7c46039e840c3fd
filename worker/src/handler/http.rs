//! `--http URL`: POSTs each video as JSON. A 2xx answer is success with its body as the
//! result. 429, 503 and connection errors are push-back: the call is repeated within
//! the same attempt after the pacer's delay (or the server's Retry-After), a few times,
//! before the attempt counts as failed.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Job, JobResult, Pacer, STDOUT_LIMIT};

/// Calls per attempt before push-back turns into a failed attempt.
const PUSHBACK_TRIES: u32 = 5;
/// The longest one call may take, so an endpoint that accepts and never answers cannot
/// hold a video forever; `--job-timeout` bounds the whole attempt on top of this.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct HttpHandler {
    url: reqwest::Url,
    client: reqwest::Client,
    pacer: Pacer,
}

impl HttpHandler {
    pub fn new(url: &str, pacer: Pacer) -> Result<HttpHandler, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("--http {url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "--http {url:?}: only http:// URLs are supported by this build (put a local proxy in front of https endpoints)"
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(HttpHandler { url: parsed, client, pacer })
    }

    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub async fn run(&self, job: &Job, cancel: &CancellationToken) -> JobResult {
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
        for _ in 0..PUSHBACK_TRIES {
            tokio::select! {
                _ = self.pacer.acquire() => {}
                _ = cancel.cancelled() => return JobResult::Cancelled,
            }
            let sent = tokio::select! {
                r = self.client.post(self.url.clone()).json(&body).send() => r,
                _ = cancel.cancelled() => return JobResult::Cancelled,
            };
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.pacer.recovered();
                    return match read_body(resp).await {
                        Ok(text) => JobResult::success(text),
                        Err(e) => JobResult::error(e),
                    };
                }
                Ok(resp)
                    if matches!(resp.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) =>
                {
                    let retry_after =
                        resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
                    self.pacer.push_back(retry_after);
                    last = format!("HTTP {}", resp.status());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = read_body(resp).await.unwrap_or_default();
                    let tail: String = text.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
                    return JobResult::error(format!("HTTP {status}: {}", tail.trim()));
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    self.pacer.push_back(None);
                    last = format!("connection failed: {e}");
                }
                Err(e) => return JobResult::error(format!("request failed: {e}")),
            }
        }
        JobResult::error(format!("{last} (gave up after {PUSHBACK_TRIES} tries)"))
    }
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
    fn https_and_garbage_urls_are_refused_at_start() {
        assert!(HttpHandler::new("https://example.invalid/", Pacer::new(None, None)).is_err());
        assert!(HttpHandler::new("not a url", Pacer::new(None, None)).is_err());
    }
}
