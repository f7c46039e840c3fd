//! The process's stop signals as the loop hears them: the binary turns SIGTERM and
//! SIGINT into two cancellation tokens (`shared::signals`), and here they become one
//! typed request each, heard once, so no flag has to remember that a token was seen.

use tokio_util::sync::CancellationToken;

/// A request to stop, by signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// The first signal: drain.
    Once,
    /// The second: stop the jobs now.
    Twice,
}

/// The two tokens, and how many of their requests the loop has heard.
#[derive(Debug)]
pub struct StopSignals {
    shutdown: CancellationToken,
    hurry: CancellationToken,
    heard: u8,
}

impl StopSignals {
    pub fn new(shutdown: CancellationToken, hurry: CancellationToken) -> StopSignals {
        StopSignals { shutdown, hurry, heard: 0 }
    }

    /// The next request not yet heard; pending once both were. Cancel-safe: a request
    /// counts as heard only when this returns it.
    pub async fn next(&mut self) -> StopSignal {
        match self.heard {
            0 => {
                let signal = tokio::select! {
                    biased;
                    _ = self.hurry.cancelled() => StopSignal::Twice,
                    _ = self.shutdown.cancelled() => StopSignal::Once,
                };
                self.heard = if signal == StopSignal::Twice { 2 } else { 1 };
                signal
            }
            1 => {
                self.hurry.cancelled().await;
                self.heard = 2;
                StopSignal::Twice
            }
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_signal_is_heard_once_and_then_nothing_more() {
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        let mut signals = StopSignals::new(shutdown.clone(), hurry.clone());
        shutdown.cancel();
        assert_eq!(signals.next().await, StopSignal::Once);
        hurry.cancel();
        assert_eq!(signals.next().await, StopSignal::Twice);
        assert!(tokio::time::timeout(Duration::from_secs(60), signals.next()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hurry_without_a_first_signal_is_heard_as_the_second() {
        let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
        let mut signals = StopSignals::new(shutdown, hurry.clone());
        hurry.cancel();
        assert_eq!(signals.next().await, StopSignal::Twice);
        assert!(tokio::time::timeout(Duration::from_secs(60), signals.next()).await.is_err());
    }
}
