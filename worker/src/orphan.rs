//! Ending with the supervisor. The supervisor arms our parent-death signal as SIGUSR2
//! and tells us its pid (`FLEET_SUPERVISOR_PID`). When it dies, the kernel sends SIGUSR2;
//! a watcher thread (independent of the async runtime, which may be busy) sees it, or
//! sees that our parent changed, marks the worker as leaving, kills every running
//! handler's process group, and exits at once. Jobs ended that way are not failed
//! attempts: nothing about them is written, and the next supervisor hands back the
//! videos we held.
//!
//! A plain SIGKILL as the parent-death signal would leave the handlers running: they
//! lead process groups of their own, and nothing else ends them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Exit code of a worker that ended because its supervisor died.
pub const EXIT_ORPHANED: i32 = 70;

static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_parent_death(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    PARENT_GONE.store(true, Ordering::SeqCst);
}

/// Starts watching for the supervisor's death, if one started us.
pub fn watch() {
    let Some(supervisor) = std::env::var("FLEET_SUPERVISOR_PID").ok().and_then(|p| p.parse::<i32>().ok()) else {
        return;
    };
    let action = SigAction::new(SigHandler::Handler(on_parent_death), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only stores to an atomic.
    if let Err(e) = unsafe { sigaction(Signal::SIGUSR2, &action) } {
        tracing::warn!("cannot watch for the supervisor's death: {e}");
    }
    std::thread::Builder::new()
        .name("orphan-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                let parent = nix::unistd::getppid().as_raw();
                if PARENT_GONE.load(Ordering::SeqCst) || parent != supervisor {
                    // Marks the worker as leaving before the kills, so the killed jobs
                    // are handed back, never recorded as failed attempts.
                    crate::handler::abandon_all();
                    // Our stderr was a pipe to the supervisor and may have no reader now:
                    // a failed write must not stop the exit (eprintln! would panic).
                    let _ = writeln!(
                        std::io::stderr(),
                        "worker: the supervisor (pid {supervisor}) is gone; ended the handlers and exiting"
                    );
                    std::process::exit(EXIT_ORPHANED);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!("cannot start the supervisor watch: {e}"));
}
