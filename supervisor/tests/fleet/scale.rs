//! `supervisor scale`: re-partitioning a running fleet, and what it refuses.

use std::process::Stdio;

use testkit::{TestDb, free_ports, supervisor, text, wait_for};

use crate::helper::{LONG, run_to_end, spawn};

/// `supervisor scale N` on the test's database; (exit code, its output).
fn scale(t: &TestDb, n: u32) -> (Option<i32>, String) {
    let out = run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["scale", &n.to_string(), "--db"]).arg(&t.path);
        cmd
    });
    (out.status.code(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_changes_a_running_fleets_workers_up_and_down_and_every_video_is_done_once() {
    let t = TestDb::new().await;
    t.seed(200).await;
    let base = free_ports(4);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", "2", "--base-port", &base.to_string(), "--db"]).arg(&t.path).args([
        "--mem-limit",
        "250M",
        "--sleep",
        "50ms",
        "--concurrency",
        "1",
        "--exit-when-done",
    ]);
    let mut sup = spawn(cmd);
    wait_for(LONG, "some videos done", || async { t.counts().await.done >= 20 }).await;

    let (code, said) = scale(&t, 4);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("now 4 shards, running workers 0-3"), "{said}");
    let slots = t.slots().await;
    assert_eq!(slots.iter().map(|w| w.worker_id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let status = text(&run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["status", "--db"]).arg(&t.path);
        cmd
    }));
    assert!(status.contains("4 workers"), "{status}");
    assert!(status.contains("re-partitioned (supervisor scale): 2 at "), "{status}");
    assert!(status.contains(" → 4 at "), "{status}");
    wait_for(LONG, "worker 3 of 4 to finish a video", || async {
        t.attempts().await.iter().any(|a| a.worker.as_deref().is_some_and(|w| w.starts_with("worker-3/")))
    })
    .await;

    let (code, said) = scale(&t, 1);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(t.slots().await.len(), 1, "{said}");
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    assert_eq!(t.counts().await.done, 200, "every video done");
    assert_eq!(t.done_twice().await, 0, "none done twice");
    let layouts = t.db.layouts(t.db.latest_run().await.unwrap().unwrap().run_id).await.unwrap();
    assert_eq!(layouts.iter().map(|l| l.workers).collect::<Vec<_>>(), [2, 4, 1], "each layout recorded");
    assert!(layouts.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_without_a_running_fleet_or_with_a_bad_size_is_refused_and_changes_nothing() {
    let t = TestDb::new().await;
    t.seed(3).await;
    let (code, said) = scale(&t, 3);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no fleet is running on this database: there is nothing to scale"), "{said}");
    for bad in ["0", "2000", "many"] {
        let out = run_to_end({
            let mut cmd = supervisor(t.dir.path());
            cmd.args(["scale", bad, "--db"]).arg(&t.path);
            cmd
        });
        assert_eq!(out.status.code(), Some(2), "scale {bad}: {}", text(&out));
    }
    assert!(t.db.latest_run().await.unwrap().is_none(), "no run was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_while_a_re_partition_drains_ends_the_run_instead() {
    let t = TestDb::new().await;
    t.seed(20).await;
    let base = free_ports(2);
    let mut cmd = supervisor(t.dir.path());
    cmd.args(["start", "--workers", "1", "--base-port", &base.to_string(), "--db"]).arg(&t.path).args([
        "--mem-limit",
        "250M",
        "--sleep",
        "3s",
        "--concurrency",
        "1",
    ]);
    let mut sup = spawn(cmd);
    wait_for(LONG, "a video running", || async { t.counts().await.running >= 1 }).await;

    let scaling = {
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["scale", "2", "--db"]).arg(&t.path).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let status_url = format!("http://127.0.0.1:{base}/status");
    wait_for(LONG, "worker 0 draining for the re-partition", || async {
        let answer = testkit::http().get(&status_url).send().await;
        match answer {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|s| s["state"] == "draining"),
            Err(_) => false,
        }
    })
    .await;
    let stop = run_to_end({
        let mut cmd = supervisor(t.dir.path());
        cmd.args(["stop", "--db"]).arg(&t.path);
        cmd
    });
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    assert!(sup.wait().unwrap().success());
    let scaled = scaling.wait_with_output().unwrap();
    assert_eq!(scaled.status.code(), Some(1), "{}", text(&scaled));
    assert!(text(&scaled).contains("ended before it re-partitioned"), "{}", text(&scaled));
    assert_eq!(t.counts().await.running, 0, "nothing left running");
    assert_eq!(t.slots().await.len(), 1, "the new layout never started");
}
