//! The one cancellation source: SIGINT, SIGTERM and SIGHUP (the terminal went away) all
//! cancel the same token, which every loop of the monitor watches.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `cancel` on the first of SIGINT, SIGTERM or SIGHUP.
pub fn on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = cancel.cancelled() => return,
        }
        cancel.cancel();
    });
    Ok(())
}
