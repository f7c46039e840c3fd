//! `--sleep`: a built-in handler that waits and succeeds, for demos and benchmarks.

use shared::units::DurationRange;
use tokio_util::sync::CancellationToken;

use super::JobResult;

#[derive(Debug)]
pub struct SleepHandler {
    range: DurationRange,
}

impl SleepHandler {
    pub fn new(range: DurationRange) -> SleepHandler {
        SleepHandler { range }
    }

    pub async fn run(&self, cancel: &CancellationToken) -> JobResult {
        let d = self.range.sample();
        if d.is_zero() {
            return JobResult::success(String::new());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => JobResult::success(format!("slept {}ms", d.as_millis())),
            _ = cancel.cancelled() => JobResult::Cancelled,
        }
    }
}
