//! Test helpers of the monitor: the `monitor` binary, its JSON, a pseudo-terminal, and
//! a snapshot file compared or updated. Databases and workers come from `testkit`.

#![allow(dead_code)]

pub mod pty;
pub mod snapshot;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub use testkit::{TestDb, WorkerProc, closed_port, spawn_fleet, spawn_worker_on as spawn_worker, wait_for};

pub const LONG: Duration = Duration::from_secs(60);

pub fn monitor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_monitor")
}

/// Runs `monitor` with `args` to its end, in `cwd`, with no token in the environment.
pub fn run_monitor(args: &[&str], cwd: &Path) -> Output {
    Command::new(monitor_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("FLEET_DB")
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `monitor --json` with `args`, parsed.
pub fn monitor_json(args: &[&str], cwd: &Path) -> monitor::Report {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_monitor(&all, cwd);
    assert!(out.status.success(), "monitor failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
