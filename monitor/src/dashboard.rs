//! The dashboard: what is drawn from the fleet's state (a pure function of it, so tests
//! render it into a `TestBackend`), and what each key does to the view.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Clear, Gauge, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};
use shared::status::{WorkerState, WorkerStatus};

use crate::aggregate::{Fleet, RATE_WINDOW_MS, WorkerHealth, WorkerReport};
use crate::control::Command;
use crate::text;

/// Above these shares of its limit a worker's memory turns yellow, then red: at 80% a
/// growing handler is worth watching, at 95% the next allocation may be killed.
const MEM_WARN: f64 = 0.80;
const MEM_DANGER: f64 = 0.95;
/// The restarts column: the count and the start of the last reason (the selected
/// worker's pane shows all of it).
const RESTARTS_WIDTH: u16 = 14;
/// Rows of the worker table before it scrolls.
const MAX_WORKER_ROWS: u16 = 16;

/// The view's own state: which worker is selected, whether help is open, and the last
/// message (the answer to a pause or resume).
#[derive(Debug, Clone, Default)]
pub struct Ui {
    pub selected: usize,
    pub help: bool,
    pub message: Option<(String, bool)>,
    /// Whether a control token is known, so p and r can work.
    pub can_control: bool,
    /// Shown in the header so a reader knows how fresh the numbers are.
    pub interval_label: String,
}

/// What a key asks of the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
    /// Send a command to the worker at this index.
    Send(usize, Command),
}

impl Ui {
    pub fn new(can_control: bool, interval_label: String) -> Ui {
        Ui { can_control, interval_label, ..Ui::default() }
    }

    /// Maps a key to an action, updating the view's state.
    pub fn on_key(&mut self, key: KeyEvent, workers: usize) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            // Raw mode turns Ctrl-C into a key, so it is handled here, not as SIGINT.
            KeyCode::Char('c') if ctrl => Action::Quit,
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Esc if self.help => {
                self.help = false;
                Action::Redraw
            }
            KeyCode::Esc => Action::Quit,
            KeyCode::Char('?') => {
                self.help = !self.help;
                Action::Redraw
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(workers.saturating_sub(1));
                Action::Redraw
            }
            KeyCode::Char(c @ ('p' | 'r')) => {
                let command = if c == 'p' { Command::Pause } else { Command::Resume };
                if !self.can_control {
                    self.message = Some((
                        "pause and resume need the control token: --control-token, FLEET_CONTROL_TOKEN, or --db".into(),
                        true,
                    ));
                    return Action::Redraw;
                }
                if workers == 0 {
                    return Action::Nothing;
                }
                Action::Send(self.selected.min(workers - 1), command)
            }
            _ => Action::Nothing,
        }
    }
}

/// Draws the whole dashboard. `now_ms` dates the in-flight jobs and ages.
pub fn draw(frame: &mut Frame, fleet: &Fleet, ui: &Ui, now_ms: i64) {
    let n = fleet.workers().len() as u16;
    let [overall, workers, detail, errors, footer] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(n.min(MAX_WORKER_ROWS) + 3),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_overall(frame, overall, fleet, ui, now_ms);
    draw_workers(frame, workers, fleet, ui, now_ms);
    draw_detail(frame, detail, fleet, ui, now_ms);
    draw_errors(frame, errors, fleet, now_ms);
    draw_footer(frame, footer, ui);
    if ui.help {
        draw_help(frame, ui);
    }
}

fn draw_overall(frame: &mut Frame, area: Rect, fleet: &Fleet, ui: &Ui, now_ms: i64) {
    let t = fleet.totals();
    let mut title = vec![
        Span::raw(" shardfleet · "),
        Span::raw(format!("{} workers: ", t.workers)),
        Span::styled(format!("{} up", t.workers_up), Style::new().fg(Color::Green)),
    ];
    if t.workers_down > 0 {
        title.push(Span::raw(", "));
        title.push(Span::styled(format!("{} down", t.workers_down), Style::new().fg(Color::Red).bold()));
    }
    if t.workers_error > 0 {
        title.push(Span::raw(", "));
        title.push(Span::styled(format!("{} error", t.workers_error), Style::new().fg(Color::Magenta).bold()));
    }
    title.push(Span::raw(" "));
    let block = Block::bordered()
        .title(Line::from(title))
        .title_top(Line::from(format!(" every {} ", ui.interval_label)).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [gauge, stats, spark] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(1)]).areas(inner);

    let mut label = format!("{}/{} finished · {}", t.finished(), t.total, text::percent(t.ratio()));
    let mut bar = Style::new().fg(Color::Green).bg(Color::DarkGray);
    // Figures nobody has confirmed for a while must not pass for live ones: the bar
    // says since when they stand, where every reader looks first.
    if let Some(at) = t.as_of.filter(|_| t.stale) {
        label.push_str(&format!(" · no worker up, last seen {}", text::ago(now_ms, at)));
        bar = bar.fg(Color::Yellow);
    }
    frame.render_widget(
        Gauge::default()
            .ratio(t.ratio().clamp(0.0, 1.0))
            .label(Span::styled(label, Style::new().fg(Color::White).bold()))
            .gauge_style(bar)
            .use_unicode(true),
        gauge,
    );
    let mut line = vec![
        Span::styled(format!("done {}", t.done), Style::new().fg(Color::Green)),
        Span::raw("  "),
        Span::styled(
            format!("failed {}", t.failed),
            if t.failed > 0 { Style::new().fg(Color::Red) } else { Style::new() },
        ),
        Span::raw(format!("  running {}  pending {}", t.running, t.pending)),
        Span::raw("   rate "),
        Span::styled(text::rate_or_dash(t.rate_shown()), Style::new().bold()),
    ];
    if t.rate_shown().is_some() {
        line.push(Span::raw(format!(" ({}s window)", RATE_WINDOW_MS / 1000)));
    }
    line.extend([Span::raw("   ETA "), Span::styled(text::eta(t.eta_seconds), Style::new().bold())]);
    if !t.complete {
        line.push(Span::styled("   counts incomplete", Style::new().fg(Color::Yellow)));
    }
    if let Some(db) = &t.database {
        let since = db.since.map(|s| format!(" since {}", text::ago(now_ms, s))).unwrap_or_default();
        line.push(Span::styled(format!("   database {}{since}", db.state), Style::new().fg(Color::Red).bold()));
    }

    frame.render_widget(Paragraph::new(Line::from(line)), stats);

    let [label, chart] = Layout::horizontal([Constraint::Length(11), Constraint::Fill(1)]).areas(spark);
    frame.render_widget(Paragraph::new("throughput").fg(Color::DarkGray), label);
    let history = fleet.history();
    let width = chart.width as usize;
    let shown: Vec<u64> = history.iter().skip(history.len().saturating_sub(width)).copied().collect();
    frame.render_widget(Sparkline::default().data(&shown).style(Style::new().fg(Color::Cyan)), chart);
}

fn draw_workers(frame: &mut Frame, area: Rect, fleet: &Fleet, ui: &Ui, now_ms: i64) {
    let header = Row::new(
        ["worker", "up", "state", "shard", "done", "failed", "rate", "avg", "memory", "restarts", "in flight"]
            .map(|h| Cell::from(h).bold()),
    );
    let rows = fleet.workers().iter().map(|w| worker_row(fleet, w, now_ms));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(13),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(16),
        Constraint::Length(RESTARTS_WIDTH),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(" workers "))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(Some(ui.selected.min(fleet.workers().len().saturating_sub(1))));
    frame.render_stateful_widget(table, area, &mut state);
}

fn worker_row<'a>(fleet: &Fleet, w: &'a WorkerReport, now_ms: i64) -> Row<'a> {
    let port = w.place();
    let id = Cell::from(format!("{} {port}", w.worker_id()));
    let restarts = Cell::from(match (&w.last_restart_reason, w.restarts) {
        (Some(why), n) if n > 0 => text::fit(&format!("{n} {why}"), RESTARTS_WIDTH as usize),
        (_, n) => n.to_string(),
    })
    .style(if w.restarts > 0 { Style::new().fg(Color::Yellow) } else { Style::new() });
    let shard_cell = |style: Style| match fleet.shard(w) {
        Some(c) if c.total() > 0 => {
            let ratio = (c.done + c.failed) as f64 / c.total() as f64;
            Cell::from(format!("{} {:>4}", text::bar(ratio, 8), text::percent(ratio))).style(style)
        }
        Some(_) => Cell::from("empty").style(Style::new().fg(Color::DarkGray)),
        None => Cell::from(""),
    };
    match (w.health, &w.status) {
        (WorkerHealth::Up, Some(s)) => Row::new(vec![
            id,
            Cell::from("up").fg(Color::Green),
            Cell::from(s.state.as_str()).style(state_style(s.state)),
            shard_cell(Style::new().fg(Color::Green)),
            Cell::from(s.shard.done.to_string()),
            Cell::from(s.shard.failed.to_string()).style(if s.shard.failed > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            }),
            Cell::from(text::rate(s.throughput_per_sec)),
            Cell::from(text::job_time(s.avg_job_ms)),
            memory_cell(s, fleet.mem_limit(w)),
            restarts,
            Cell::from(with_helping(w, in_flight(s, now_ms))),
        ]),
        (health, _) => {
            let (label, color) = match health {
                WorkerHealth::Error => ("error", Color::Magenta),
                _ => ("down", Color::Red),
            };
            let why = w.error.as_deref().unwrap_or("");
            let note = match (health, w.last_seen) {
                (WorkerHealth::Error, _) => why.to_string(),
                (_, Some(t)) => format!("last seen {}: {why}", text::ago(now_ms, t)),
                (_, None) => format!("never seen: {why}"),
            };
            let dim = Style::new().fg(Color::DarkGray);
            Row::new(vec![
                id,
                Cell::from(label).style(Style::new().fg(color).bold()),
                Cell::from(w.supervisor_state.map_or_else(|| "--".into(), |s| s.to_string())).style(dim),
                shard_cell(dim),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                restarts,
                Cell::from(note).style(Style::new().fg(color)),
            ])
        }
    }
}

fn state_style(state: WorkerState) -> Style {
    match state {
        WorkerState::Running => Style::new().fg(Color::Green),
        WorkerState::Idle => Style::new().fg(Color::DarkGray),
        WorkerState::Paused => Style::new().fg(Color::Yellow).bold(),
        WorkerState::Starting | WorkerState::Draining => Style::new().fg(Color::Cyan),
    }
}

/// Resident memory against the limit, as a bar that turns yellow, then red, near it.
fn memory_cell<'a>(s: &WorkerStatus, limit: Option<u64>) -> Cell<'a> {
    match limit {
        Some(limit) if limit > 0 => {
            let ratio = s.rss_bytes as f64 / limit as f64;
            let color = memory_color(ratio);
            Cell::from(format!(
                "{} {}/{}",
                text::bar(ratio, 5),
                text::bytes_short(s.rss_bytes),
                text::bytes_short(limit)
            ))
            .style(Style::new().fg(color))
        }
        _ => Cell::from(text::bytes_short(s.rss_bytes)),
    }
}

/// The color of a memory bar at `ratio` of its limit.
pub fn memory_color(ratio: f64) -> Color {
    if ratio > MEM_DANGER {
        Color::Red
    } else if ratio > MEM_WARN {
        Color::Yellow
    } else {
        Color::Green
    }
}

/// `text` after what the worker does for other shards, if anything (`--steal`).
fn with_helping(w: &WorkerReport, text: String) -> String {
    match text::helping(w) {
        h if h.is_empty() => text,
        h if text.is_empty() => format!("[{h}]"),
        h => format!("[{h}] {text}"),
    }
}

/// Videos in flight with how long each has run, longest first.
fn in_flight(s: &WorkerStatus, now_ms: i64) -> String {
    let mut jobs: Vec<_> = s.in_flight.iter().collect();
    jobs.sort_by_key(|j| (j.started_at, j.video_id));
    jobs.iter()
        .map(|j| format!("{} {}", j.video_id, text::elapsed_ms(now_ms - j.started_at)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn draw_detail(frame: &mut Frame, area: Rect, fleet: &Fleet, ui: &Ui, now_ms: i64) {
    let Some(w) = fleet.workers().get(ui.selected.min(fleet.workers().len().saturating_sub(1))) else {
        frame.render_widget(Block::bordered().title(" selected "), area);
        return;
    };
    let dim = Style::new().fg(Color::DarkGray);
    let mut lines = Vec::new();
    match &w.status {
        Some(s) => {
            lines.push(Line::from(vec![
                Span::raw(format!("pid {} · {} · concurrency {} · ", s.pid, s.handler, s.concurrency)),
                Span::raw(format!(
                    "up {} · processed {} · v{}",
                    text::duration_short(s.uptime_seconds as u64),
                    s.processed,
                    s.version
                )),
            ]));
            let flying = in_flight(s, now_ms);
            lines.push(Line::from(vec![
                Span::styled("in flight: ", dim),
                Span::raw(if flying.is_empty() { "none".to_string() } else { flying }),
            ]));
            let helping = text::helping(w);
            if !helping.is_empty() {
                lines.push(Line::from(vec![Span::styled("other shards: ", dim), Span::raw(helping)]));
            }
        }
        None => lines.push(Line::from(Span::styled("no /status answer since the monitor started", dim))),
    }
    let mut last = vec![Span::styled("url ", dim), Span::raw(w.url.clone())];
    if let Some(why) = &w.error {
        last.push(Span::styled(format!(" · {}: {why}", w.health.as_str()), Style::new().fg(Color::Red)));
    }
    if let Some(reason) = &w.last_restart_reason {
        last.push(Span::styled(format!(" · last restart: {reason}"), Style::new().fg(Color::Yellow)));
    }
    lines.push(Line::from(last));
    let title = format!(" worker {} ", w.worker_id());
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

fn draw_errors(frame: &mut Frame, area: Rect, fleet: &Fleet, now_ms: i64) {
    let fits = area.height.saturating_sub(3) as usize;
    let rows: Vec<Row> = fleet
        .recent_errors()
        .into_iter()
        .take(fits)
        .map(|(worker_id, e)| {
            Row::new(vec![
                Cell::from(text::ago(now_ms, e.at)),
                Cell::from(e.video_id.to_string()),
                Cell::from(worker_id.to_string()),
                Cell::from(e.attempt.to_string()),
                Cell::from(e.outcome.as_str()).fg(Color::Red),
                Cell::from(text::one_line(&e.error)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let header = Row::new(["when", "video", "worker", "attempt", "outcome", "message"].map(|h| Cell::from(h).bold()));
    let widths = [
        // "3days 4h ago": an age in the binaries' one duration format, whole.
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let title = if empty { " recent errors: none " } else { " recent errors " };
    frame.render_widget(Table::new(rows, widths).header(header).block(Block::bordered().title(title)), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, ui: &Ui) {
    let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Cyan).bold());
    let mut spans = vec![
        Span::raw(" "),
        key("q"),
        Span::raw(" quit  "),
        key("↑↓"),
        Span::raw(" select  "),
        key("p"),
        Span::raw(" pause  "),
        key("r"),
        Span::raw(" resume  "),
        key("?"),
        Span::raw(" help"),
    ];
    if let Some((text, is_error)) = &ui.message {
        spans.push(Span::raw("   "));
        spans.push(Span::styled(text.clone(), Style::new().fg(if *is_error { Color::Red } else { Color::Green })));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_help(frame: &mut Frame, ui: &Ui) {
    let area = frame.area().centered(Constraint::Length(70), Constraint::Length(13));
    let key = |k: &'static str| Span::styled(format!("  {k:<16}"), Style::new().fg(Color::Cyan).bold());
    let token = if ui.can_control {
        Line::from("  A control token is known: p and r act on the selected worker.")
    } else {
        Line::from(Span::styled(
            "  No control token: pass --control-token, set FLEET_CONTROL_TOKEN, or use --db.",
            Style::new().fg(Color::Yellow),
        ))
    };
    let lines = vec![
        Line::from(vec![key("q  Esc  Ctrl-C"), Span::raw("quit (the terminal is restored)")]),
        Line::from(vec![key("↑ ↓  k j"), Span::raw("select a worker")]),
        Line::from(vec![key("p"), Span::raw("pause it: it stops claiming, jobs in flight finish")]),
        Line::from(vec![key("r"), Span::raw("resume it")]),
        Line::from(vec![key("?"), Span::raw("show or hide this help")]),
        Line::from(""),
        token,
        Line::from(""),
        Line::from(Span::styled(
            "  A worker that does not answer is down; one that answers something else is an error.",
            Style::new().fg(Color::DarkGray),
        )),
    ];
    frame.render_widget(Clear, area);
    frame
        .render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(Block::bordered().title(" help ")), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn arrows_move_the_selection_within_the_fleet() {
        let mut ui = Ui::new(true, "1s".into());
        assert_eq!(ui.on_key(press(KeyCode::Down), 3), Action::Redraw);
        ui.on_key(press(KeyCode::Down), 3);
        ui.on_key(press(KeyCode::Down), 3);
        assert_eq!(ui.selected, 2);
        ui.on_key(press(KeyCode::Up), 3);
        assert_eq!(ui.selected, 1);
    }

    #[test]
    fn p_and_r_act_on_the_selected_worker_only_with_a_token() {
        let mut ui = Ui::new(true, "1s".into());
        ui.selected = 1;
        assert_eq!(ui.on_key(press(KeyCode::Char('p')), 2), Action::Send(1, Command::Pause));
        assert_eq!(ui.on_key(press(KeyCode::Char('r')), 2), Action::Send(1, Command::Resume));
        let mut ui = Ui::new(false, "1s".into());
        assert_eq!(ui.on_key(press(KeyCode::Char('p')), 2), Action::Redraw);
        assert!(ui.message.as_ref().is_some_and(|(m, err)| *err && m.contains("control token")));
    }

    #[test]
    fn q_and_ctrl_c_quit_and_esc_closes_help_first() {
        let mut ui = Ui::new(false, "1s".into());
        assert_eq!(ui.on_key(press(KeyCode::Char('q')), 1), Action::Quit);
        assert_eq!(ui.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), 1), Action::Quit);
        ui.on_key(press(KeyCode::Char('?')), 1);
        assert!(ui.help);
        assert_eq!(ui.on_key(press(KeyCode::Esc), 1), Action::Redraw);
        assert!(!ui.help);
        assert_eq!(ui.on_key(press(KeyCode::Esc), 1), Action::Quit);
    }

    #[test]
    fn memory_turns_yellow_above_80_percent_and_red_above_95() {
        assert_eq!(memory_color(0.80), Color::Green);
        assert_eq!(memory_color(0.81), Color::Yellow);
        assert_eq!(memory_color(0.95), Color::Yellow);
        assert_eq!(memory_color(0.96), Color::Red);
    }
}
