//! The dashboard in a pseudo-terminal: it draws, answers keys, and leaves the terminal
//! as it found it however it is ended.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shared::status::WorkerState;
use shared::storage::FleetRun;

use crate::helper::pty::PtyMonitor;
use crate::helper::{LONG, TestDb, WorkerBuilder, closed_port, fleet_run, wait_for};

const ENTER_ALTERNATE_SCREEN: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE_SCREEN: &str = "\x1b[?1049l";
const SHOW_CURSOR: &str = "\x1b[?25h";
const WAIT: Duration = Duration::from_secs(20);

/// Starts the dashboard on one worker that is not there, and waits for it to draw.
fn dashboard_of_a_down_worker(dir: &std::path::Path) -> PtyMonitor {
    let target = format!("127.0.0.1:{}", closed_port());
    let m = PtyMonitor::start(&["--targets", &target, "--interval", "200ms"], dir);
    m.wait_for_output(ENTER_ALTERNATE_SCREEN, WAIT);
    // ratatui moves the cursor over blanks, so words arrive one by one.
    m.wait_for_output("shardfleet", WAIT);
    m.wait_for_output("down", WAIT);
    assert!(!m.cooked(), "the dashboard runs the terminal in raw mode");
    m
}

fn assert_restored(m: &mut PtyMonitor) {
    let status = m.wait_exit(WAIT);
    assert!(status.success(), "exit status {status}; the terminal shows:\n{:?}", m.output());
    // The terminal's output is read by a thread: the last bytes can arrive just after
    // the exit is seen.
    m.wait_for_output(LEAVE_ALTERNATE_SCREEN, WAIT);
    m.wait_for_output(SHOW_CURSOR, WAIT);
    let out = m.output();
    let entered = out.rfind(ENTER_ALTERNATE_SCREEN).unwrap();
    let left = out.rfind(LEAVE_ALTERNATE_SCREEN).expect("the alternate screen was left");
    assert!(left > entered);
    assert!(out.rfind(SHOW_CURSOR).is_some_and(|shown| shown > entered), "the cursor is shown again");
    assert!(m.cooked(), "raw mode was switched off");
}

#[test]
fn the_dashboard_draws_in_a_terminal_quits_on_q_and_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = dashboard_of_a_down_worker(dir.path());
    m.wait_for_output("throughput", WAIT);
    m.type_keys(b"q");
    assert_restored(&mut m);
}

#[test]
fn ctrl_c_in_the_dashboard_quits_and_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = dashboard_of_a_down_worker(dir.path());
    m.type_keys(&[0x03]);
    assert_restored(&mut m);
}

#[test]
fn sigterm_to_the_dashboard_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = dashboard_of_a_down_worker(dir.path());
    kill(Pid::from_raw(m.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_restored(&mut m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_and_r_pause_and_resume_the_selected_worker_with_the_runs_token() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let token = "a-token-only-the-run-knows";
    let (workers, base) =
        WorkerBuilder::new(&t).sleep("60s").concurrency(1).args(["--control-token", token]).spawn_fleet(2);
    let run = FleetRun {
        bind: "127.0.0.1".into(),
        handler: "sleep: 60s".into(),
        concurrency: 1,
        control_token: Some(token.into()),
        ..fleet_run(2, base)
    };
    t.db.insert_run(&run).await.unwrap();

    let mut m = PtyMonitor::start(&["--db", t.path.to_str().unwrap()], t.dir.path());
    m.wait_for_output("workers", WAIT);
    // Down arrow selects worker 1, p pauses it.
    m.type_keys(b"\x1b[B");
    m.type_keys(b"p");
    wait_for(LONG, "worker 1 to be paused", || async { workers[1].worker_status().await.state == WorkerState::Paused })
        .await;
    assert_ne!(workers[0].worker_status().await.state, WorkerState::Paused, "only the selected worker is paused");
    m.wait_for_output("paused", WAIT);
    m.type_keys(b"r");
    wait_for(LONG, "worker 1 to resume", || async { workers[1].worker_status().await.state != WorkerState::Paused })
        .await;
    m.type_keys(b"q");
    assert_restored(&mut m);
}
