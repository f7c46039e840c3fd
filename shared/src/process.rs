//! Ending a process and everything it started: each worker and each handler leads a
//! process group of its own, so one signal to the group reaches its whole tree.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// SIGKILLs process group `pgid`. A group already gone is no error: whoever asked wanted
/// it gone.
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else { return };
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn a_killed_group_takes_its_children_with_it() {
        // A shell leading its own group, with a child of its own.
        let mut leader =
            std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).process_group(0).spawn().expect("sh runs");
        kill_group(leader.id());
        let status = leader.wait().unwrap();
        assert!(!status.success());
    }
}
