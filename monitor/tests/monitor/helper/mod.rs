//! Test helpers of the monitor: the `monitor` binary, its JSON, a pseudo-terminal, and
//! a snapshot file compared or updated. Databases and workers come from `testkit`.

#![allow(dead_code)]

pub mod pty;
pub mod snapshot;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shared::storage::FleetRun;

pub use testkit::{TestDb, WorkerBuilder, WorkerProc, closed_port, wait_for};

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

/// A run record as `supervisor start` writes it, for `n` workers from `base_port`.
pub fn fleet_run(workers: i64, base_port: u16) -> FleetRun {
    FleetRun {
        supervisor_pid: std::process::id() as i64,
        bind: "0.0.0.0".into(),
        handler: "sleep: 0s".into(),
        concurrency: 4,
        ..FleetRun::example(workers, base_port as i64)
    }
}

/// Starts `monitor` with `args` (no token in the environment) and forwards each line it
/// prints to the returned channel.
pub fn spawn_monitor_lines(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut monitor = Command::new(monitor_bin())
        .args(args)
        .env_remove("FLEET_CONTROL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (monitor, rx)
}

/// The next line from `rx` that contains `wanted`; panics after 20 s without one.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, wanted: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no line with {wanted:?}"));
        if line.contains(wanted) {
            return line;
        }
    }
}
