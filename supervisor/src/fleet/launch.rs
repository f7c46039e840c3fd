//! Launching workers: when each slot starts (all at once, or one after another with
//! --stagger, and again after a backoff), its command line and environment, and the
//! spawn itself (`spawn.rs`: the token pipe, the cgroup join, the parent-death signal).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use shared::storage::{DbLocation, now_ms};
use shared::time_fmt;

use super::config::{FleetConfig, Layout};
use super::exit_cause::ExitCause;
use super::slot::SlotState;
use super::state::{Event, Fleet};
use super::{output, spawn};

/// The `worker` binary: beside our own executable, or `FLEET_WORKER_BIN`.
pub(super) fn worker_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLEET_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot find the supervisor's own executable")?;
    let exe = me.with_file_name("worker");
    if !exe.exists() {
        bail!("the worker binary is not at {} (build the workspace, or set FLEET_WORKER_BIN)", exe.display());
    }
    Ok(exe)
}

/// Worker `k`'s command line: its shard, its port, and the fleet's flags it needs. The
/// control token is not among them: it goes through a pipe (`spawn.rs`).
fn worker_args(config: &FleetConfig, layout: &Layout, k: u32, port: u16, db: &DbLocation) -> Vec<OsString> {
    let mut argv: Vec<OsString> = [
        "--worker-id".to_string(),
        k.to_string(),
        "--workers".into(),
        layout.workers.to_string(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        config.bind.to_string(),
        "--mem-limit".into(),
        config.mem_limit.to_string(),
        "--log-format".into(),
        config.log_format.to_string(),
        "--db".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    argv.push(db.as_arg());
    argv.extend(config.handler.to_args());
    argv.extend(config.job.to_args().into_iter().map(OsString::from));
    argv
}

/// What a worker finds in its environment beyond the supervisor's own: how often it was
/// restarted and why, and plain log lines (the supervisor timestamps them).
fn worker_env(restarts: u32, last_reason: Option<&ExitCause>) -> Vec<(String, String)> {
    let mut env = vec![
        ("FLEET_RESTARTS".to_string(), restarts.to_string()),
        ("FLEET_LOG_NO_TIME".into(), "1".into()),
        ("FLEET_SUPERVISOR_PID".into(), std::process::id().to_string()),
        ("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| shared::logging::DEFAULT_LOG_FILTER.into())),
    ];
    if let Some(r) = last_reason {
        env.push(("FLEET_LAST_RESTART_REASON".into(), r.to_string()));
    }
    env
}

impl Fleet {
    /// Starts slots whose time has come: first starts (staggered) and restarts.
    pub(super) fn start_due(&mut self) {
        if !self.phase.is_running() {
            return;
        }
        let now = Instant::now();
        let (stagger, ready_timeout) = (self.config.stagger, self.config.ready_timeout);
        while self.first_starts.next < self.slots.len() {
            if !stagger.is_zero() && self.first_starts.next > 0 {
                let prev = &self.slots[self.first_starts.next - 1];
                let prev_settled = prev.state() == SlotState::Running
                    || prev.started().is_none_or(|s| now.saturating_duration_since(s) >= ready_timeout);
                let gap_over = self.first_starts.last.is_none_or(|t| now.saturating_duration_since(t) >= stagger);
                if !(prev_settled && gap_over) {
                    break;
                }
                if prev.state() == SlotState::Starting {
                    tracing::warn!(
                        "worker {} did not answer /health within {}; reported as not ready, starting the next",
                        prev.id,
                        time_fmt::duration(ready_timeout)
                    );
                }
            }
            let k = self.slots[self.first_starts.next].id;
            self.first_starts.next += 1;
            self.start_slot(k);
            // The gap runs from the spawn, not from this pass's start: spawning takes a
            // few milliseconds, which the recorded start times would otherwise show as a
            // gap shorter than --stagger.
            self.first_starts.last = Some(Instant::now());
        }
        for k in self.ids() {
            if self.slot(k).due().is_some_and(|t| t <= now) {
                if matches!(self.slot(k).state(), SlotState::Errored(_)) {
                    tracing::info!("worker {k}: cooldown over; trying it again");
                }
                self.start_slot(k);
            }
        }
    }

    /// The next moment a timer of ours needs the loop: a restart, or the stagger.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let mut wake = self.slots.iter().filter_map(|s| s.due()).min();
        let next = self.first_starts.next;
        if next < self.slots.len() && next > 0 {
            let prev = &self.slots[next - 1];
            let t = [
                self.first_starts.last.map(|t| t + self.config.stagger),
                prev.started().map(|s| s + self.config.ready_timeout),
            ]
            .into_iter()
            .flatten()
            .max();
            // Readiness itself arrives as a health event; this is the fallback.
            wake = [wake, t.map(|t| t.min(Instant::now() + self.config.health_interval))].into_iter().flatten().min();
        }
        wake
    }

    /// Starts worker `k` in a fresh cgroup; a start that fails counts as a crash.
    fn start_slot(&mut self, k: u32) {
        if let Some(old) = self.slot_mut(k).take_cgroup() {
            self.memory.release_worker(&old);
        }
        match self.memory.prepare_worker(k) {
            Ok(cgroup) => self.slot_mut(k).set_cgroup(cgroup),
            Err(e) => {
                self.crashed(k, ExitCause::NoCgroup(format!("{e:#}")));
                return;
            }
        }
        let slot = self.slot(k);
        let args = worker_args(&self.config, &self.layout, k, slot.port, &self.db_path);
        let env = worker_env(slot.restarts(), slot.last_reason());
        let child = spawn::spawn_worker(&self.exe, &args, &env, &self.token, slot.cgroup_procs());
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.crashed(k, ExitCause::SpawnFailed { exe: self.exe.clone(), error: e.to_string() });
                return;
            }
        };
        let Some(pid) = child.id() else {
            self.crashed(k, ExitCause::Vanished);
            return;
        };
        output::forward(k, child.stdout.take(), child.stderr.take(), self.logs.clone());
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::Exited { slot: k, pid, status });
        });
        self.slot_mut(k).spawned(pid, Instant::now(), now_ms());
        tracing::info!("worker {k} started (pid {pid}, port {})", self.slot(k).port);
        self.write_record(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::config::tests::config;

    fn value_of(argv: &[OsString], flag: &str) -> Option<String> {
        let at = argv.iter().position(|a| a == flag)?;
        argv.get(at + 1).map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn a_worker_is_told_its_shard_its_port_and_the_fleet_s_limit() {
        let (config, layout) = config(&["--workers", "3", "--sleep", "1ms", "--control-token", "secret-token-1234"]);
        let argv = worker_args(&config, &layout, 2, 3003, &DbLocation::Sqlite("/data/fleet.db".into()));
        assert_eq!(value_of(&argv, "--worker-id").as_deref(), Some("2"));
        assert_eq!(value_of(&argv, "--workers").as_deref(), Some("3"));
        assert_eq!(value_of(&argv, "--port").as_deref(), Some("3003"));
        assert_eq!(value_of(&argv, "--mem-limit").as_deref(), Some("250M"));
        assert_eq!(value_of(&argv, "--db").as_deref(), Some("/data/fleet.db"));
        assert_eq!(value_of(&argv, "--sleep").as_deref(), Some("1ms"));
        assert_eq!(value_of(&argv, "--log-format").as_deref(), Some("text"));
    }

    #[test]
    fn the_control_token_is_never_on_a_worker_s_command_line_or_in_its_environment() {
        let (config, layout) = config(&["--workers", "1", "--sleep", "1ms", "--control-token", "secret-token-1234"]);
        let argv = worker_args(&config, &layout, 0, 3001, &DbLocation::Sqlite("/data/fleet.db".into()));
        assert!(argv.iter().all(|a| !a.to_string_lossy().contains("secret-token-1234")), "{argv:?}");
        let env = worker_env(0, None);
        assert!(env.iter().all(|(k, v)| !k.contains("TOKEN") && !v.contains("secret-token-1234")), "{env:?}");
    }

    #[test]
    fn a_restarted_worker_hears_how_often_and_why() {
        let env = worker_env(2, Some(&ExitCause::Code(1)));
        let get = |k: &str| env.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
        assert_eq!(get("FLEET_RESTARTS"), Some("2"));
        assert_eq!(get("FLEET_LAST_RESTART_REASON"), Some("exit code 1"));
    }

    #[test]
    fn a_first_start_has_no_last_restart_reason() {
        assert!(worker_env(0, None).iter().all(|(name, _)| name != "FLEET_LAST_RESTART_REASON"));
    }
}
