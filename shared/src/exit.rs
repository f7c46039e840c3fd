//! The worker's exit codes. The supervisor reads them to tell a crash, which a restart
//! may mend, from an end that no restart can.

/// Stopped on request, or its shard is done.
pub const WORKER_OK: u8 = 0;
/// A runtime failure (the database went away, ...): worth a restart.
pub const WORKER_FAILURE: u8 = 1;
/// Bad flags: a restart would fail the same way.
pub const WORKER_USAGE: u8 = 2;
/// The database file is damaged (SQLITE_CORRUPT or SQLITE_NOTADB): no worker can use it
/// until it is recovered, so the fleet ends instead of crash-looping.
pub const WORKER_DB_CORRUPT: u8 = 3;
