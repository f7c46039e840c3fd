//! The one poll loop behind the page: it folds each round into the fleet and publishes
//! a snapshot that every request reads. Requests never poll, so fifty open tabs cost the
//! workers and the database nothing.

use std::collections::VecDeque;
use std::sync::Arc;

use shared::status::RecentError;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Fleet, Report};
use crate::poll::Round;
use crate::targets::{RunInfo, Target};

/// The chart's bucket: a minute, so that the last hour is sixty bars whatever the
/// polling interval.
pub const BUCKET_MS: i64 = 60_000;
/// Buckets kept: one hour.
pub const BUCKETS: usize = 60;
/// Recent errors the page lists; each worker keeps a few, a big fleet many.
const ERRORS_SHOWN: usize = 20;

/// Videos finished in one minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Unix milliseconds of the minute's start.
    pub start_ms: i64,
    pub done: u64,
    pub failed: u64,
}

/// Throughput of the last hour, minute by minute, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    buckets: VecDeque<Bucket>,
}

impl Throughput {
    /// Adds what a round at `at_ms` saw finish.
    pub fn add(&mut self, at_ms: i64, done: u64, failed: u64) {
        let start_ms = at_ms - at_ms.rem_euclid(BUCKET_MS);
        match self.buckets.back_mut() {
            Some(b) if b.start_ms == start_ms => {
                b.done += done;
                b.failed += failed;
            }
            _ => self.buckets.push_back(Bucket { start_ms, done, failed }),
        }
        while self.buckets.front().is_some_and(|b| b.start_ms <= start_ms - BUCKET_MS * BUCKETS as i64) {
            self.buckets.pop_front();
        }
    }

    pub fn buckets(&self) -> &VecDeque<Bucket> {
        &self.buckets
    }
}

/// What the page shows, as of the last round. Built once per round, read by every
/// request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `monitor --json`'s report; also `/api/fleet`.
    pub report: Report,
    /// The fleet the report came from, for per-worker figures (shard counts as best
    /// known, memory limits).
    pub fleet: Fleet,
    pub throughput: Throughput,
    /// With --db: the runs the fleet belongs to.
    pub runs: Vec<RunInfo>,
    /// Newest first, cut to a screenful: `(worker id, error)`.
    pub recent_errors: Vec<(u32, RecentError)>,
    /// Where each worker is, with its run's token: for sending commands, never shown.
    pub targets: Vec<Target>,
}

impl Snapshot {
    /// Before the first round: the fleet as discovered, nothing polled yet.
    pub fn initial(fleet: Fleet) -> Snapshot {
        Snapshot {
            report: fleet.report(),
            targets: fleet.targets().to_vec(),
            fleet,
            throughput: Throughput::default(),
            runs: Vec::new(),
            recent_errors: Vec::new(),
        }
    }

    /// Whether any round has been folded in yet.
    pub fn polled(&self) -> bool {
        self.fleet.rounds() > 0
    }
}

/// Folds rounds into `fleet` and publishes a snapshot after each, until the poller stops
/// or `cancel` fires.
pub async fn run(
    mut fleet: Fleet,
    mut rounds: mpsc::Receiver<Round>,
    publish: watch::Sender<Arc<Snapshot>>,
    cancel: CancellationToken,
) {
    let mut throughput = Throughput::default();
    let mut runs = Vec::new();
    loop {
        let round = tokio::select! {
            _ = cancel.cancelled() => return,
            round = rounds.recv() => match round {
                Some(r) => r,
                None => return,
            },
        };
        if let Some(refresh) = &round.records {
            runs = refresh.runs.clone();
            if refresh.new_run.is_some() {
                // A new run is a new fleet (Fleet::apply starts over): so is its chart.
                throughput = Throughput::default();
            }
        }
        let at_ms = round.at_ms;
        fleet.apply(round);
        let (done, failed) = fleet.last_increase();
        throughput.add(at_ms, done, failed);
        let recent_errors = fleet.recent_errors().into_iter().take(ERRORS_SHOWN).map(|(k, e)| (k, e.clone())).collect();
        let snapshot = Snapshot {
            report: fleet.report(),
            fleet: fleet.clone(),
            throughput: throughput.clone(),
            runs: runs.clone(),
            recent_errors,
            targets: fleet.targets().to_vec(),
        };
        publish.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_sums_rounds_by_minute_and_keeps_one_hour() {
        let mut t = Throughput::default();
        t.add(0, 1, 0);
        t.add(59_999, 2, 1);
        t.add(60_000, 5, 0);
        let b: Vec<_> = t.buckets().iter().map(|b| (b.start_ms, b.done, b.failed)).collect();
        assert_eq!(b, [(0, 3, 1), (60_000, 5, 0)]);
        t.add(BUCKET_MS * 60, 1, 1);
        assert_eq!(t.buckets().front().unwrap().start_ms, 60_000, "the first minute is over an hour old");
        assert_eq!(t.buckets().len(), 2);
    }
}
