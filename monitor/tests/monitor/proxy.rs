//! The page behind a real reverse proxy: Debian's nginx forwarding `/fleet/` unchanged to
//! `monitor --serve --prefix /fleet --allow-host fleet.test`. Without nginx the test
//! skips through `testkit::skip("nginx", ..)`.

use std::process::{Command, Stdio};

use crate::helper::{LONG, TestDb, WorkerBuilder, monitor_bin, wait_for};

const TOKEN: &str = "proxy-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_at_fleet_the_page_its_assets_and_a_control_post_go_through_the_proxy() {
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        return testkit::skip("nginx", "no nginx (Debian's nginx package): the page is not tried behind a proxy");
    };
    let t = TestDb::new().await;
    t.seed(20).await;
    let (workers, base) = WorkerBuilder::new(&t).sleep("5s").args(["--control-token", TOKEN]).spawn_fleet(1);
    let monitor_port = testkit::free_ports(1);
    let _monitor = testkit::Running(
        Command::new(monitor_bin())
            .args(["--workers", "1", "--base-port", &base.to_string(), "--control-token", TOKEN])
            .args(["--serve", &format!("127.0.0.1:{monitor_port}"), "--prefix", "/fleet", "--allow-host", "fleet.test"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let proxy_port = testkit::free_ports(1);
    // As the README shows it: the path forwarded unchanged, the browser's Host kept.
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{proxy_port};\n    location /fleet/ {{\n      \
         proxy_pass http://127.0.0.1:{monitor_port};\n      proxy_set_header Host $http_host;\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let _proxy = testkit::Running(
        Command::new(nginx)
            .args(["-e", &format!("{d}/error.log"), "-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let client = testkit::http();
    let host = format!("fleet.test:{proxy_port}");
    let via = |path: &str| format!("http://127.0.0.1:{proxy_port}{path}");
    wait_for(LONG, "the page through nginx", || async {
        let r = client.get(via("/fleet/")).header("host", &host).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let html = client.get(via("/fleet/")).header("host", &host).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains(r#"href="/fleet/assets/app.css""#) && html.contains(r#"src="/fleet/assets/app.js""#),
        "{html}"
    );
    assert!(html.contains(r#"data-testid="worker-row""#));
    let js = client.get(via("/fleet/assets/app.js")).header("host", &host).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let fleet: monitor::Report =
        client.get(via("/fleet/api/fleet")).header("host", &host).send().await.unwrap().json().await.unwrap();
    assert_eq!(fleet.workers.len(), 1);

    let other = client.get(via("/fleet/")).header("host", "evil.test").send().await.unwrap();
    assert_eq!(other.status(), 403, "a name not allowed is refused behind the proxy too");

    let paused = client
        .post(via("/fleet/api/workers/0/pause"))
        .header("host", &host)
        .header("origin", format!("http://{host}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200, "{}", paused.text().await.unwrap());
    assert_eq!(workers[0].status().await["state"], "paused");
}
