//! How the binaries log: readable text by default, or with `--log-format json`
//! (`FLEET_LOG_FORMAT=json`) one JSON object per line, for journald and Kubernetes log
//! pipelines. Both the worker and the supervisor set up their logs here, so the two
//! formats cannot drift between them.
//!
//! A JSON line holds `timestamp`, `level`, `message`, `target`, the event's own fields
//! (`video_id` where there is one) and, for a worker, `worker_id` on every line.

use clap::ValueEnum;
use serde_json::json;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// What each log line is.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable text, one event per line.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The binaries' default log filter: info, with the database driver's own chatter (every
/// statement at debug, any slower than a second at warn) kept to its warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// The environment variable that stands for `--log-format`.
pub const LOG_FORMAT_ENV: &str = "FLEET_LOG_FORMAT";

/// How a binary wants its lines, beyond the format.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    /// Colours, for a terminal (text only).
    pub ansi: bool,
    /// Leave the time out of text lines (someone who collects them adds their own); JSON
    /// lines always carry it.
    pub without_time: bool,
    /// Name the module an event comes from.
    pub target: bool,
    /// Put `worker_id` on every JSON line.
    pub worker_id: Option<u32>,
}

/// Installs the global subscriber: events at or above `RUST_LOG` (default
/// `DEFAULT_LOG_FILTER`) go to `writer` in `format`.
pub fn init<W>(format: LogFormat, options: LogOptions, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(options.target);
    match format {
        LogFormat::Text => {
            let builder = builder.with_ansi(options.ansi);
            if options.without_time {
                builder.without_time().init();
            } else {
                builder.init();
            }
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(options.target);
            let builder = builder.json().with_ansi(false);
            match options.worker_id {
                Some(k) => {
                    builder.event_format(WithField { inner, key: "\"worker_id\"".into(), value: k.to_string() }).init()
                }
                None => builder.event_format(inner).init(),
            }
        }
    }
}

/// A line of the binary's own that does not go through tracing (a fatal error, a
/// summary), in `format`: as it is for text, as one JSON object for JSON.
pub fn plain_line(format: LogFormat, level: &str, worker_id: Option<u32>, message: &str) -> String {
    match format {
        LogFormat::Text => message.to_string(),
        LogFormat::Json => {
            let mut line = json!({
                "timestamp": crate::time_fmt::timestamp_ms(crate::storage::now_ms()),
                "level": level,
                "message": message,
            });
            if let Some(k) = worker_id {
                line["worker_id"] = k.into();
            }
            line.to_string()
        }
    }
}

/// tracing-subscriber's JSON line with a field of the process's own put first (the
/// worker id), which no event has to repeat.
struct WithField<E> {
    inner: E,
    /// The field's key, quoted: `"worker_id"`.
    key: String,
    /// Its value as JSON.
    value: String,
}

impl<S, N, E> FormatEvent<S, N> for WithField<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // An event that names its worker itself (`worker_id = K`) keeps its own field: a
        // key twice in one object is not JSON every reader accepts. (Inside a string a
        // quote is escaped, so no message can look like the field.)
        let has_own = line.contains(&format!(",{}:", self.key)) || line.contains(&format!("{{{}:", self.key));
        match line.strip_prefix('{') {
            Some(rest) if !has_own => write!(writer, "{{{}:{},{rest}", self.key, self.value),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_in_json_is_one_object_with_time_level_and_worker() {
        let line = plain_line(LogFormat::Json, "ERROR", Some(3), "worker: cannot use the database");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["worker_id"], 3);
        assert_eq!(v["message"], "worker: cannot use the database");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert_eq!(plain_line(LogFormat::Text, "ERROR", Some(3), "as it is"), "as it is");
    }
}
