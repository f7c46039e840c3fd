//! A worker drained through its own `POST /drain` exits 0; the real supervisor marks
//! its slot `drained` and leaves it down, until a resume request in the database (what
//! the monitor's page writes) brings it back.

use std::process::Stdio;
use std::time::Duration;

use shared::storage::{FleetWorker, SlotStatus};
use testkit::{Running, TestDb, free_ports, supervisor, wait_for};

const LONG: Duration = Duration::from_secs(90);
const TOKEN: &str = "drain-test-token-1234";

async fn slot(t: &TestDb, k: usize) -> Option<FleetWorker> {
    t.slots().await.into_iter().nth(k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_is_marked_drained_and_not_restarted_until_it_is_resumed() {
    let t = TestDb::new().await;
    t.seed(400).await;
    let base = free_ports(2);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", "2", "--base-port", &base.to_string(), "--mem-limit", "250M"])
        .args(["--sleep", "50ms", "--control-token", TOKEN, "--db"])
        .arg(&t.path);
    let mut sup = Running(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("supervisor starts"));
    wait_for(LONG, "both workers running", || async {
        let ws = t.slots().await;
        ws.len() == 2 && ws.iter().all(|w| w.state == SlotStatus::Running)
    })
    .await;
    let first_pid = slot(&t, 1).await.unwrap().pid;

    let drain = format!("http://127.0.0.1:{}/drain", base + 1);
    let answer = testkit::http().post(&drain).bearer_auth(TOKEN).send().await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    wait_for(LONG, "worker 1 drained", || async { slot(&t, 1).await.is_some_and(|w| w.state == SlotStatus::Drained) })
        .await;
    // Three record refreshes later it is still down, and no restart was counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = slot(&t, 1).await.unwrap();
    assert_eq!((w.state, w.pid, w.restarts), (SlotStatus::Drained, None, 0));
    assert_eq!(slot(&t, 0).await.unwrap().state, SlotStatus::Running, "the other worker carries on");
    let status = supervisor(t.dir.path()).args(["status", "--db"]).arg(&t.path).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("drained"), "{status:?}");

    assert!(t.db.request_resume(1).await.unwrap(), "the resume request finds the drained slot");
    wait_for(LONG, "worker 1 running again", || async {
        slot(&t, 1).await.is_some_and(|w| w.state == SlotStatus::Running && w.pid.is_some() && w.pid != first_pid)
    })
    .await;
    assert_eq!(slot(&t, 1).await.unwrap().restarts, 0, "a resume is no crash");

    let stop = supervisor(t.dir.path()).args(["stop", "--db"]).arg(&t.path).output().unwrap();
    assert!(stop.status.success(), "{stop:?}");
    assert!(sup.wait().unwrap().success());
    assert_eq!(t.by_status().await.get("running"), None, "no video left claimed");
}
