//! A PostgreSQL server of a test's own (`.ci/postgres` in a temp dir), for tests that stop
//! and restart it under a running fleet: the shared test server must stay up for every
//! other test. Stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::skip;

pub struct PgServer {
    dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

/// The repository's `.ci/postgres` script.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres")
}

impl PgServer {
    /// Starts one, or says why not and returns None (a failure instead where
    /// `FLEET_TEST_REQUIRE` names `postgres`).
    pub fn start() -> Option<PgServer> {
        let have = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut d| d.next().is_some());
        if !have {
            skip("postgres", "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("fleet-pg-").tempdir_in("/tmp").expect("temp dir");
        let out = Command::new(script()).arg("up").arg(dir.path()).output().expect(".ci/postgres runs");
        assert!(out.status.success(), "a server of the test's own: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("FLEET_TEST_POSTGRES_URL=").map(str::to_string))
            .expect(".ci/postgres prints the URL");
        Some(PgServer { dir, url })
    }

    fn ctl(&self, what: &str) {
        let out = Command::new(script()).arg(what).arg(self.dir.path()).output().expect(".ci/postgres runs");
        assert!(out.status.success(), ".ci/postgres {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops it as an operator would: sessions are cut (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts it again, on the same port, after [`PgServer::stop`].
    pub fn start_again(&self) {
        self.ctl("start");
    }

    /// `pg_ctl restart -m fast`, as a minor-version upgrade does.
    pub fn restart(&self) {
        self.ctl("restart");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(self.dir.path()).output();
    }
}
