//! Starting one worker process.
//!
//! Before the worker executes, still in the forked child, it (1) joins its memory
//! cgroup, so everything it ever starts is counted; (2) arms the parent-death signal,
//! so it ends (with its handlers) when the supervisor dies; (3) checks that the supervisor is still its parent,
//! since the supervisor may have died between fork and prctl. PR_SET_PDEATHSIG fires
//! when the forking *thread* exits, so workers must be spawned from a thread that lives
//! as long as the supervisor: the supervisor's runtime is single-threaded and spawns
//! from the main thread.

use std::ffi::{CString, OsString};
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

/// Starts `exe` with `args` and `env` in its own process group, stdout and stderr piped.
pub fn spawn_worker(
    exe: &Path,
    args: &[OsString],
    env: &[(String, String)],
    cgroup_procs: Option<CString>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let supervisor = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec; it only makes system calls
    // (open, write, close, prctl, getppid) on data prepared before the fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &cgroup_procs {
                let fd =
                    nix::fcntl::open(procs.as_c_str(), nix::fcntl::OFlag::O_WRONLY, nix::sys::stat::Mode::empty())?;
                let written = nix::unistd::write(&fd, b"0");
                drop(fd);
                written?;
            }
            // SIGUSR2, not SIGKILL: the worker ends its handlers before it exits
            // (worker/src/orphan.rs); a SIGKILLed worker would leave them running.
            nix::sys::prctl::set_pdeathsig(Signal::SIGUSR2)?;
            if nix::unistd::getppid() != supervisor {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}
