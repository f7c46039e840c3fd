//! The page, rendered on the server with maud: every value spliced in is escaped by
//! maud, long strings are cut, links are built from numbers only, and nothing carries a
//! `style=` or an inline script (the CSP forbids both).
//!
//! `page` is the whole document; `live` is the part the script swaps in on each refresh
//! (`/fragment`), so that the page without JavaScript and the page with it are one
//! rendering.

use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, html};
use shared::status::{VideoStatus, WorkerState};
use shared::storage::{CUT_CHARS, FailedPage, SlotStatus, VideoHistory};

use super::feed::{BUCKET_MS, BUCKETS, Snapshot};
use super::state::Settings;
use crate::aggregate::{Fleet, WorkerHealth, WorkerReport};
use crate::text;

/// The longest error or reason shown in full; the rest is cut with an ellipsis.
const TEXT_CUT: usize = 160;
/// Video ids listed in flight per worker before `+N more`.
const IN_FLIGHT_SHOWN: usize = 6;
/// The chart's drawing size, in SVG units; the stylesheet scales it to the width.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 120.0;

/// `s` on one line, cut to `n` characters.
pub fn cut(s: &str, n: usize) -> String {
    text::fit(&text::one_line(s), n)
}

fn timestamp(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// The whole page.
pub fn page(snap: &Snapshot, settings: &Settings, now_ms: i64) -> Markup {
    let refresh_ms = settings.refresh.as_millis().max(1000);
    let sub = html! { "Live fleet · refreshes every " (text::duration_short((refresh_ms / 1000) as u64)) };
    shell(settings, "shardfleet", sub, live(snap, settings, now_ms))
}

/// A document of the site: head, header, `main` and the control token's form.
fn shell(settings: &Settings, title: &str, sub: Markup, main: Markup) -> Markup {
    let refresh_ms = settings.refresh.as_millis().max(1000);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="icon" href=(settings.path("/favicon.ico"));
                link rel="stylesheet" href=(settings.path("/assets/app.css"));
                script src=(settings.path("/assets/app.js")) defer {}
            }
            body data-base=(settings.prefix) data-refresh-ms=(refresh_ms) {
                header {
                    h1 { a href=(settings.path("/")) { "shardfleet" } }
                    p.sub { (sub) }
                }
                main {
                    (main)
                    @if !settings.read_only {
                        form #token-form hidden {
                            label for="token-input" { "Control token" }
                            input #token-input type="password" autocomplete="off" spellcheck="false";
                            button type="submit" { "Use token" }
                            p.hint { "Kept in this tab only (sessionStorage), sent as Authorization: Bearer." }
                        }
                        p #said role="status" {}
                    }
                }
                noscript {
                    p.banner { "Without JavaScript the figures do not refresh by themselves (reload the page), and the controls do not work." }
                }
            }
        }
    }
}

/// `/failed`: a page of failed videos, the search form, and keyset links to the pages
/// on either side (the cursor is an id; the search is percent-encoded).
pub fn failed(settings: &Settings, search: &str, page: &FailedPage, failed: u64) -> Markup {
    let retry = !settings.read_only;
    let query = if search.is_empty() { String::new() } else { format!("&q={}", encode(search)) };
    let link = |dir: &str, id: i64| format!("{}?{dir}={id}{query}", settings.path("/failed"));
    let sub = html! { (failed) " failed videos in all" };
    let main = html! {
        section aria-label="failed videos" {
            h2 { "Failed videos" }
            form.search method="get" action=(settings.path("/failed")) role="search" {
                label for="q" { "Video id or part of its source" }
                input #q name="q" type="search" value=(search) maxlength="200";
                button type="submit" { "Search" }
            }
            @if retry && failed > 0 {
                p { button.control type="button" data-action="retry-failed" { "Retry all " (failed) " failed" } }
            }
            @if page.rows.is_empty() {
                p.note { @if search.is_empty() { "No failed videos here." } @else { "No failed video matches." } }
            } @else {
                div.scroll {
                    table.errors {
                        thead { tr {
                            th { "video" } th { "source" } th { "attempts" } th { "last error" } th { "finished" }
                            @if retry { th {} }
                        } }
                        tbody {
                            @for v in &page.rows {
                                tr data-testid="failed-row" data-video-id=(v.video_id) {
                                    td data-label="video" { a href=(settings.path(&format!("/videos/{}", v.video_id))) { (v.video_id) } }
                                    td.source data-label="source" { (cut_db(v.source.as_deref())) }
                                    td data-label="attempts" { (v.attempts) }
                                    td.error data-label="last error" { (cut_db(v.last_error.as_deref())) }
                                    td data-label="finished" { @if let Some(at) = v.finished_at { time datetime=(timestamp(at)) { (timestamp(at)) } } }
                                    @if retry {
                                        td data-label="" { button.control type="button" data-action="retry" data-video-id=(v.video_id) { "Retry" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav.pages aria-label="pages" {
                @if let (true, Some(first)) = (page.earlier, page.rows.first()) {
                    a rel="prev" href=(link("before", first.video_id)) { "← previous" }
                }
                " "
                @if let (true, Some(last)) = (page.later, page.rows.last()) {
                    a rel="next" href=(link("after", last.video_id)) { "next →" }
                }
            }
        }
    };
    shell(settings, "shardfleet · failed videos", sub, main)
}

/// `/videos/{id}`: a video and each of its attempts.
pub fn history(settings: &Settings, h: &VideoHistory, now_ms: i64) -> Markup {
    let sub = html! { "video " (h.video_id) " · " (h.status.as_str()) " · " (h.attempts) " attempts" };
    let main = html! {
        section aria-label="video" {
            h2 { "Video " (h.video_id) }
            p.source { "Source: " (cut_db(h.source.as_deref())) }
            @if let Some(e) = &h.last_error { p.error { "Last error: " (cut_db(Some(e))) } }
            @if !settings.read_only && h.status == VideoStatus::Failed {
                p { button.control type="button" data-action="retry" data-video-id=(h.video_id) { "Retry" } }
            }
            h2 { "Attempts" }
            @if h.history.is_empty() {
                p.note { "No attempt has ended yet." }
            } @else {
                div.scroll {
                    table.errors {
                        thead { tr { th { "#" } th { "worker" } th { "started" } th { "took" } th { "outcome" } th { "error" } th { "warnings" } } }
                        tbody {
                            @for a in &h.history {
                                tr data-testid="attempt-row" {
                                    td data-label="#" { (a.attempt) }
                                    td data-label="worker" { (cut_db(a.worker.as_deref())) }
                                    td data-label="started" { @if let Some(at) = a.started_at { time datetime=(timestamp(at)) { (text::ago(now_ms, at)) } } }
                                    td data-label="took" { @if let Some(ms) = a.duration_ms { (text::elapsed_ms(ms)) } }
                                    td data-label="outcome" { (cut(&a.outcome, 20)) }
                                    td.error data-label="error" { (cut_db(a.error.as_deref())) }
                                    td.error data-label="warnings" { (cut_db(a.warnings.as_deref())) }
                                }
                            }
                        }
                    }
                }
            }
            p { a href=(settings.path("/failed")) { "← failed videos" } }
        }
    };
    shell(settings, &format!("shardfleet · video {}", h.video_id), sub, main)
}

/// Text the database cut at `CUT_CHARS`: on one line, with an ellipsis when it was cut.
fn cut_db(s: Option<&str>) -> String {
    let s = s.unwrap_or("");
    let cut_there = s.chars().count() as i64 >= CUT_CHARS;
    let line = text::one_line(s);
    if cut_there { format!("{line}…") } else { line }
}

/// `s` percent-encoded for a query string: every byte but letters and digits.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The live part of the page: banners, totals, chart, workers, recent errors.
pub fn live(snap: &Snapshot, settings: &Settings, now_ms: i64) -> Markup {
    let t = &snap.report.totals;
    let controls = !settings.read_only;
    html! {
        div #live data-at=(snap.report.at) {
            (banners(snap, now_ms))
            section.overview aria-label="totals" {
                div.totals {
                    div.total { span.label { "pending" } span.num data-testid="total-pending" { (t.pending) } }
                    div.total { span.label { "running" } span.num data-testid="total-running" { (t.running) } }
                    div.total.done { span.label { "done" } span.num data-testid="total-done" { (t.done) } }
                    div.total.failed { span.label { "failed" } span.num data-testid="total-failed" { (t.failed) } }
                }
                div.progress {
                    progress max=(t.total.max(1)) value=(t.finished()) {}
                    span { (text::percent(t.ratio())) " · " (t.finished()) " of " (t.total) " finished" }
                }
                p.figures {
                    "Rate " strong { (text::rate_or_dash(t.rate_shown())) } " over the last minute · ETA "
                    strong { (text::eta(t.eta_seconds)) }
                    @if !t.complete { " · some shards not counted yet" }
                }
                (run_line(snap, now_ms))
                @if settings.db.is_none() {
                    p.note { "Failed videos, their history and retry need the fleet's database: start the monitor with --db." }
                } @else {
                    p {
                        a href=(settings.path("/failed")) { "Failed videos (" (t.failed) "): search, history" }
                        @if controls && t.failed > 0 {
                            " " button.control type="button" data-action="retry-failed" { "Retry all " (t.failed) " failed" }
                        }
                    }
                }
                @if settings.read_only { p.note { "Read-only: this monitor was started with --read-only; it has no controls." } }
            }
            (chart(snap))
            (workers(snap, controls, now_ms))
            (recent_errors(snap, settings, now_ms))
        }
    }
}

fn banners(snap: &Snapshot, now_ms: i64) -> Markup {
    let t = &snap.report.totals;
    let down: Vec<String> = snap
        .report
        .workers
        .iter()
        .filter(|w| w.health != WorkerHealth::Up)
        .map(|w| w.worker_id().to_string())
        .take(20)
        .collect();
    html! {
        @if !snap.polled() {
            p.banner.info { "Waiting for the first poll of the workers…" }
        }
        @if t.stale {
            p.banner.stale data-testid="fleet-stale" role="alert" {
                "Figures are stale: no worker answers. "
                @if let Some(at) = t.as_of { "Last current " (text::ago(now_ms, at)) " (" (timestamp(at)) ")." }
            }
        }
        @if let Some(db) = &t.database {
            p.banner.down data-testid="database-down" role="alert" {
                "The database is " (db.state)
                @if let Some(since) = db.since { " since " (text::ago(now_ms, since)) }
                ": the workers keep their jobs running and write their results when it answers again."
                @if let Some(e) = &db.last_error { " Last error: " (cut(e, 200)) }
            }
        }
        @if snap.polled() && !down.is_empty() {
            p.banner.down data-testid="workers-down" role="alert" {
                (down.len()) " of " (t.workers) " workers down or not answering: " (down.join(", "))
                @if t.workers_down + t.workers_error > down.len() as u32 { ", …" }
            }
        }
    }
}

/// Hosts, layouts and since when: from the runs with --db, else from what the workers
/// say.
fn run_line(snap: &Snapshot, now_ms: i64) -> Markup {
    let fleet: &Fleet = &snap.fleet;
    let (hosts, layouts, since) = if snap.runs.is_empty() {
        let mut hosts: Vec<String> =
            fleet.targets().iter().map(|t| t.base.host_str().unwrap_or("?").to_string()).collect();
        hosts.sort();
        hosts.dedup();
        let mut layouts: Vec<String> = snap
            .report
            .workers
            .iter()
            .filter_map(|w| w.status.as_ref())
            .map(|s| format!("{} shards", s.workers))
            .collect();
        layouts.sort();
        layouts.dedup();
        let since = snap.report.workers.iter().filter_map(|w| w.status.as_ref()).map(|s| s.started_at).min();
        (hosts, layouts, since)
    } else {
        let mut hosts: Vec<String> =
            snap.runs.iter().map(|r| r.host.clone().unwrap_or_else(|| "this host".into())).collect();
        hosts.sort();
        hosts.dedup();
        let layouts = snap
            .runs
            .iter()
            .map(|r| match &r.worker_ids {
                Some(ids) => format!("{} shards, ids {ids} ({})", r.workers, r.state),
                None => format!("{} shards ({})", r.workers, r.state),
            })
            .collect();
        (hosts, layouts, snap.runs.iter().map(|r| r.started_at).min())
    };
    html! {
        p.run {
            "Hosts: " (cut(&hosts.join(", "), TEXT_CUT))
            @if !layouts.is_empty() { " · layout: " (cut(&layouts.join("; "), TEXT_CUT)) }
            @if let Some(at) = since { " · since " time datetime=(timestamp(at)) { (timestamp(at)) } " (" (text::ago(now_ms, at)) ")" }
        }
    }
}

/// Done and failed per minute over the last hour, as bars: drawn here, so the page needs
/// no charting script.
fn chart(snap: &Snapshot) -> Markup {
    let buckets = snap.throughput.buckets();
    let end = buckets.back().map_or(0, |b| b.start_ms);
    let peak = buckets.iter().map(|b| b.done + b.failed).max().unwrap_or(0).max(1);
    let slot = CHART_W / BUCKETS as f64;
    let height = |n: u64| n as f64 / peak as f64 * (CHART_H - 4.0);
    let total: u64 = buckets.iter().map(|b| b.done + b.failed).sum();
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {CHART_W} {CHART_H}")) role="img" preserveAspectRatio="none"
                aria-label=(format!("{total} videos finished in the last hour, at most {peak} in a minute")) {
                line.axis x1="0" y1=(CHART_H) x2=(CHART_W) y2=(CHART_H) {}
                @for b in buckets {
                    @let age = ((end - b.start_ms) / BUCKET_MS) as f64;
                    @let x = CHART_W - (age + 1.0) * slot;
                    @let (done_h, failed_h) = (height(b.done), height(b.failed));
                    rect.done x=(fmt(x + 1.0)) y=(fmt(CHART_H - done_h)) width=(fmt(slot - 2.0)) height=(fmt(done_h)) {
                        title { (b.done) " done, " (timestamp(b.start_ms)) }
                    }
                    @if b.failed > 0 {
                        rect.failed x=(fmt(x + 1.0)) y=(fmt(CHART_H - done_h - failed_h)) width=(fmt(slot - 2.0)) height=(fmt(failed_h)) {
                            title { (b.failed) " failed, " (timestamp(b.start_ms)) }
                        }
                    }
                }
            }
            figcaption {
                span.key.done { "done" } " and " span.key.failed { "failed" }
                " per minute over the last hour (peak " (peak) "/min; " (total) " in all)"
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{:.1}", v.max(0.0))
}

fn workers(snap: &Snapshot, controls: bool, now_ms: i64) -> Markup {
    html! {
        section aria-label="workers" {
            h2 { "Workers" }
            div.scroll {
                table.workers {
                    thead { tr {
                        th { "id" } th { "where" } th { "state" } th { "pid" } th { "memory" } th { "restarts" }
                        th { "in flight" } th { "done" } th { "failed" } th { "rate" } th { "other shards" }
                        @if controls { th { "control" } }
                    } }
                    tbody {
                        @for w in &snap.report.workers { (worker_row(&snap.fleet, w, controls, now_ms)) }
                    }
                }
            }
        }
    }
}

/// The state word: the worker's own when it answers; `errored` when the supervisor gave
/// up on it, `drained` when it was drained and waits for a resume; else `down`.
fn state_word(w: &WorkerReport) -> &'static str {
    match (w.health, &w.status, w.supervisor_state) {
        (WorkerHealth::Up, Some(s), _) => s.state.as_str(),
        (_, _, Some(SlotStatus::Errored)) => "errored",
        (_, _, Some(SlotStatus::Drained)) => "drained",
        (WorkerHealth::Error, _, _) => "error",
        _ => "down",
    }
}

fn worker_row(fleet: &Fleet, w: &WorkerReport, controls: bool, now_ms: i64) -> Markup {
    let id = w.worker_id();
    let word = state_word(w);
    let up = w.health == WorkerHealth::Up;
    let s = w.status.as_ref();
    let shard = fleet.shard(w);
    let limit = fleet.mem_limit(w);
    html! {
        tr data-testid="worker-row" data-worker-id=(id) data-state=(word) class=(format!("state-{word}")) {
            td { (id) }
            td { (cut(&w.place(), 60)) }
            td.state {
                span.word { (word) }
                @if !up {
                    @if let Some(why) = &w.error { br; small { (cut(why, TEXT_CUT)) } }
                    @if let Some(seen) = w.last_seen { br; small { "last seen " (text::ago(now_ms, seen)) } }
                }
            }
            td { @if let Some(s) = s { (s.pid) } }
            td.mem {
                @if let Some(s) = s {
                    @match limit {
                        Some(limit) if limit > 0 => {
                            meter min="0" max=(limit) low=(limit / 10 * 7) high=(limit / 10 * 9) optimum="0" value=(s.rss_bytes.min(limit)) {}
                            " " (text::bytes_short(s.rss_bytes)) " / " (text::bytes_short(limit))
                        }
                        _ => { (text::bytes_short(s.rss_bytes)) " (no limit)" }
                    }
                }
            }
            td {
                (w.restarts)
                @if let Some(why) = &w.last_restart_reason { br; small { (cut(why, TEXT_CUT)) } }
            }
            td.flight {
                @if let Some(s) = s {
                    (s.in_flight.len())
                    @if !s.in_flight.is_empty() {
                        br;
                        small {
                            @for j in s.in_flight.iter().take(IN_FLIGHT_SHOWN) {
                                (j.video_id) " " (text::elapsed_ms(now_ms - j.started_at)) " "
                            }
                            @if s.in_flight.len() > IN_FLIGHT_SHOWN { "+" (s.in_flight.len() - IN_FLIGHT_SHOWN) " more" }
                        }
                    }
                }
            }
            td { @if let Some(c) = shard { (c.done) } }
            td { @if let Some(c) = shard { (c.failed) } }
            td { @if let (true, Some(s)) = (up, s) { (text::rate(s.throughput_per_sec)) } }
            td.helping { (cut(&text::helping(w), TEXT_CUT)) }
            @if controls {
                td.controls {
                    @let paused = s.is_some_and(|s| s.state == WorkerState::Paused);
                    @if up && !paused {
                        button.control type="button" data-action="pause" data-worker-id=(id) { "Pause" }
                    }
                    @if up && paused {
                        button.control type="button" data-action="resume" data-worker-id=(id) { "Resume" }
                    }
                    @if word == "drained" {
                        button.control type="button" data-action="resume" data-worker-id=(id) { "Resume" }
                    }
                    @if up && s.is_some_and(|s| s.state != WorkerState::Draining) {
                        button.control type="button" data-action="drain" data-worker-id=(id) { "Drain" }
                    }
                }
            }
        }
    }
}

fn recent_errors(snap: &Snapshot, settings: &Settings, now_ms: i64) -> Markup {
    let retry = settings.db.is_some() && !settings.read_only;
    html! {
        section aria-label="recent errors" {
            h2 { "Recent failed attempts" }
            @if snap.recent_errors.is_empty() {
                p.note { "None reported by the workers." }
            } @else {
                div.scroll {
                    table.errors {
                        thead { tr {
                            th { "video" } th { "worker" } th { "attempt" } th { "outcome" } th { "when" } th { "error" }
                            @if retry { th {} }
                        } }
                        tbody {
                            @for (worker, e) in &snap.recent_errors {
                                tr data-testid="error-row" data-video-id=(e.video_id) {
                                    td data-label="video" { (e.video_id) }
                                    td data-label="worker" { (worker) }
                                    td data-label="attempt" { (e.attempt) }
                                    td data-label="outcome" { (e.outcome.as_str()) }
                                    td data-label="when" { time datetime=(timestamp(e.at)) { (text::ago(now_ms, e.at)) } }
                                    td.error data-label="error" { (cut(&e.error, TEXT_CUT)) }
                                    @if retry {
                                        td data-label="" { button.control type="button" data-action="retry" data-video-id=(e.video_id) { "Retry" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
