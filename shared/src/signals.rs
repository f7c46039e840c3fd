//! Signals, turned into a binary's one cancellation source: the first SIGTERM or SIGINT
//! starts a drain, a second one means "now".

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Listens for SIGTERM and SIGINT: the first cancels `shutdown`, the second `hurry`.
pub fn on_signals(shutdown: CancellationToken, hurry: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                shutdown.cancel();
            } else {
                hurry.cancel();
                return;
            }
        }
    });
    Ok(())
}
