//! How numbers read on screen, shared by the dashboard and the plain-text output: short
//! durations, rates, sizes and text progress bars.

/// `42s`, `6m 7s`, `2h 13m`, `3days 4h`: the binaries' one duration format
/// (`shared::time_fmt`), to the second, for ETAs and ages.
pub fn duration_short(secs: u64) -> String {
    shared::time_fmt::duration(std::time::Duration::from_secs(secs))
}

/// An ETA, or a dash while it cannot be known.
pub fn eta(seconds: Option<u64>) -> String {
    seconds.map_or_else(|| "--".to_string(), duration_short)
}

/// How long ago `then_ms` was, seen at `now_ms`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    format!("{} ago", duration_short(((now_ms - then_ms).max(0) / 1000) as u64))
}

/// Time a job has been running: tenths of a second while short.
pub fn elapsed_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { duration_short((ms / 1000) as u64) }
}

/// Average job time: `152ms`, `1.23s`, `2m07s`.
pub fn job_time(ms: Option<f64>) -> String {
    match ms {
        None => "--".into(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0}ms"),
        Some(ms) if ms < 60_000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) => duration_short((ms / 1000.0) as u64),
    }
}

/// A rate, or a dash while it cannot be known.
pub fn rate_or_dash(per_sec: Option<f64>) -> String {
    per_sec.map_or_else(|| "--".to_string(), rate)
}

/// Videos per second, with the precision the magnitude deserves.
pub fn rate(per_sec: f64) -> String {
    match per_sec {
        r if r <= 0.0 => "0/s".into(),
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 10.0 => format!("{r:.1}/s"),
        r => format!("{r:.2}/s"),
    }
}

/// Bytes in a narrow column: `9.1M`, `250M`, `1.5G`.
pub fn bytes_short(b: u64) -> String {
    const K: f64 = 1024.0;
    let b = b as f64;
    let (value, unit) = if b >= K * K * K {
        (b / (K * K * K), "G")
    } else if b >= K * K {
        (b / (K * K), "M")
    } else {
        (b / K, "K")
    };
    if value >= 100.0 || value.fract() == 0.0 { format!("{value:.0}{unit}") } else { format!("{value:.1}{unit}") }
}

/// A bar `width` cells wide, filled to `ratio` (0 to 1) in eighths of a cell.
pub fn bar(ratio: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (ratio.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let (full, part) = (eighths / 8, eighths % 8);
    let mut s = "█".repeat(full);
    if full < width {
        s.push(if part == 0 { '░' } else { PARTS[part] });
        s.push_str(&"░".repeat(width - full - 1));
    }
    s
}

/// Handler output squeezed onto one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` cut to `width` characters, with an ellipsis when something was cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `37%`; `100%` only when complete, so a nearly done shard never claims to be done.
pub fn percent(ratio: f64) -> String {
    let p = (ratio.clamp(0.0, 1.0) * 100.0).floor();
    format!("{p:.0}%")
}

/// What a worker does for other shards (`--steal`): `helping 1,3 · took 12 of 1, 4 of 3`;
/// empty when it does nothing for them. `helping` is only what it does now
/// (`WorkerReport::helping_now`), not the shards it may take from.
pub fn helping(w: &crate::aggregate::WorkerReport) -> String {
    let Some(s) = &w.status else { return String::new() };
    let mut parts = Vec::new();
    if !w.helping_now.is_empty() {
        let shards: Vec<String> = w.helping_now.iter().map(u32::to_string).collect();
        parts.push(format!("helping {}", shards.join(",")));
    }
    if !s.took_from.is_empty() {
        let took: Vec<String> = s.took_from.iter().map(|(k, n)| format!("{n} of {k}")).collect();
        parts.push(format!("took {}", took.join(", ")));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_worker_does_for_other_shards_reads_in_one_short_phrase() {
        let mut s = crate::aggregate::tests::status(0, 4);
        s.helping = vec![1, 2, 3];
        let report = |s: &shared::status::WorkerStatus, now: Vec<u32>| crate::aggregate::WorkerReport {
            slot: 0,
            url: "http://127.0.0.1:3001/".into(),
            health: crate::aggregate::WorkerHealth::Up,
            last_seen: Some(0),
            error: None,
            status: Some(s.clone()),
            restarts: 0,
            last_restart_reason: None,
            supervisor_state: None,
            helping_now: now,
        };
        assert_eq!(helping(&report(&s, vec![])), "", "shards it may help are not shown");
        s.took_from = [(1, 12), (3, 4)].into_iter().collect();
        assert_eq!(helping(&report(&s, vec![1, 3])), "helping 1,3 · took 12 of 1, 4 of 3");
        assert_eq!(helping(&report(&s, vec![])), "took 12 of 1, 4 of 3");
    }

    #[test]
    fn durations_read_in_at_most_two_units() {
        assert_eq!(duration_short(42), "42s");
        assert_eq!(duration_short(367), "6m 7s");
        assert_eq!(duration_short(7980), "2h 13m");
        assert_eq!(duration_short(3 * 86_400 + 4 * 3600 + 59), "3days 4h");
        assert_eq!(eta(None), "--");
    }

    #[test]
    fn bars_fill_in_eighths_and_keep_their_width() {
        assert_eq!(bar(0.0, 4), "░░░░");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(0.53, 4), "██▏░");
        assert_eq!(bar(7.0, 3).chars().count(), 3);
    }

    #[test]
    fn sizes_rates_and_times_fit_narrow_columns() {
        assert_eq!(bytes_short(250 << 20), "250M");
        assert_eq!(bytes_short(9_542_041), "9.1M");
        assert_eq!(bytes_short(3 << 29), "1.5G");
        assert_eq!(rate(0.0), "0/s");
        assert_eq!(rate(3.456), "3.46/s");
        assert_eq!(rate(1234.4), "1234/s");
        assert_eq!(job_time(Some(152.4)), "152ms");
        assert_eq!(job_time(Some(1234.0)), "1.23s");
        assert_eq!(percent(0.999), "99%");
        assert_eq!(fit("exit code 137", 8), "exit co…");
        assert_eq!(fit("short", 8), "short");
    }
}
