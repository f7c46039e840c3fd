//! The web page in a real Chromium (Debian's `chromium` and `chromium-driver`), driven
//! by Python selenium from a venv that `.ci/run` makes in `target/browser-venv`:
//! `monitor/tests/browser/check_page.py` does the clicking and says what it saw.
//! Without them the test skips through `testkit::skip("chromium", ..)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use shared::storage::FleetRun;

use crate::helper::{TestDb, WorkerBuilder, fleet_run, monitor_bin};

/// Every video is slow enough that the page sees `total-done` grow; every fifth fails
/// with its (hostile) source as the error.
const EXEC: &str =
    r#"sh -c 'sleep 0.3; if test $(($1 % 5)) -eq 0; then echo "$0" >&2; exit 1; fi' {source} {video_id}"#;
const HOSTILE: &str = r#"<img src=x onerror=alert(1)>"><script>alert(2)</script>"#;
const TOKEN: &str = "browser-test-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The venv's python, when Chromium, its driver and selenium are all here.
fn selenium_python() -> Result<PathBuf, String> {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "no {tool} (Debian's chromium and chromium-driver): the page is not tried in a browser"
            ));
        }
    }
    let python = workspace().join("target/browser-venv/bin/python3");
    let has_selenium = Command::new(&python).args(["-c", "import selenium"]).output().is_ok_and(|o| o.status.success());
    if !has_selenium {
        return Err(format!(
            "no selenium in {} (.ci/run installs it): the page is not tried in a browser",
            python.display()
        ));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_page_refreshes_shows_hostile_text_as_text_pauses_a_worker_and_lists_failed_videos() {
    let python = match selenium_python() {
        Ok(p) => p,
        Err(why) => return testkit::skip("chromium", why),
    };
    let t = TestDb::new().await;
    t.seed_sources((1..=400).map(|id| (id, format!("{HOSTILE} #{id}"))).collect()).await;
    let (workers, base) =
        WorkerBuilder::new(&t).exec(EXEC).args(["--max-attempts", "1", "--control-token", TOKEN]).spawn_fleet(2);
    // The monitor finds the workers through the fleet's database, as beside a
    // supervisor, and so can list the failed videos too.
    let run = FleetRun { bind: "127.0.0.1".into(), control_token: Some(TOKEN.into()), ..fleet_run(2, base) };
    t.db.insert_run(&run).await.unwrap();
    let port = testkit::free_ports(1);
    let mut monitor = testkit::Running(
        Command::new(monitor_bin())
            .args(["--db", t.path.to_str().unwrap(), "--serve", &format!("127.0.0.1:{port}")])
            .args(["--interval", "500ms"])
            .env_remove("FLEET_CONTROL_TOKEN")
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/");
    testkit::wait_for(crate::helper::LONG, "the page to answer", || async {
        testkit::http().get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let shots = workspace().join("target/browser");
    let out = Command::new(&python)
        .arg(workspace().join("monitor/tests/browser/check_page.py"))
        .args([&url, "2", TOKEN, HOSTILE])
        .arg(&shots)
        // Selenium must not look for a driver online: the paths are given.
        .env("SE_OFFLINE", "true")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = monitor.0.kill();
    assert!(out.status.success(), "the browser check failed:\n{said}");
    eprintln!("{said}");
    let listed: Vec<i64> = said
        .lines()
        .find_map(|l| l.strip_prefix("failed-row ids: "))
        .expect("the script names the failed videos it saw")
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect();
    for id in listed {
        assert_eq!(t.video(id).await.status, shared::status::VideoStatus::Failed, "video {id} is listed as failed");
    }
    assert_eq!(workers[0].status().await["state"], "paused", "the click reached the worker");
    assert_ne!(workers[1].status().await["state"], "paused");
    for shot in ["web-1280.png", "web-375.png", "failed-375.png"] {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {shot}");
    }
}
