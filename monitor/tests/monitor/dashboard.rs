//! The dashboard drawn from fixed statuses into a `TestBackend`, against a committed
//! snapshot, with its colors checked where the text cannot show them.

use monitor::aggregate::Fleet;
use monitor::dashboard::{self, Ui};
use monitor::poll::{Answer, Round};
use monitor::targets::Target;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use shared::status::{InFlight, Outcome, RecentError, ShardCounts, WorkerState, WorkerStatus};

use crate::helper::snapshot::assert_snapshot;

/// The fixed "now" of every drawing: 2027-01-15 08:00:00 UTC.
const NOW: i64 = 1_800_000_000_000;
const MIB: u64 = 1 << 20;

fn status(id: u32, done: u64, failed: u64) -> WorkerStatus {
    WorkerStatus {
        pid: 4100 + id,
        handler: "exec: ./analyse.sh {video_id} {source}".into(),
        shard: ShardCounts { pending: 100 - done - failed - 2, running: 2, done, failed },
        processed: done + failed,
        throughput_per_sec: 2.5,
        avg_job_ms: Some(412.0),
        rss_bytes: 40 * MIB,
        uptime_seconds: 754.0,
        started_at: NOW - 754_000,
        ..WorkerStatus::example(id, 5)
    }
}

fn error(video_id: i64, attempt: u32, ago_ms: i64, outcome: Outcome, text: &str) -> RecentError {
    RecentError { video_id, attempt, at: NOW - ago_ms, outcome, error: text.into() }
}

/// Five workers: 0 busy with errors, 1 at 97% of its memory limit, 2 paused at 85% after
/// two restarts, 3 down since 12 s ago, 4 answering something that is not a status.
fn fleet() -> Fleet {
    let targets: Vec<Target> = (0..5)
        .map(|k| Target {
            slot: k,
            base: format!("http://127.0.0.1:{}", 3001 + k).parse().unwrap(),
            expect: Some((k, 5)),
            token: None,
        })
        .collect();
    let mut fleet = Fleet::new(targets);
    for i in 0..=30u64 {
        let at = NOW - (30 - i as i64) * 1000;
        let mut w0 = status(0, 10 + i * 2, 3);
        w0.in_flight = vec![
            InFlight { video_id: 215, attempt: 1, started_at: NOW - 1_100 },
            InFlight { video_id: 180, attempt: 2, started_at: NOW - 3_250 },
        ];
        w0.recent_errors = vec![
            error(175, 2, 4_000, Outcome::Error, "exit code 1: ffprobe: invalid data found\nwhen processing input"),
            error(90, 3, 95_000, Outcome::Timeout, "killed after 30s (--job-timeout)"),
        ];
        let mut w1 = status(1, 20 + i, 0);
        w1.rss_bytes = 243 * MIB;
        w1.recent_errors = vec![error(41, 1, 20_000, Outcome::Memory, "killed: the memory limit (250M) was reached")];
        let mut w2 = status(2, 55, 1);
        w2.state = WorkerState::Paused;
        w2.rss_bytes = 212 * MIB;
        w2.restarts = 2;
        w2.last_restart_reason = Some("exit code 137 (memory limit)".into());
        w2.throughput_per_sec = 0.0;
        let w3 = if at <= NOW - 12_000 {
            Answer::Up(Box::new(status(3, 40 + i, 2)))
        } else {
            Answer::Down("connection refused".into())
        };
        let w4 = Answer::Error("unexpected answer: HTTP 404 Not Found".into());
        let answers = vec![Answer::Up(Box::new(w0)), Answer::Up(Box::new(w1)), Answer::Up(Box::new(w2)), w3, w4];
        fleet.apply(Round { at_ms: at, answers, ..Round::default() });
    }
    fleet
}

fn draw(fleet: &Fleet, ui: &Ui) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(140, 34)).unwrap();
    terminal.draw(|f| dashboard::draw(f, fleet, ui, NOW)).unwrap();
    terminal.backend().buffer().clone()
}

fn text(buf: &Buffer) -> String {
    let mut s = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The color of the first cell of `needle` in the drawing.
fn color_of(buf: &Buffer, needle: &str) -> Color {
    for y in 0..buf.area.height {
        let cells: Vec<&str> = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
        let line: String = cells.concat();
        if let Some(byte) = line.find(needle) {
            let x = line[..byte].chars().count() as u16;
            return buf[(x, y)].fg;
        }
    }
    panic!("{needle:?} is not in the drawing:\n{}", text(buf));
}

#[test]
fn the_dashboard_matches_its_snapshot() {
    let ui = Ui::new(true, "1s".into());
    assert_snapshot("dashboard", &text(&draw(&fleet(), &ui)));
}

#[test]
fn memory_bars_turn_yellow_above_80_percent_and_red_above_95() {
    let buf = draw(&fleet(), &Ui::new(true, "1s".into()));
    assert_eq!(color_of(&buf, "40M/250M"), Color::Green);
    assert_eq!(color_of(&buf, "212M/250M"), Color::Yellow);
    assert_eq!(color_of(&buf, "243M/250M"), Color::Red);
}

#[test]
fn a_down_worker_and_an_error_row_are_marked_without_hiding_the_others() {
    let buf = draw(&fleet(), &Ui::new(true, "1s".into()));
    let drawn = text(&buf);
    assert!(drawn.contains("last seen 12s ago: connection refused"), "{drawn}");
    assert!(drawn.contains("unexpected answer: HTTP 404 Not Found"), "{drawn}");
    assert_eq!(color_of(&buf, "down "), Color::Red);
    assert_eq!(color_of(&buf, "error "), Color::Magenta);
    assert!(drawn.contains("3 up, 1 down, 1 error"), "{drawn}");
}

#[test]
fn question_mark_opens_the_help_over_the_dashboard() {
    let mut ui = Ui::new(false, "1s".into());
    let before = text(&draw(&fleet(), &ui));
    assert!(!before.contains("show or hide this help"));
    ui.on_key(crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('?')), 5);
    let after = text(&draw(&fleet(), &ui));
    assert!(after.contains("show or hide this help"), "{after}");
    assert!(after.contains("No control token"), "{after}");
}

#[test]
fn with_every_worker_down_the_progress_reads_as_last_seen_with_no_rate_or_eta() {
    let targets: Vec<Target> = (0..2)
        .map(|k| Target {
            slot: k,
            base: format!("http://127.0.0.1:{}", 3001 + k).parse().unwrap(),
            expect: None,
            token: None,
        })
        .collect();
    let mut fleet = Fleet::new(targets);
    for i in 0..=30u64 {
        let at = NOW - (30 - i as i64) * 1000;
        let answers = if at <= NOW - 12_000 {
            (0..2).map(|k| Answer::Up(Box::new(status(k, 60 + i + u64::from(k), 0)))).collect()
        } else {
            vec![Answer::Down("connection refused".into()); 2]
        };
        fleet.apply(Round { at_ms: at, answers, ..Round::default() });
    }
    let buf = draw(&fleet, &Ui::new(true, "1s".into()));
    let drawn = text(&buf);
    assert!(drawn.contains("no worker up, last seen 12s ago"), "{drawn}");
    assert!(drawn.contains("running 4  pending 39   rate --   ETA --"), "{drawn}");
    assert_eq!(color_of(&buf, "█"), Color::Yellow, "the bar of figures nobody confirms");
}
