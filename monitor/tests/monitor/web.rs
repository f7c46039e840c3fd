//! `monitor --serve` against real `worker` processes: the page's figures are what the
//! database holds, hostile text from handlers stays text, and the controls reach the
//! workers only with the token, from the same origin, and not at all under --read-only.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use shared::storage::FleetRun;

use crate::helper::{LONG, TestDb, WorkerBuilder, WorkerProc, fleet_run, monitor_bin, run_monitor, wait_for};

/// Fails every video whose id is a multiple of 5, with its source (hostile) as the error.
const FAILING_EXEC: &str = r#"sh -c 'if test $(($1 % 5)) -eq 0; then echo "$0" >&2; exit 1; fi' {source} {video_id}"#;
const HOSTILE: &str = r#"<img src=x onerror=alert(1)>"><script>alert(2)</script>"#;

/// A `monitor --serve` process, killed when dropped.
struct Page {
    child: Child,
    base: String,
    /// What the monitor printed on stderr before it served.
    said: String,
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// Starts `monitor --serve 127.0.0.1:<free port>` with `args`, and waits until it
    /// serves.
    fn start(args: &[&str]) -> Page {
        let port = testkit::free_ports(1);
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(monitor_bin())
            .args(["--serve", &addr, "--interval", "200ms"])
            .args(args)
            .env_remove("FLEET_CONTROL_TOKEN")
            .env_remove("FLEET_DB")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines.next().unwrap_or_else(|| panic!("monitor ended before serving: {said}")).unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.contains("serving the fleet on") {
                break;
            }
        }
        // Keep reading, so that the monitor never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Page { child, base: format!("http://{addr}"), said }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn html(&self) -> String {
        let r = testkit::http().get(self.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

/// The number in the element with `data-testid="{id}"`.
fn total(html: &str, id: &str) -> u64 {
    let marker = format!(r#"data-testid="{id}">"#);
    let rest = &html[html.find(&marker).unwrap_or_else(|| panic!("no {id} in {html}")) + marker.len()..];
    rest[..rest.find('<').unwrap()].parse().unwrap()
}

fn targets(workers: &[WorkerProc]) -> String {
    workers.iter().map(|w| w.url("")).collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_of_a_real_fleet_counts_what_the_database_holds_and_shows_hostile_errors_as_text() {
    let t = TestDb::new().await;
    t.seed_sources((1..=20).map(|id| (id, format!("{HOSTILE} #{id}"))).collect()).await;
    let (workers, _) = WorkerBuilder::new(&t).exec(FAILING_EXEC).args(["--max-attempts", "1"]).spawn_fleet(2);
    let page = Page::start(&["--targets", &targets(&workers)]);
    assert!(!page.said.contains("warning"), "loopback draws no warning: {}", page.said);
    wait_for(LONG, "every video finished and the page showing it", || async {
        let html = page.html().await;
        total(&html, "total-done") + total(&html, "total-failed") == 20
    })
    .await;

    let db = t.counts().await;
    let html = page.html().await;
    assert_eq!((total(&html, "total-done"), total(&html, "total-failed")), (db.done, db.failed));
    assert_eq!((db.done, db.failed), (16, 4));
    assert_eq!((total(&html, "total-pending"), total(&html, "total-running")), (0, 0));
    assert_eq!(html.matches(r#"data-testid="worker-row""#).count(), 2);
    assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "hostile text became markup:\n{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "the error is shown, as text:\n{html}");

    let fleet: monitor::Report =
        testkit::http().get(page.url("/api/fleet")).send().await.unwrap().json().await.unwrap();
    assert_eq!((fleet.totals.done, fleet.totals.failed), (16, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_control_reaches_a_real_worker_only_with_the_token_and_from_the_same_origin() {
    let t = TestDb::new().await;
    t.seed(40).await;
    let (workers, _) = WorkerBuilder::new(&t).sleep("5s").args(["--control-token", "s3cret-token"]).spawn_fleet(2);
    // Listed out of order: the page names workers by their own ids, not their places.
    let listed = format!("{},{}", workers[1].url(""), workers[0].url(""));
    let page = Page::start(&["--targets", &listed, "--control-token", "s3cret-token"]);
    let client = testkit::http();
    let pause = page.url("/api/workers/1/pause");

    assert_eq!(client.post(&pause).send().await.unwrap().status(), 401);
    assert_eq!(client.post(&pause).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let cross =
        client.post(&pause).bearer_auth("s3cret-token").header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(cross.status(), 403, "another origin");
    let cross =
        client.post(&pause).bearer_auth("s3cret-token").header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(cross.status(), 403, "a cross-site fetch");
    let rebound = client.get(page.url("/")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(rebound.status(), 403, "a rebound name");
    assert_eq!(workers[1].status().await["state"], "running", "nothing refused reached the worker");

    let ok = client
        .post(&pause)
        .bearer_auth("s3cret-token")
        .header("origin", page.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    assert_eq!(workers[1].status().await["state"], "paused");
    assert_eq!(workers[0].status().await["state"], "running");
    wait_for(LONG, "the page showing worker 1 paused", || async {
        page.html().await.contains(r#"data-worker-id="1" data-state="paused""#)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_db_the_runs_token_is_accepted_and_sent_on_and_failed_videos_can_be_retried() {
    let t = TestDb::new().await;
    t.seed(10).await;
    t.mark_failed(9, 3, "gave up").await;
    t.mark_failed(10, 3, "gave up").await;
    let (workers, base) = WorkerBuilder::new(&t).sleep("5s").args(["--control-token", "run-token"]).spawn_fleet(1);
    let run = FleetRun { bind: "127.0.0.1".into(), control_token: Some("run-token".into()), ..fleet_run(1, base) };
    t.db.insert_run(&run).await.unwrap();
    let db = t.path.to_str().unwrap();
    let page = Page::start(&["--db", db]);
    let client = testkit::http();
    let html = page.html().await;
    assert!(!html.contains("run-token"), "the token never reaches the page");
    let r = client.post(page.url("/api/workers/0/pause")).bearer_auth("run-token").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(workers[0].status().await["state"], "paused");
    let api = client.get(page.url("/api/fleet")).send().await.unwrap().text().await.unwrap();
    assert!(!api.contains("run-token"));

    let retry = |path: &str| client.post(page.url(path)).bearer_auth("run-token").send();
    assert_eq!(retry("/api/videos/9/retry").await.unwrap().status(), 200);
    assert_ne!(t.video(9).await.status, shared::status::VideoStatus::Failed);
    assert_eq!(retry("/api/videos/9/retry").await.unwrap().status(), 409, "video 9 is no longer failed");
    assert_eq!(retry("/api/videos/999/retry").await.unwrap().status(), 404);
    let all: serde_json::Value = retry("/api/videos/retry-failed").await.unwrap().json().await.unwrap();
    assert_eq!(all["requeued"], 1, "{all}");
    assert_eq!(t.counts().await.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_controls_answer_403_and_under_read_only_they_do_not_exist() {
    let t = TestDb::new().await;
    let (workers, base) = WorkerBuilder::new(&t).sleep("0").args(["--control-token", "s3cret-token"]).spawn_fleet(1);
    let client = testkit::http();
    let tokenless = Page::start(&["--workers", "1", "--base-port", &base.to_string()]);
    let r = client.post(tokenless.url("/api/workers/0/pause")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("--control-token"), "the answer says how to give a token");

    let read_only = Page::start(&[
        "--workers",
        "1",
        "--base-port",
        &base.to_string(),
        "--control-token",
        "s3cret-token",
        "--read-only",
    ]);
    for path in ["/api/workers/0/pause", "/api/workers/0/resume", "/api/workers/0/drain", "/api/videos/retry-failed"] {
        let r = client.post(read_only.url(path)).bearer_auth("s3cret-token").send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(workers[0].status().await["state"], "idle");
    assert!(!read_only.html().await.contains("data-action="), "no control is drawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_the_page_makes_a_real_worker_finish_and_exit_zero() {
    let t = TestDb::new().await;
    t.seed(10).await;
    let (mut workers, base) =
        WorkerBuilder::new(&t).sleep("1s").concurrency(2).args(["--control-token", "s3cret-token"]).spawn_fleet(1);
    wait_for(LONG, "two jobs in flight", || async { t.counts().await.running == 2 }).await;
    let page = Page::start(&["--workers", "1", "--base-port", &base.to_string(), "--control-token", "s3cret-token"]);
    let r = testkit::http().post(page.url("/api/workers/0/drain")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(workers[0].wait_exit(LONG).code(), Some(0));
    let c = t.counts().await;
    assert_eq!((c.running, c.done + c.pending), (0, 10), "what it held finished or went back; nothing is stuck");
}

#[test]
fn serve_with_once_or_json_exits_2_in_one_sentence_and_a_wide_bind_warns() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--once", "--json"] {
        let out = run_monitor(&["--workers", "1", "--serve", flag], dir.path());
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "monitor: --serve runs until it is stopped and cannot be combined with --once or --json\n"
        );
    }
    let port = testkit::free_ports(1);
    let mut wide = Command::new(monitor_bin())
        .args([
            "--workers",
            "1",
            "--base-port",
            &testkit::closed_port().to_string(),
            "--serve",
            &format!("0.0.0.0:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(wide.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = wide.kill();
    let _ = wide.wait();
    assert!(first.contains("warning: serving on 0.0.0.0") && first.contains("beyond loopback"), "{first}");
}
