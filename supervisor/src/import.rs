//! `supervisor import FILE`: CSV (`video_id,source[,payload]`) or JSON lines. Every line
//! is checked before anything is written; one bad line means nothing is imported.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use shared::db::NewVideo;

/// Most bad lines listed in one error.
const MAX_REPORTED: usize = 20;

/// Why a file cannot be imported: a sentence, then each bad line by number.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} has {count} bad line{s}; nothing was imported:\n{details}", s = if *count == 1 { "" } else { "s" })]
    BadLines { path: String, count: usize, details: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    JsonLines,
}

/// Reads and checks every line of `path`.
pub fn parse_file(path: &Path) -> Result<Vec<NewVideo>, ImportError> {
    let shown = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| ImportError::Unreadable { path: shown.clone(), reason: e.to_string() })?;
    let text = String::from_utf8(bytes).map_err(|e| ImportError::Unreadable {
        path: shown.clone(),
        reason: format!("it is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    if text.trim().is_empty() {
        return Err(ImportError::Empty { path: shown });
    }
    let (rows, mut errors) = match format_of(path, &text) {
        Format::Csv => parse_csv(&text),
        Format::JsonLines => parse_jsonl(&text),
    };
    // The same id twice in one file is almost always a mistake worth stopping for.
    let mut first_line: HashMap<i64, usize> = HashMap::new();
    for (line, v) in &rows {
        if let Some(prev) = first_line.insert(v.video_id, *line) {
            errors.push((*line, format!("video_id {} repeats line {prev}", v.video_id)));
        }
    }
    if errors.is_empty() {
        return Ok(rows.into_iter().map(|(_, v)| v).collect());
    }
    errors.sort_by_key(|(line, _)| *line);
    let count = errors.len();
    let mut details: Vec<String> = errors.iter().take(MAX_REPORTED).map(|(l, m)| format!("  line {l}: {m}")).collect();
    if count > MAX_REPORTED {
        details.push(format!("  ... and {} more", count - MAX_REPORTED));
    }
    Err(ImportError::BadLines { path: shown, count, details: details.join("\n") })
}

fn format_of(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
        _ if text.trim_start().starts_with('{') => Format::JsonLines,
        _ => Format::Csv,
    }
}

type Parsed = (Vec<(usize, NewVideo)>, Vec<(usize, String)>);

fn parse_csv(text: &str) -> Parsed {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|f| f.trim().to_ascii_lowercase()).collect(),
        Err(e) => return (rows, vec![(1, format!("cannot read the header: {e}"))]),
    };
    let with_payload = match header.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["video_id", "source"] => false,
        ["video_id", "source", "payload"] => true,
        _ => {
            return (
                rows,
                vec![(
                    1,
                    format!(
                        "the header is {:?}; expected video_id,source or video_id,source,payload",
                        header.join(",")
                    ),
                )],
            );
        }
    };
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                errors.push((line, format!("cannot read the row: {e}")));
                continue;
            }
        };
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let expected = if with_payload { 3 } else { 2 };
        if record.len() != expected && !(with_payload && record.len() == 2) {
            errors.push((line, format!("expected {expected} fields, found {}", record.len())));
            continue;
        }
        let payload = record.get(2).filter(|p| !p.trim().is_empty()).map(str::to_string);
        match check(record.get(0).unwrap_or(""), record.get(1).unwrap_or(""), payload) {
            Ok(v) => rows.push((line, v)),
            Err(m) => errors.push((line, m)),
        }
    }
    (rows, errors)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    video_id: serde_json::Value,
    source: serde_json::Value,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

fn parse_jsonl(text: &str) -> Parsed {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let row: JsonRow = match serde_json::from_str(raw) {
            Ok(r) => r,
            Err(e) => {
                errors.push((line, format!("not a JSON object with video_id and source: {e}")));
                continue;
            }
        };
        let id = match &row.video_id {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let Some(source) = row.source.as_str() else {
            errors.push((line, "source must be a string".into()));
            continue;
        };
        // The payload is stored as JSON text, whatever JSON value it is.
        let payload = row.payload.filter(|p| !p.is_null()).map(|p| p.to_string());
        match check(&id, source, payload) {
            Ok(v) => rows.push((line, v)),
            Err(m) => errors.push((line, m)),
        }
    }
    (rows, errors)
}

/// Checks one row's fields.
fn check(id: &str, source: &str, payload: Option<String>) -> Result<NewVideo, String> {
    let video_id: i64 = id.trim().parse().map_err(|_| format!("video_id {id:?} is not an integer"))?;
    if video_id < 0 {
        // SQLite's % keeps the sign, so a negative id would belong to no shard.
        return Err(format!("video_id {video_id} is negative"));
    }
    if source.trim().is_empty() {
        return Err("source is empty".into());
    }
    if let Some(p) = &payload
        && let Err(e) = serde_json::from_str::<serde_json::Value>(p)
    {
        return Err(format!("payload is not valid JSON: {e}"));
    }
    Ok(NewVideo { video_id, source: source.to_string(), payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Vec<NewVideo>, ImportError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        parse_file(&path)
    }

    #[test]
    fn csv_with_and_without_payload_is_read() {
        let v = parse("a.csv", "video_id,source,payload\n1,a.mp4,\"{\"\"x\"\":1}\"\n2,b.mp4,\n").unwrap();
        assert_eq!(v[0], NewVideo { video_id: 1, source: "a.mp4".into(), payload: Some("{\"x\":1}".into()) });
        assert_eq!(v[1].payload, None);
        let v = parse("b.csv", "video_id,source\n7,c.mp4\n").unwrap();
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn json_lines_keep_the_payload_as_json_text() {
        let v = parse("a.jsonl", "{\"video_id\":3,\"source\":\"x\",\"payload\":{\"lang\":\"en\"}}\n\n{\"video_id\":\"4\",\"source\":\"y\"}\n").unwrap();
        assert_eq!(v[0].payload.as_deref(), Some("{\"lang\":\"en\"}"));
        assert_eq!(v[1].video_id, 4);
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_nothing_is_returned() {
        let text = "video_id,source\n1,a\n2,b\nthree,c\n4,\n-5,e\n1,dup\n";
        let e = parse("bad.csv", text).unwrap_err().to_string();
        assert!(e.contains("has 4 bad lines; nothing was imported"), "{e}");
        assert!(e.contains("line 4: video_id \"three\" is not an integer"), "{e}");
        assert!(e.contains("line 5: source is empty"), "{e}");
        assert!(e.contains("line 6: video_id -5 is negative"), "{e}");
        assert!(e.contains("line 7: video_id 1 repeats line 2"), "{e}");
    }

    #[test]
    fn a_wrong_header_or_bad_payload_is_named() {
        let e = parse("h.csv", "id,url\n1,a\n").unwrap_err().to_string();
        assert!(e.contains("line 1: the header is \"id,url\""), "{e}");
        let e = parse("p.csv", "video_id,source,payload\n1,a,{oops\n").unwrap_err().to_string();
        assert!(e.contains("line 2: payload is not valid JSON"), "{e}");
        let e = parse("j.jsonl", "{\"video_id\":1,\"source\":\"a\",\"extra\":1}\n").unwrap_err().to_string();
        assert!(e.contains("line 1: not a JSON object"), "{e}");
        assert!(matches!(parse("e.csv", "  \n"), Err(ImportError::Empty { .. })));
    }
}
