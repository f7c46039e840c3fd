//! Pacing calls to an external API: a fixed spacing from `--rate` and `--min-delay`,
//! plus an adaptive delay that doubles when the API pushes back (429, 503, refused
//! connections) and relaxes as calls succeed again. Shared by every job of a worker.

use std::sync::Mutex;
use std::time::Duration;

use shared::units::Rate;
use tokio::time::Instant;

/// Longest the adaptive delay grows to.
const MAX_ADAPTIVE: Duration = Duration::from_secs(30);
/// Where the adaptive delay starts on the first push-back.
const FIRST_ADAPTIVE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Pacer {
    /// The spacing the flags ask for: the larger of the rate's interval and min-delay.
    spacing: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The earliest moment the next call may start.
    next_at: Instant,
    /// Extra spacing learnt from push-back.
    adaptive: Duration,
}

impl Pacer {
    pub fn new(rate: Option<Rate>, min_delay: Option<Duration>) -> Pacer {
        let spacing = rate.map(|r| r.interval()).unwrap_or_default().max(min_delay.unwrap_or_default());
        Pacer { spacing, state: Mutex::new(State { next_at: Instant::now(), adaptive: Duration::ZERO }) }
    }

    /// Reserves the next slot and waits for it. Slots are handed out in call order, so
    /// concurrent jobs queue rather than burst.
    pub async fn acquire(&self) {
        let slot = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = s.next_at.max(now);
            s.next_at = slot + self.spacing + s.adaptive;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// The API pushed back: slow down, and wait at least `retry_after` if it said so.
    pub fn push_back(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.adaptive = (s.adaptive * 2).max(FIRST_ADAPTIVE).min(MAX_ADAPTIVE);
        let wait = retry_after.unwrap_or(s.adaptive).min(Duration::from_secs(3600));
        s.next_at = s.next_at.max(Instant::now() + wait);
    }

    /// A call succeeded: relax the adaptive delay by a quarter.
    pub fn recovered(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.adaptive = s.adaptive.mul_f64(0.75);
        if s.adaptive < Duration::from_millis(5) {
            s.adaptive = Duration::ZERO;
        }
    }

    /// The adaptive part of the spacing now.
    pub fn adaptive_delay(&self) -> Duration {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).adaptive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_by_the_rate() {
        let p = Pacer::new(Some("5/s".parse().unwrap()), None);
        let start = Instant::now();
        for _ in 0..6 {
            p.acquire().await;
        }
        // Six calls at 5/s: the sixth starts one second after the first.
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn min_delay_wins_over_a_looser_rate() {
        let p = Pacer::new(Some("100/s".parse().unwrap()), Some(Duration::from_millis(250)));
        let start = Instant::now();
        p.acquire().await;
        p.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn push_back_slows_down_honours_retry_after_and_recovers() {
        let p = Pacer::new(None, None);
        p.acquire().await;
        p.push_back(Some(Duration::from_secs(2)));
        let start = Instant::now();
        p.acquire().await;
        assert!(Instant::now() - start >= Duration::from_secs(2));
        p.push_back(None);
        assert_eq!(p.adaptive_delay(), Duration::from_millis(200));
        for _ in 0..20 {
            p.recovered();
        }
        assert_eq!(p.adaptive_delay(), Duration::ZERO);
    }
}
