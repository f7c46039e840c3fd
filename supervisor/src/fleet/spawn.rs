//! Starting one worker process.
//!
//! The control token goes to the worker through an inherited pipe, never its argv or
//! environment, which any process of the same user (its handlers) can read in /proc.
//!
//! Before the worker executes, still in the forked child, it (1) joins its memory
//! cgroup, so everything it ever starts is counted; (2) arms the parent-death signal,
//! so it ends (with its handlers) when the supervisor dies; (3) checks that the supervisor is still its parent,
//! since the supervisor may have died between fork and prctl. PR_SET_PDEATHSIG fires
//! when the forking *thread* exits, so workers must be spawned from a thread that lives
//! as long as the supervisor: the supervisor's runtime is single-threaded and spawns
//! from the main thread.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

/// Starts `exe` with `args` and `env` in its own process group, stdout and stderr piped,
/// and hands it `control_token` through an inherited pipe (`--control-token-fd`).
pub fn spawn_worker(
    exe: &Path,
    args: &[OsString],
    env: &[(String, String)],
    control_token: &str,
    cgroup_procs: Option<CString>,
) -> std::io::Result<Child> {
    let token = token_pipe(control_token)?;
    let token_fd = token.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg("--control-token-fd")
        .arg(token_fd.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Its handlers could read it back from the worker's /proc/<pid>/environ.
        .env_remove("FLEET_CONTROL_TOKEN")
        // A supervisor run as a systemd notify service keeps its socket to itself: the
        // workers' readiness and watchdog are not the supervisor's (worker/src/notify.rs).
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let supervisor = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec; it only makes system calls
    // (fcntl, open, write, close, prctl, getppid) on data prepared before the fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The one descriptor the worker inherits beyond stdio; only this child's
            // copy loses close-on-exec, so no other process ever inherits it.
            let fd = BorrowedFd::borrow_raw(token_fd);
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
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
    let child = cmd.spawn();
    // Our read end closes here; the worker holds its own.
    drop(token);
    child
}

/// A pipe holding `token`, its write end closed: the read end, close-on-exec and above
/// the stdio numbers (which the child's stdio would replace).
fn token_pipe(token: &str) -> std::io::Result<OwnedFd> {
    let (reader, mut writer) = std::io::pipe()?;
    // A token is far below a pipe's capacity: this never blocks.
    writer.write_all(token.as_bytes())?;
    drop(writer);
    let reader = OwnedFd::from(reader);
    // `try_clone` duplicates to the lowest free number from 3 up, close-on-exec.
    if reader.as_raw_fd() < 3 { reader.try_clone() } else { Ok(reader) }
}
