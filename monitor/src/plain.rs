//! Plain text for logs and pipes (`--once`, or stdout not a terminal): a snapshot is a
//! line of totals and a line per worker; failed attempts are printed once, as they
//! appear.

use std::collections::HashSet;
use std::io::{self, Write};

use shared::status::RecentError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Fleet, WorkerHealth, WorkerReport};
use crate::poll::Round;
use crate::text;

/// Errors `--once` lists under its snapshot.
const ONCE_ERRORS: usize = 5;

/// One snapshot: totals, then one line per worker.
pub fn snapshot(fleet: &Fleet) -> String {
    let t = fleet.totals();
    let mut s = format!(
        "{}  {}/{} finished ({})  done {}  failed {}  running {}  pending {}  rate {}  eta {}  workers {}/{} up{}{}\n",
        timestamp(fleet.at_ms()),
        t.finished(),
        t.total,
        text::percent(t.ratio()),
        t.done,
        t.failed,
        t.running,
        t.pending,
        text::rate_or_dash(t.rate_shown()),
        text::eta(t.eta_seconds),
        t.workers_up,
        t.workers,
        if t.complete { "" } else { "  (counts incomplete: some shards never reported)" },
        match t.as_of.filter(|_| t.stale) {
            Some(at) =>
                format!("  (no worker up: figures last seen {}, at {})", text::ago(fleet.at_ms(), at), timestamp(at)),
            None => String::new(),
        },
    );
    if let Some(db) = &t.database {
        let since = db.since.map(|at| format!(" since {}", text::ago(fleet.at_ms(), at))).unwrap_or_default();
        let why = db.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        s.push_str(&format!("database {}{since}{why}\n", db.state));
    }
    for w in fleet.workers() {
        s.push_str(&worker_line(fleet, w));
        s.push('\n');
    }
    s
}

fn worker_line(fleet: &Fleet, w: &WorkerReport) -> String {
    let port = w.place();
    let head = format!("  worker {:<2} {port:<6} {:<5}", w.worker_id(), w.health.as_str());
    let restarts = match (&w.last_restart_reason, w.restarts) {
        (_, 0) => "restarts 0".to_string(),
        (Some(why), n) => format!("restarts {n} (last: {why})"),
        (None, n) => format!("restarts {n}"),
    };
    let why = w.error.as_deref().unwrap_or("");
    match (w.health, &w.status) {
        (WorkerHealth::Up, Some(s)) => {
            let shard = s.shard;
            let ratio =
                if shard.total() == 0 { 0.0 } else { (shard.done + shard.failed) as f64 / shard.total() as f64 };
            let mem = match fleet.mem_limit(w) {
                Some(limit) if limit > 0 => format!(
                    "{}/{} {}",
                    text::bytes_short(s.rss_bytes),
                    text::bytes_short(limit),
                    text::percent(s.rss_bytes as f64 / limit as f64)
                ),
                _ => text::bytes_short(s.rss_bytes),
            };
            format!(
                "{head}  {:<8}  shard {}/{} {}  done {}  failed {}  pending {}  in flight {}  rate {}  avg {}  mem {mem}  {restarts}",
                s.state.as_str(),
                shard.done + shard.failed,
                shard.total(),
                text::percent(ratio),
                shard.done,
                shard.failed,
                shard.pending,
                s.in_flight.len(),
                text::rate(s.throughput_per_sec),
                text::job_time(s.avg_job_ms),
            ) + &match text::helping(w) {
                h if h.is_empty() => String::new(),
                h => format!("  {h}"),
            }
        }
        (WorkerHealth::Error, _) => format!("{head}  {why}  {restarts}"),
        _ => {
            let seen = w
                .last_seen
                .map_or_else(|| "never seen".into(), |t| format!("last seen {}", text::ago(fleet.at_ms(), t)));
            let supervisor = w.supervisor_state.map_or_else(String::new, |s| format!(" (supervisor: {s})"));
            format!("{head}  {seen}: {why}{supervisor}  {restarts}")
        }
    }
}

/// One failed attempt as a line.
fn error_line(worker_id: u32, e: &RecentError) -> String {
    format!(
        "{}  error  video {}  worker {worker_id}  attempt {}  {}: {}",
        timestamp(e.at),
        e.video_id,
        e.attempt,
        e.outcome.as_str(),
        text::one_line(&e.error)
    )
}

fn timestamp(ms: i64) -> String {
    shared::time_fmt::timestamp_ms(ms)
}

/// `--once`: the snapshot and the latest errors.
pub fn once(fleet: &Fleet, out: &mut impl Write) -> io::Result<()> {
    out.write_all(snapshot(fleet).as_bytes())?;
    for (id, e) in fleet.recent_errors().into_iter().take(ONCE_ERRORS) {
        writeln!(out, "{}", error_line(id, e))?;
    }
    out.flush()
}

/// A snapshot per round until cancelled or the reader goes away; errors printed as they
/// appear, each once.
pub async fn run(
    mut fleet: Fleet,
    mut rounds: mpsc::Receiver<Round>,
    out: &mut impl Write,
    cancel: CancellationToken,
) -> io::Result<()> {
    // Keys of the errors listed last round: an error is new when it was not among them.
    // Replaced each round, so it never holds more than the workers list.
    let mut listed: Option<HashSet<(u32, i64, u32, i64)>> = None;
    loop {
        let round = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = rounds.recv() => match r { Some(r) => r, None => return Ok(()) },
        };
        fleet.apply(round);
        let mut block = snapshot(&fleet);
        let errors = fleet.recent_errors();
        let key = |(id, e): &(u32, &RecentError)| (*id, e.video_id, e.attempt, e.at);
        let mut fresh: Vec<_> = match &listed {
            Some(seen) => errors.iter().filter(|e| !seen.contains(&key(e))).collect(),
            // The first snapshot shows only the latest few, like --once.
            None => errors.iter().take(ONCE_ERRORS).collect(),
        };
        fresh.reverse();
        for (id, e) in fresh {
            block.push_str(&error_line(*id, e));
            block.push('\n');
        }
        listed = Some(errors.iter().map(key).collect());
        match out.write_all(block.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::status;
    use crate::poll::Answer;
    use crate::targets::Target;
    use shared::status::{Outcome, ShardCounts, WorkerStatus};

    fn failed(video_id: i64, at: i64) -> RecentError {
        RecentError {
            video_id,
            attempt: 1,
            at,
            outcome: Outcome::Error,
            error: format!("exit code 1\nvideo {video_id}"),
        }
    }

    #[test]
    fn with_every_worker_down_a_snapshot_says_since_when_its_figures_stand_and_shows_no_rate_or_eta() {
        // 2027-01-15T08:00:00Z.
        const T0: i64 = 1_800_000_000_000;
        let target = Target { slot: 0, base: "http://127.0.0.1:3001".parse().unwrap(), expect: None, token: None };
        let mut fleet = Fleet::new(vec![target]);
        for s in 0..=22u64 {
            let answer = if s <= 10 {
                let shard = ShardCounts { pending: 20 - s, running: 1, done: s, failed: 0 };
                Answer::Up(Box::new(WorkerStatus { shard, ..status(0, 1) }))
            } else {
                Answer::Down("cannot connect: connection refused".into())
            };
            fleet.apply(Round { at_ms: T0 + s as i64 * 1000, answers: vec![answer], ..Round::default() });
        }
        let text = snapshot(&fleet);
        let totals = text.lines().next().unwrap();
        assert!(totals.contains("running 1  pending 10  rate --  eta --  workers 0/1 up"), "{totals}");
        assert!(totals.ends_with("(no worker up: figures last seen 12s ago, at 2027-01-15T08:00:10.000Z)"), "{totals}");
    }

    #[tokio::test]
    async fn each_failed_attempt_is_printed_once_as_it_appears() {
        let target = Target { slot: 0, base: "http://127.0.0.1:3001".parse().unwrap(), expect: None, token: None };
        let (tx, rx) = mpsc::channel(4);
        let errors = [
            vec![failed(7, 1_000)],
            vec![failed(9, 2_000), failed(7, 1_000)],
            vec![failed(9, 2_000), failed(7, 1_000)],
        ];
        for (i, recent_errors) in errors.into_iter().enumerate() {
            let s = WorkerStatus { recent_errors, ..status(0, 1) };
            tx.send(Round { at_ms: 3_000 + i as i64, answers: vec![Answer::Up(Box::new(s))], ..Round::default() })
                .await
                .unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        run(Fleet::new(vec![target]), rx, &mut out, CancellationToken::new()).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(" finished (").count(), 3, "a snapshot per round:\n{text}");
        assert_eq!(
            text.matches("error  video 7  worker 0  attempt 1  error: exit code 1 video 7").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("error  video 9 ").count(), 1, "{text}");
    }
}
