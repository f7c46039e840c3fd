//! Why a worker process ended (or never started), as a type. Its words (`Display`) are
//! what the database keeps as a restart's or an event's reason, so they stay exactly as
//! they were while those columns are text; decisions read the variant, never the words.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use shared::status::Outcome;
use shared::time_fmt;
use shared::units::{ByteSize, human_bytes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited by itself with this code.
    Code(i32),
    /// A signal ended it, and nothing tells us it was the memory limit.
    Signal(i32),
    /// Neither a code nor a signal.
    Ended,
    /// Waiting for it failed, so how it ended is unknown.
    Unwaitable(String),
    /// The kernel's OOM killer ended it inside its cgroup.
    KernelOom { limit: ByteSize },
    /// The sampler found the worker itself to be the bulk of a tree over the limit, and
    /// killed it.
    SampledOverLimit { tree: u64, limit: ByteSize },
    /// Killed: it never answered /health within its allowance.
    NeverReady { allowance: Duration },
    /// Killed: /health stopped answering for this long.
    Unhealthy { silent_for: Duration },
    /// Killed: still running when the stop's grace period ran out.
    GraceOver,
    /// Not started: its memory cgroup could not be set up.
    NoCgroup(String),
    /// Not started: the worker binary could not be run.
    SpawnFailed { exe: PathBuf, error: String },
    /// Started, but gone before its pid could be read.
    Vanished,
}

impl ExitCause {
    /// How a process ended, from its exit status: a SIGKILL counts as the memory limit
    /// only when its cgroup saw a new OOM kill (`oom_killed`), since the supervisor and
    /// users send SIGKILL too.
    pub fn of(status: &std::io::Result<ExitStatus>, oom_killed: bool, limit: ByteSize) -> ExitCause {
        let status = match status {
            Ok(s) => s,
            Err(e) => return ExitCause::Unwaitable(e.to_string()),
        };
        if oom_killed && status.signal() == Some(Signal::SIGKILL as i32) {
            return ExitCause::KernelOom { limit };
        }
        match (status.code(), status.signal()) {
            (Some(c), _) => ExitCause::Code(c),
            (_, Some(sig)) => ExitCause::Signal(sig),
            _ => ExitCause::Ended,
        }
    }

    /// Whether the memory limit ended the worker (the kernel's or our sampler's).
    pub fn is_memory(&self) -> bool {
        matches!(self, ExitCause::KernelOom { .. } | ExitCause::SampledOverLimit { .. })
    }

    /// Whether the supervisor ended it on purpose, rather than it crashing.
    pub fn is_our_kill(&self) -> bool {
        matches!(
            self,
            ExitCause::SampledOverLimit { .. }
                | ExitCause::NeverReady { .. }
                | ExitCause::Unhealthy { .. }
                | ExitCause::GraceOver
        )
    }

    /// The outcome of the attempts a dead worker held when they are handed back: the
    /// memory limit is told apart, so those attempts read as memory failures.
    pub fn outcome(&self) -> Outcome {
        if self.is_memory() { Outcome::Memory } else { Outcome::Crashed }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCause::Code(c) => write!(f, "exit code {c}"),
            ExitCause::Signal(sig) => {
                let name = Signal::try_from(*sig).map(|s| s.as_str()).unwrap_or("unknown");
                write!(f, "killed by signal {sig} ({name})")
            }
            ExitCause::Ended => f.write_str("ended"),
            ExitCause::Unwaitable(e) => write!(f, "could not be waited for: {e}"),
            ExitCause::KernelOom { limit } => {
                write!(f, "memory limit: the kernel killed the worker in its cgroup (limit {limit})")
            }
            ExitCause::SampledOverLimit { tree, limit } => {
                write!(f, "memory limit: the worker's tree used {} (limit {limit}, sampled)", human_bytes(*tree))
            }
            ExitCause::NeverReady { allowance } => {
                write!(f, "failed health check: never answered /health in {}", time_fmt::duration(*allowance))
            }
            ExitCause::Unhealthy { silent_for } => {
                write!(f, "failed health check: /health did not answer for {}", time_fmt::duration(*silent_for))
            }
            ExitCause::GraceOver => f.write_str("did not stop within the grace period"),
            ExitCause::NoCgroup(e) => write!(f, "cannot set up its memory cgroup: {e}"),
            ExitCause::SpawnFailed { exe, error } => write!(f, "cannot start {}: {error}", exe.display()),
            ExitCause::Vanished => f.write_str("exited before it could be watched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: ByteSize = ByteSize(200 << 20);

    fn exited(code: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    fn signalled(sig: Signal) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(sig as i32))
    }

    #[test]
    fn a_sigkill_after_an_oom_kill_in_its_cgroup_is_the_memory_limit() {
        let cause = ExitCause::of(&signalled(Signal::SIGKILL), true, LIMIT);
        assert_eq!(cause, ExitCause::KernelOom { limit: LIMIT });
        assert_eq!(cause.outcome(), Outcome::Memory);
        assert_eq!(cause.to_string(), "memory limit: the kernel killed the worker in its cgroup (limit 200M)");
    }

    #[test]
    fn a_sigkill_without_an_oom_kill_is_a_plain_signal() {
        let cause = ExitCause::of(&signalled(Signal::SIGKILL), false, LIMIT);
        assert_eq!(cause.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(cause.outcome(), Outcome::Crashed);
    }

    #[test]
    fn an_oom_kill_does_not_explain_an_exit_with_a_code() {
        // The OOM killer may have hit a handler in the same cgroup; the worker then exits
        // on its own, and that is what its restart says.
        let cause = ExitCause::of(&exited(1), true, LIMIT);
        assert_eq!(cause.to_string(), "exit code 1");
        assert!(!cause.is_memory());
    }

    #[test]
    fn a_failed_wait_says_so() {
        let cause = ExitCause::of(&Err(std::io::Error::other("gone")), false, LIMIT);
        assert_eq!(cause.to_string(), "could not be waited for: gone");
    }

    #[test]
    fn the_sampler_kill_counts_as_memory_and_as_ours() {
        let cause = ExitCause::SampledOverLimit { tree: 300 << 20, limit: LIMIT };
        assert!(cause.is_memory() && cause.is_our_kill());
        assert_eq!(cause.to_string(), "memory limit: the worker's tree used 300.0 MiB (limit 200M, sampled)");
    }

    #[test]
    fn health_kills_are_ours_and_not_memory() {
        for cause in [
            ExitCause::NeverReady { allowance: Duration::from_secs(40) },
            ExitCause::Unhealthy { silent_for: Duration::from_millis(10_500) },
            ExitCause::GraceOver,
        ] {
            assert!(cause.is_our_kill(), "{cause}");
            assert_eq!(cause.outcome(), Outcome::Crashed, "{cause}");
        }
    }

    #[test]
    fn the_words_kept_in_the_database_are_unchanged() {
        let cases = [
            (ExitCause::Code(3), "exit code 3"),
            (ExitCause::Signal(15), "killed by signal 15 (SIGTERM)"),
            (ExitCause::Signal(99), "killed by signal 99 (unknown)"),
            (ExitCause::Ended, "ended"),
            (
                ExitCause::NeverReady { allowance: Duration::from_secs(40) },
                "failed health check: never answered /health in 40s",
            ),
            (
                ExitCause::Unhealthy { silent_for: Duration::from_secs(12) },
                "failed health check: /health did not answer for 12s",
            ),
            (ExitCause::GraceOver, "did not stop within the grace period"),
            (ExitCause::NoCgroup("no room".into()), "cannot set up its memory cgroup: no room"),
            (
                ExitCause::SpawnFailed { exe: "/bin/worker".into(), error: "denied".into() },
                "cannot start /bin/worker: denied",
            ),
            (ExitCause::Vanished, "exited before it could be watched"),
        ];
        for (cause, words) in cases {
            assert_eq!(cause.to_string(), words);
            assert!(!cause.is_memory(), "{words}");
        }
    }
}
