//! `supervisor stop`: asks the running supervisor to drain (SIGTERM) and waits until it
//! has exited.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::storage::Store;

use crate::procfs;

/// Returns a line for the user.
pub async fn stop(db: &Store, timeout: Duration) -> anyhow::Result<String> {
    let Some(run) = db.latest_run().await? else {
        return Ok("no fleet has been started on this database; nothing to stop".into());
    };
    let pid = run.supervisor_pid;
    if !procfs::is_running(pid, "supervisor") {
        return Ok(format!("no fleet is running (the last one, supervisor pid {pid}, is {})", run.state));
    }
    // Let go of the database first: the supervisor checkpoints the WAL into the file when
    // it closes the last connection, and ours would be one.
    db.close().await;
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while procfs::is_running(pid, "supervisor") {
        if Instant::now() > deadline {
            bail!("the supervisor (pid {pid}) did not stop within {}", shared::units::format_duration(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!("fleet stopped (supervisor pid {pid})"))
}
