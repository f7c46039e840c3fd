//! `supervisor import FILE`: CSV (`video_id,source[,payload]`, one row per line) or JSON
//! lines, streamed in constant memory. A reader thread checks each line while the
//! database inserts the previous batch, all inside one write transaction: one bad line
//! and nothing is committed, yet the whole file is still read so that every bad line is
//! counted and the first ones reported by number.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use shared::storage::{EXISTING_NAMED, IMPORT_BATCH, ImportReport, ImportRow, NewVideo, Store};
use shared::units::ByteSize;

use crate::Failure;
use crate::cli::ImportArgs;

/// Most bad lines listed in one error.
const MAX_REPORTED: usize = 20;

/// Longest piece of a bad value shown in an error, in characters.
const SHOWN_CHARS: usize = 40;

/// Longest message about one line (serde_json's may quote the input).
const MESSAGE_CHARS: usize = 200;

/// Batches read ahead of the database: enough to keep both cores busy, few enough to
/// keep memory flat.
const READ_AHEAD: usize = 4;
/// Most source and payload bytes in one batch.
const BATCH_BYTES: usize = 8 << 20;

/// Why a file cannot be imported: a sentence, then each bad line by number.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} has {count} bad line{s}; nothing was imported:\n{details}", s = if *count == 1 { "" } else { "s" })]
    BadLines { path: String, count: u64, details: String },
}

/// How large a row's fields may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_source: ByteSize,
    pub max_payload: ByteSize,
}

impl Limits {
    /// The longest line worth reading into memory: both fields at their limit, every
    /// byte escaped, and room for the id and the punctuation. A longer line is refused
    /// without being held.
    fn max_line(&self) -> u64 {
        self.max_source.bytes().saturating_add(self.max_payload.bytes()).saturating_mul(2).saturating_add(4096)
    }
}

/// Runs `supervisor import`: returns the line to print.
pub async fn run(args: &ImportArgs) -> Result<String, Failure> {
    let limits = Limits { max_source: args.max_source_bytes, max_payload: args.max_payload_bytes };
    // The header and the format are checked before the database is touched.
    let reader = Reader::open(&args.file, limits).map_err(Failure::usage)?;
    // A new SQLite file is removed again if the import is refused; a PostgreSQL
    // database keeps its (empty) schema.
    let created = args.db.db.path().is_some_and(|p| !p.exists());
    let db = Store::open(&args.db.db, 1).await.context("cannot use the database")?;
    let result = stream(reader, &db).await;
    db.close().await;
    let report = match result {
        Ok(report) => report,
        Err(failure) => {
            if created
                && failure.code == crate::exit::USAGE
                && let Some(path) = args.db.db.path()
            {
                remove_database(path);
            }
            return Err(failure);
        }
    };
    let mut line = format!("imported {} videos from {}", report.inserted, args.file.display());
    if report.existing > 0 {
        let named: Vec<String> = report.existing_ids.iter().map(i64::to_string).collect();
        let more = if report.existing > EXISTING_NAMED as u64 { ", ..." } else { "" };
        line.push_str(&format!(
            "; {} were already there and left as they are (video_id {}{more})",
            report.existing,
            named.join(", ")
        ));
    }
    Ok(line)
}

/// A refused import leaves no database behind where there was none.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// What the reader thread hands the database: checked lines, in file order.
struct Batch {
    rows: Vec<ImportRow>,
    bad: Vec<(u64, String)>,
    /// Bytes of the file read so far, for the progress bar.
    read_to: u64,
}

/// Reads on a thread of its own and inserts as batches arrive; commits only if every
/// line was good.
async fn stream(reader: Reader, db: &Store) -> Result<ImportReport, Failure> {
    let path = reader.shown.clone();
    let progress = progress_bar(reader.size);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(READ_AHEAD);
    let thread = std::thread::spawn(move || reader.send_all(&tx));
    let mut import = db.begin_import().await?;
    let mut problems = Problems::default();
    while let Some(mut batch) = rx.recv().await {
        if !batch.bad.is_empty() {
            import.stop_writing();
        }
        let repeats = import.add(batch.rows).await?;
        if !repeats.is_empty() {
            batch.bad.extend(
                repeats.iter().map(|r| (r.line, format!("video_id {} repeats line {}", r.video_id, r.first_line))),
            );
            batch.bad.sort_by_key(|(line, _)| *line);
        }
        for (line, message) in batch.bad {
            problems.push(line, message);
        }
        progress.set_position(batch.read_to);
    }
    progress.finish_and_clear();
    let read = thread.join().map_err(|_| anyhow::anyhow!("the import's reader thread panicked"))?;
    if let Err(e) = read {
        import.roll_back().await?;
        return Err(Failure::usage(e));
    }
    if problems.count > 0 {
        import.roll_back().await?;
        return Err(Failure::usage(problems.into_error(path)));
    }
    Ok(import.commit().await?)
}

fn progress_bar(size: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "importing {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Bad lines: all counted, the first few kept.
#[derive(Default)]
struct Problems {
    count: u64,
    first: Vec<(u64, String)>,
}

impl Problems {
    fn push(&mut self, line: u64, message: String) {
        self.count += 1;
        if self.first.len() < MAX_REPORTED {
            self.first.push((line, shorten(message, MESSAGE_CHARS)));
        }
    }

    fn into_error(self, path: String) -> ImportError {
        let mut details: Vec<String> = self.first.iter().map(|(l, m)| format!("  line {l}: {m}")).collect();
        if self.count > MAX_REPORTED as u64 {
            details.push(format!("  ... and {} more", self.count - MAX_REPORTED as u64));
        }
        ImportError::BadLines { path, count: self.count, details: details.join("\n") }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv { with_payload: bool },
    JsonLines,
}

/// What one physical line turned out to be.
enum LineRead {
    /// UTF-8 text, now in `Reader::buf` without its line ending.
    Text,
    /// Longer than any row may be; this many bytes, skipped without being kept.
    TooLong(u64),
    /// Not UTF-8: the first bad byte, counted from 1.
    NotUtf8(usize),
}

/// The file, read one line at a time through a buffer whose size is bounded by the
/// limits.
struct Reader {
    input: BufReader<File>,
    shown: String,
    size: u64,
    format: Format,
    limits: Limits,
    /// Number of the line in `buf`, counted from 1.
    line: u64,
    buf: Vec<u8>,
    read_to: u64,
    /// The first data line of a JSON-lines file, read while looking at the format.
    pending: Option<LineRead>,
}

impl Reader {
    /// Opens `path`, works out its format and, for CSV, checks the header.
    fn open(path: &Path, limits: Limits) -> Result<Reader, ImportError> {
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| ImportError::Unreadable { path: shown.clone(), reason: e.to_string() };
        let file = File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        let mut reader = Reader {
            input: BufReader::with_capacity(64 << 10, file),
            shown: shown.clone(),
            size,
            format: Format::JsonLines,
            limits,
            line: 0,
            buf: Vec::new(),
            read_to: 0,
            pending: None,
        };
        let first = loop {
            match reader.read_line().map_err(unreadable)? {
                None => return Err(ImportError::Empty { path: shown }),
                Some(LineRead::Text) if reader.text().trim().is_empty() => continue,
                Some(read) => break read,
            }
        };
        let looks_like_json = matches!(first, LineRead::Text) && reader.text().trim_start().starts_with('{');
        reader.format = match extension(path).as_deref() {
            Some("csv") => Format::Csv { with_payload: false },
            Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
            _ if looks_like_json => Format::JsonLines,
            _ => Format::Csv { with_payload: false },
        };
        match reader.format {
            Format::JsonLines => reader.pending = Some(first),
            Format::Csv { .. } => {
                let with_payload = reader.header(first).map_err(|m| {
                    let mut p = Problems::default();
                    p.push(reader.line, m);
                    p.into_error(shown.clone())
                })?;
                reader.format = Format::Csv { with_payload };
            }
        }
        Ok(reader)
    }

    /// Checks the CSV header; whether it has a payload column.
    fn header(&self, first: LineRead) -> Result<bool, String> {
        match first {
            LineRead::Text => {}
            LineRead::TooLong(n) => return Err(format!("the header is {n} bytes long")),
            LineRead::NotUtf8(at) => return Err(format!("the header is not UTF-8 text (byte {at})")),
        }
        let fields = split_csv(self.text())?;
        let names: Vec<String> = fields.iter().map(|f| f.trim().to_ascii_lowercase()).collect();
        match names.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["video_id", "source"] => Ok(false),
            ["video_id", "source", "payload"] => Ok(true),
            _ => Err(format!(
                "the header is {}; expected video_id,source or video_id,source,payload",
                shown(self.text().trim())
            )),
        }
    }

    /// Reads the next line into `buf`; None at the end of the file.
    fn read_line(&mut self) -> std::io::Result<Option<LineRead>> {
        self.buf.clear();
        let cap = self.limits.max_line();
        let n = (&mut self.input).take(cap + 1).read_until(b'\n', &mut self.buf)? as u64;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.read_to += n;
        if n > cap && self.buf.last() != Some(&b'\n') {
            let rest = self.skip_line()?;
            self.read_to += rest;
            self.buf.clear();
            return Ok(Some(LineRead::TooLong(n + rest)));
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        // A byte-order mark says "UTF-8" and nothing else; it is not part of the data.
        if self.line == 1 && self.buf.starts_with(b"\xef\xbb\xbf") {
            self.buf.drain(..3);
        }
        Ok(Some(match std::str::from_utf8(&self.buf) {
            Ok(_) => LineRead::Text,
            Err(e) => LineRead::NotUtf8(e.valid_up_to() + 1),
        }))
    }

    /// Consumes the rest of an overlong line without keeping it; its length, without
    /// the line ending.
    fn skip_line(&mut self) -> std::io::Result<u64> {
        let mut skipped = 0;
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Ok(skipped);
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.input.consume(i + 1);
                    // The newline is read, but not counted as part of the line.
                    self.read_to += 1;
                    return Ok(skipped + i as u64);
                }
                None => {
                    let n = chunk.len();
                    self.input.consume(n);
                    skipped += n as u64;
                }
            }
        }
    }

    /// The line in `buf`, once `read_line` found it to be text.
    fn text(&self) -> &str {
        std::str::from_utf8(&self.buf).unwrap_or_default()
    }

    /// The next line that is not blank, checked; None at the end of the file.
    fn next_row(&mut self) -> std::io::Result<Option<Result<ImportRow, String>>> {
        loop {
            let read = match self.pending.take() {
                Some(read) => read,
                None => match self.read_line()? {
                    Some(read) => read,
                    None => return Ok(None),
                },
            };
            let checked = match read {
                LineRead::TooLong(n) => Err(format!(
                    "the line is {n} bytes, longer than a row can be with --max-source-bytes {} and \
                     --max-payload-bytes {}",
                    self.limits.max_source, self.limits.max_payload
                )),
                LineRead::NotUtf8(at) => Err(format!("it is not UTF-8 text (byte {at} of the line)")),
                LineRead::Text if self.text().trim().is_empty() => continue,
                LineRead::Text => match self.format {
                    Format::Csv { with_payload } => csv_row(self.text(), with_payload, &self.limits),
                    Format::JsonLines => json_row(self.text(), &self.limits),
                },
            };
            return Ok(Some(checked.map(|video| ImportRow { line: self.line, video })));
        }
    }

    /// Reads the whole file, handing batches to `tx` until it is read or `tx` is closed.
    fn send_all(mut self, tx: &tokio::sync::mpsc::Sender<Batch>) -> Result<(), ImportError> {
        loop {
            let mut batch = Batch { rows: Vec::with_capacity(IMPORT_BATCH), bad: Vec::new(), read_to: 0 };
            let mut end = false;
            // Rows near the size limits would make a batch of IMPORT_BATCH rows weigh
            // hundreds of MiB: a batch also ends at BATCH_BYTES, so memory stays flat.
            let mut bytes = 0;
            while batch.rows.len() + batch.bad.len() < IMPORT_BATCH && bytes < BATCH_BYTES {
                match self.next_row() {
                    Ok(Some(Ok(row))) => {
                        bytes += row.video.source.len() + row.video.payload.as_ref().map_or(0, String::len);
                        batch.rows.push(row);
                    }
                    Ok(Some(Err(message))) => batch.bad.push((self.line, message)),
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(e) => return Err(ImportError::Unreadable { path: self.shown, reason: e.to_string() }),
                }
            }
            batch.read_to = self.read_to;
            if tx.blocking_send(batch).is_err() || end {
                return Ok(());
            }
        }
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase())
}

/// Splits one CSV line into its fields, with RFC 4180 quoting (`"a,""b"""` is `a,"b"`).
///
/// Written by hand because CSV readers let a quoted field run on over the following
/// lines, and at the end of the file accept one that never closes: a stray quote would
/// then swallow every row after it into one field. Here a row is one line, so every
/// line is accounted for and a quote that does not close on its line is an error.
fn split_csv(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::with_capacity(3);
    let mut rest = line;
    loop {
        let Some(quoted) = rest.strip_prefix('"') else {
            match rest.split_once(',') {
                Some((field, after)) => {
                    fields.push(Cow::Borrowed(field));
                    rest = after;
                    continue;
                }
                None => {
                    fields.push(Cow::Borrowed(rest));
                    return Ok(fields);
                }
            }
        };
        let mut value = String::new();
        let mut inside = quoted;
        let after = loop {
            let Some(at) = inside.find('"') else {
                return Err(format!("a quoted field never closes on this line (field {})", fields.len() + 1));
            };
            value.push_str(&inside[..at]);
            let next = &inside[at + 1..];
            match next.strip_prefix('"') {
                Some(more) => {
                    value.push('"');
                    inside = more;
                }
                None => break next,
            }
        };
        fields.push(Cow::Owned(value));
        if after.is_empty() {
            return Ok(fields);
        }
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => {
                return Err(format!("field {} has text after its closing quote: {}", fields.len(), shown(after)));
            }
        }
    }
}

fn csv_row(line: &str, with_payload: bool, limits: &Limits) -> Result<NewVideo, String> {
    let fields = split_csv(line)?;
    let expected = if with_payload { 3 } else { 2 };
    if fields.len() != expected && !(with_payload && fields.len() == 2) {
        return Err(format!("expected {expected} fields, found {}", fields.len()));
    }
    let payload = fields.get(2).filter(|p| !p.trim().is_empty()).map(|p| p.to_string());
    if let Some(p) = &payload {
        check_payload_size(p, limits)?;
        // Validated without building the value: only the text is stored.
        serde_json::from_str::<serde::de::IgnoredAny>(p).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    }
    check(&fields[0], &fields[1], payload, limits)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    video_id: serde_json::Value,
    source: serde_json::Value,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

fn json_row(line: &str, limits: &Limits) -> Result<NewVideo, String> {
    let row: JsonRow =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object with video_id and source: {e}"))?;
    let id = match &row.video_id {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(source) = row.source.as_str() else {
        return Err("source must be a string".into());
    };
    // The payload is stored as JSON text, whatever JSON value it is.
    let payload = row.payload.filter(|p| !p.is_null()).map(|p| p.to_string());
    if let Some(p) = &payload {
        check_payload_size(p, limits)?;
    }
    check(&id, source, payload, limits)
}

fn check_payload_size(payload: &str, limits: &Limits) -> Result<(), String> {
    if payload.len() as u64 > limits.max_payload.bytes() {
        return Err(format!(
            "payload is {} bytes, more than --max-payload-bytes {}",
            payload.len(),
            limits.max_payload
        ));
    }
    Ok(())
}

/// Checks one row's id and source (the payload is checked by its format's reader).
fn check(id: &str, source: &str, payload: Option<String>, limits: &Limits) -> Result<NewVideo, String> {
    let video_id: i64 = id.trim().parse().map_err(|_| format!("video_id {} is not an integer", shown(id)))?;
    if video_id < 0 {
        // SQLite's % keeps the sign, so a negative id would belong to no shard.
        return Err(format!("video_id {video_id} is negative"));
    }
    if source.trim().is_empty() {
        return Err("source is empty".into());
    }
    if source.len() as u64 > limits.max_source.bytes() {
        return Err(format!("source is {} bytes, more than --max-source-bytes {}", source.len(), limits.max_source));
    }
    // A source is a path or a URL: a control character in it is a broken file (a
    // newline swallowed from the next row, a NUL), never part of a name.
    if let Some(at) = source.bytes().position(|b| b < 0x20 || b == 0x7f) {
        return Err(format!(
            "source contains the control character U+{:04X} at byte {}",
            source.as_bytes()[at],
            at + 1
        ));
    }
    Ok(NewVideo { video_id, source: source.to_string(), payload })
}

/// A value quoted for an error message: whole when short, else its start and length,
/// so that a huge line is never echoed back.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

fn shorten(message: String, chars: usize) -> String {
    match message.char_indices().nth(chars) {
        None => message,
        Some((cut, _)) => format!("{}...", &message[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_source: ByteSize(64 << 10), max_payload: ByteSize(1 << 20) };

    /// The good rows of a file, and its bad lines by number.
    type Read = (Vec<NewVideo>, Vec<(u64, String)>);

    /// Every row of `text` (named `name`), checked.
    fn read(name: &str, text: &str) -> Result<Read, ImportError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut reader = Reader::open(&path, LIMITS)?;
        let (mut rows, mut bad) = (Vec::new(), Vec::new());
        while let Some(row) = reader.next_row().unwrap() {
            match row {
                Ok(r) => rows.push(r.video),
                Err(m) => bad.push((reader.line, m)),
            }
        }
        Ok((rows, bad))
    }

    #[test]
    fn csv_with_and_without_payload_is_read() {
        let (v, bad) = read("a.csv", "video_id,source,payload\n1,a.mp4,\"{\"\"x\"\":1}\"\n2,b.mp4,\n").unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(v[0], NewVideo { video_id: 1, source: "a.mp4".into(), payload: Some("{\"x\":1}".into()) });
        assert_eq!(v[1].payload, None);
        let (v, _) = read("b.csv", "video_id,source\r\n7,c.mp4\r\n").unwrap();
        assert_eq!(v, [NewVideo { video_id: 7, source: "c.mp4".into(), payload: None }]);
    }

    #[test]
    fn json_lines_keep_the_payload_as_json_text() {
        let (v, _) =
            read("a.jsonl", "{\"video_id\":3,\"source\":\"x\",\"payload\":{\"lang\":\"en\"}}\n\n{\"video_id\":\"4\",\"source\":\"y\"}\n")
                .unwrap();
        assert_eq!(v[0].payload.as_deref(), Some("{\"lang\":\"en\"}"));
        assert_eq!(v[1].video_id, 4);
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let (_, bad) = read("bad.csv", "video_id,source\n1,a\n2,b\nthree,c\n4,\n-5,e\n").unwrap();
        let lines: Vec<u64> = bad.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 5, 6]);
        assert_eq!(bad[0].1, "video_id \"three\" is not an integer");
        assert_eq!(bad[1].1, "source is empty");
        assert_eq!(bad[2].1, "video_id -5 is negative");
    }

    #[test]
    fn a_quote_that_does_not_close_on_its_line_is_an_error_and_the_next_line_is_a_row_again() {
        let (v, bad) = read("q.csv", "video_id,source\n1,a\n3,\"c.mp4\n4,d.mp4\n5,\"e\"x\n").unwrap();
        assert_eq!(bad[0], (3, "a quoted field never closes on this line (field 2)".into()));
        assert_eq!(bad[1], (5, "field 2 has text after its closing quote: \"x\"".into()));
        assert_eq!(v.iter().map(|v| v.video_id).collect::<Vec<_>>(), [1, 4]);
    }

    #[test]
    fn a_wrong_header_or_bad_payload_is_named() {
        let e = read("h.csv", "id,url\n1,a\n").unwrap_err().to_string();
        assert!(e.contains("line 1: the header is \"id,url\""), "{e}");
        let (_, bad) = read("p.csv", "video_id,source,payload\n1,a,{oops\n").unwrap();
        assert!(bad[0].1.starts_with("payload is not valid JSON"), "{bad:?}");
        let (_, bad) = read("j.jsonl", "{\"video_id\":1,\"source\":\"a\",\"extra\":1}\n").unwrap();
        assert!(bad[0].1.starts_with("not a JSON object"), "{bad:?}");
        assert!(matches!(read("e.csv", "  \n\n"), Err(ImportError::Empty { .. })));
        assert!(matches!(read("e.jsonl", ""), Err(ImportError::Empty { .. })));
    }

    #[test]
    fn a_long_value_is_shown_by_its_start_and_length() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = "é".repeat(100);
        assert_eq!(shown(&long), format!("{:?}... (200 bytes)", "é".repeat(40)));
    }
}
