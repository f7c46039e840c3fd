//! Whether a recorded run still has a supervisor driving it, and how a run is named to
//! the user. Every command that reads run records (`start`'s takeover decision,
//! `status`, `stop`, `scale`) asks here, so they cannot disagree about who is alive.
//!
//! Whether a live-looking run is alive is known two ways. On this host, by its
//! supervisor's pid (gone means dead, at once). On another host the pid means nothing
//! here, so by its heartbeat, stamped every [`HEARTBEAT_EVERY`] by the database's clock:
//! older than [`STALE_AFTER_MS`] means dead.

use std::time::Duration;

use shared::storage::FleetRun;

use crate::procfs;

/// How often a running supervisor stamps its run record.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A run on another host whose heartbeat is this old is taken for dead (ms): ten beats
/// missed, so a database that is slow for a few seconds does not end a live run.
pub const STALE_AFTER_MS: i64 = 10_000;

/// Whether `prev` (a live-looking run) still has a supervisor driving it, at the
/// database's `db_now`.
pub fn is_alive(prev: &FleetRun, db_now: i64) -> bool {
    if shared::host::is_this_host(prev.host.as_deref()) {
        return procfs::is_running(prev.supervisor_pid, "supervisor");
    }
    match prev.heartbeat_at {
        Some(seen) => db_now - seen < STALE_AFTER_MS,
        // A supervisor from before heartbeats (a host not yet upgraded) never beats:
        // alive as far as anyone can tell, since it will not stop for a takeover.
        None => true,
    }
}

/// "supervisor pid 123 on host b" or, on this host, "supervisor pid 123".
pub fn describe(run: &FleetRun) -> String {
    match run.host.as_deref() {
        Some(host) if !shared::host::is_this_host(Some(host)) => {
            format!("supervisor pid {} on host {host}", run.supervisor_pid)
        }
        _ => format!("supervisor pid {}", run.supervisor_pid),
    }
}
