//! Writers of one SQLite file taking turns, without spinning.
//!
//! SQLite lets one writer in at a time and the others poll (our busy handler sleeps tens
//! of microseconds between tries). With a few dozen workers on two cores, that polling
//! is most of the CPU: at 32 workers one worker made about 1,500 lock attempts a
//! second, and the fleet's throughput fell to a third of its best. So a transaction
//! that writes first takes its turn on a file lock beside the database
//! (`<file>-writers`, `flock`): the kernel puts waiters to sleep and wakes one when the
//! lock is let go. While a worker waits, its finished jobs pile up, so its next
//! transaction carries more of them: the busier the database, the larger the batches.
//!
//! The turn only orders our own transactions. Anything else (a single statement, the
//! sqlite3 shell, wrangler) still meets SQLite's own lock and the busy handler, and a
//! turn that does not come within [`TURN_WAIT`] is skipped, so a stuck holder slows
//! writers down but never stops them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// Longest wait for a turn before going ahead without one.
const TURN_WAIT: Duration = Duration::from_secs(5);

/// The turn file of one database, opened on first use (never for a database that is
/// only read or refused).
#[derive(Debug)]
pub(crate) struct Turns {
    path: PathBuf,
    file: OnceLock<Option<File>>,
}

/// A writer's turn: held until dropped.
pub(crate) type Turn = Flock<File>;

impl Turns {
    /// The turns of the database at `db`.
    pub(crate) fn of(db: &std::path::Path) -> Turns {
        let mut path = db.as_os_str().to_owned();
        path.push("-writers");
        Turns { path: path.into(), file: OnceLock::new() }
    }

    /// Waits for this writer's turn; None if the file cannot be had or the wait passed
    /// [`TURN_WAIT`] (then SQLite's own lock orders the writers, as without turns).
    pub(crate) async fn take(&self) -> Option<Turn> {
        let file = self.file.get_or_init(|| {
            OpenOptions::new().create(true).truncate(false).read(true).write(true).mode(0o600).open(&self.path).ok()
        });
        let file = file.as_ref()?.try_clone().ok()?;
        // Free: taken here, without a thread hop.
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(turn) => return Some(turn),
            Err((file, _)) => file,
        };
        let wait = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive).ok());
        // A wait given up on still ends in the blocking thread: the turn it then gets is
        // dropped with the task's output, which lets it go.
        tokio::time::timeout(TURN_WAIT, wait).await.ok()?.ok()?
    }
}
