//! A throwaway PgBouncer in front of the test PostgreSQL server, started by
//! `.ci/pgbouncer` from the shipped `deploy/pgbouncer/pgbouncer.ini` (only its port,
//! paths, pool mode and authentication changed), so the file users copy is the tested one.

use std::path::PathBuf;
use std::process::Command;

use shared::location::with_database;

use crate::{POSTGRES_SERVER_VAR, skip};

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    /// Its config, log, pid file and socket, owned by the user it runs as.
    dir: tempfile::TempDir,
    /// `postgres://USER@127.0.0.1:PORT`, without a database.
    server: String,
    /// `transaction` or `session`.
    mode: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/pgbouncer")
}

impl PgBouncer {
    /// Starts one in pool mode `mode` (`transaction` or `session`) in front of the
    /// server `FLEET_TEST_POSTGRES_URL` names, on a free loopback port. None, with the
    /// reason (under the name `pgbouncer`, or `postgres` without a server), when either
    /// is missing here. A PgBouncer that is there but does not start fails the test.
    pub fn start(mode: &str) -> Option<PgBouncer> {
        let Some(server) = std::env::var(POSTGRES_SERVER_VAR).ok().filter(|s| !s.is_empty()) else {
            skip("postgres", format_args!("{POSTGRES_SERVER_VAR} is not set (.ci/run starts a PostgreSQL server)"));
            return None;
        };
        let found = Command::new("sh").args(["-c", "command -v pgbouncer || test -x /usr/sbin/pgbouncer"]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            skip("pgbouncer", "no pgbouncer here (apt-get install pgbouncer; .ci/run does)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = Command::new(script())
            .args(["up"])
            .arg(dir.path())
            .args([mode, &server])
            .output()
            .expect(".ci/pgbouncer runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout.lines().find_map(|l| l.strip_prefix("PGBOUNCER_URL="));
        let Some(url) = url.filter(|_| out.status.success()) else {
            panic!("PgBouncer did not start: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        };
        Some(PgBouncer { server: url.to_string(), dir, mode: mode.to_string() })
    }

    /// The database of `db` (a URL on the test server, as `fresh_postgres_url` gives)
    /// through this PgBouncer, with the URL parameter its pool mode asks for.
    pub fn url(&self, db: &str) -> String {
        let path = db.split_once('?').map_or(db, |(u, _)| u);
        let name = path.rsplit('/').next().expect("a database name");
        format!("{}?pool_mode={}", with_database(&self.server, name), self.mode)
    }

    /// PgBouncer's own log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(self.dir.path()).status();
    }
}
