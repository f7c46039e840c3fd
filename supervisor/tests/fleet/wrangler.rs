//! Cloudflare's own tool against our migrations: `wrangler d1 migrations apply --local`
//! sets up a database from `migrations/`, the fleet runs on that file, and wrangler then
//! finds nothing left to apply and reads the results. Skipped (with the reason printed)
//! where wrangler is not installed; `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::free_ports;

fn wrangler() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var_os("WRANGLER").map(PathBuf::from),
        Some(root.join("target/wrangler/node_modules/.bin/wrangler")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

fn run_wrangler(wrangler: &Path, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(wrangler)
        .args(args)
        .current_dir(dir)
        // No prompts, no telemetry: this machine reaches nothing but package registries.
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_D1_WARNING", "true")
        .output()
        .expect("wrangler runs");
    assert!(
        out.status.success(),
        "wrangler {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_database_wrangler_migrated_runs_the_fleet_and_wrangler_then_has_nothing_to_apply() {
    let Some(wrangler) = wrangler() else {
        testkit::skip("wrangler", "wrangler is not installed (set WRANGLER, or run .ci/run, which installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    // Only the SQLite files: `migrations/postgres/` is the other backend's and
    // wrangler, like a user's D1 project, reads only the top folder's .sql files.
    for f in
        std::fs::read_dir(&migrations).unwrap().flatten().filter(|f| f.path().extension().is_some_and(|e| e == "sql"))
    {
        std::fs::copy(f.path(), dir.path().join("migrations").join(f.file_name())).unwrap();
    }
    std::fs::write(
        dir.path().join("wrangler.toml"),
        "name = \"shardfleet-check\"\ncompatibility_date = \"2025-01-01\"\n\n[[d1_databases]]\nbinding = \"DB\"\n\
         database_name = \"fleet\"\ndatabase_id = \"00000000-0000-0000-0000-000000000000\"\nmigrations_dir = \"migrations\"\n",
    )
    .unwrap();
    run_wrangler(&wrangler, dir.path(), &["d1", "migrations", "apply", "fleet", "--local"]);

    let state = dir.path().join(".wrangler/state/v3/d1/miniflare-D1DatabaseObject");
    let db: PathBuf = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite") && !p.ends_with("metadata.sqlite"))
        .expect("wrangler made a database file");
    let csv = dir.path().join("videos.csv");
    std::fs::write(&csv, (1..=20).fold("video_id,source\n".to_string(), |acc, i| acc + &format!("{i},src-{i}\n")))
        .unwrap();
    let supervisor =
        |args: &[&str]| -> Output { testkit::supervisor(dir.path()).args(args).arg("--db").arg(&db).output().unwrap() };
    let out = supervisor(&["import", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = free_ports(2).to_string();
    let out = supervisor(&[
        "start",
        "--workers",
        "2",
        "--base-port",
        &base,
        "--mem-limit",
        "250M",
        "--sleep",
        "1ms",
        "--exit-when-done",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("videos: 20 done, 0 failed, 20 in all"), "{text}");

    let again = run_wrangler(&wrangler, dir.path(), &["d1", "migrations", "apply", "fleet", "--local"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("No migrations to apply"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let read = run_wrangler(
        &wrangler,
        dir.path(),
        &[
            "d1",
            "execute",
            "fleet",
            "--local",
            "--json",
            "--command",
            // The warnings column (migration 0004) exists: D1 took the ALTER TABLEs.
            "SELECT count(*) AS n, count(warnings) AS warned FROM videos WHERE status = 'done'",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&read.stdout).expect("wrangler prints JSON");
    assert_eq!(json[0]["results"][0]["n"], 20, "{json}");
    assert_eq!(json[0]["results"][0]["warned"], 0, "the sleep handler has no warnings: {json}");
}
