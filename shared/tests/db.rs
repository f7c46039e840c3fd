//! The storage against real SQLite files: claiming by shard, fencing, leases, hand-backs,
//! and recognising schemas that other tools applied.

use std::time::Duration;

use shared::retry::RetryPolicy;
use shared::status::{Outcome, VideoStatus};
use shared::storage::sqlite::{MIGRATIONS, Migration};
use shared::storage::{Claimed, Finish, Shard, ShardSpec, Store, now_ms};
use sqlx::{Connection, Executor, Row, SqliteConnection, SqlitePool};

async fn fresh(dir: &tempfile::TempDir) -> Store {
    // Room for two shard sessions and the test's own reads.
    Store::open(&dir.path().join("fleet.db"), 4).await.unwrap()
}

fn pool(db: &Store) -> &SqlitePool {
    db.as_sqlite().expect("a SQLite store").pool()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, backoff: Duration::from_secs(60), backoff_max: Duration::from_secs(3600) }
}

async fn seed(db: &Store, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        sqlx::query("INSERT INTO videos (video_id, source) VALUES (?, ?)")
            .bind(id)
            .bind(format!("src-{id}"))
            .execute(pool(db))
            .await
            .unwrap();
    }
}

fn done(c: &Claimed, result: &str) -> Finish {
    Finish {
        video_id: c.video_id,
        token: c.token,
        status: VideoStatus::Done,
        outcome: Outcome::Done,
        result: Some(result.into()),
        error: None,
        warnings: None,
        run_after: 0,
        finished_at: now_ms(),
        duration_ms: 1,
    }
}

/// Claims up to `want` videos at `now`, leased for `lease`.
async fn claim(shard: &mut Shard, want: usize, now: i64, lease: Duration) -> Vec<Claimed> {
    shard.finish_and_claim(&[], want, now, lease).await.unwrap().claimed
}

/// Writes `finishes`; returns the ids whose write took effect.
async fn finish(shard: &mut Shard, finishes: &[Finish]) -> Vec<i64> {
    shard.finish_and_claim(finishes, 0, now_ms(), Duration::from_secs(10)).await.unwrap().applied
}

#[tokio::test]
async fn a_claim_takes_only_due_pending_videos_of_its_own_shard() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    seed(&db, 1..=30).await;
    sqlx::query("UPDATE videos SET run_after = ? WHERE video_id = 3")
        .bind(now_ms() + 60_000)
        .execute(pool(&db))
        .await
        .unwrap();
    let mut shard = db.open_shard(ShardSpec::new(3, 0)).await.unwrap();
    let got = claim(&mut shard, 64, now_ms(), Duration::from_secs(10)).await;
    let ids: Vec<i64> = got.iter().map(|c| c.video_id).collect();
    assert_eq!(ids, [6, 9, 12, 15, 18, 21, 24, 27, 30], "video 3 is not due yet");
    assert!(got.iter().all(|c| c.attempt == 1 && c.token == got[0].token));
    let again = claim(&mut shard, 64, now_ms(), Duration::from_secs(10)).await;
    assert!(again.is_empty(), "claimed videos are not claimed twice");
}

#[tokio::test]
async fn a_late_finisher_whose_lease_was_taken_over_cannot_overwrite_the_newer_result() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    seed(&db, 1..=1).await;
    let mut first = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let now = now_ms();
    let old = claim(&mut first, 1, now, Duration::from_secs(1)).await.remove(0);

    // The old worker stalls; its lease lapses and the video is taken back and claimed anew.
    let later = now + 5_000;
    let own = first.reclaim_expired(later, &policy(3)).await.unwrap();
    assert!(own.is_empty(), "a worker never takes back its own leases");
    let mut second = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let taken = second.reclaim_expired(later, &policy(3)).await.unwrap();
    assert_eq!(taken, [(1, VideoStatus::Pending)]);
    let new = claim(&mut second, 1, later, Duration::from_secs(10)).await.remove(0);
    assert_eq!(new.attempt, 2);
    assert_eq!(finish(&mut second, &[done(&new, "new")]).await, [1]);

    // The old worker wakes up and reports: nothing changes.
    assert!(finish(&mut first, &[done(&old, "old")]).await.is_empty());
    let row = sqlx::query("SELECT result, attempts, status FROM videos WHERE video_id = 1")
        .fetch_one(pool(&db))
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "new");
    assert_eq!(row.get::<i64, _>(1), 2);
    let history: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT attempt, outcome, worker FROM attempts WHERE video_id = 1 ORDER BY id")
            .fetch_all(pool(&db))
            .await
            .unwrap();
    assert_eq!(
        history,
        [(1, "expired".into(), first.owner().into()), (2, "done".into(), second.owner().into())],
        "one history row per attempt, none for the discarded late result"
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_retried_at_once_until_its_last_attempt_then_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    seed(&db, 1..=1).await;
    let mut gone = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let mut sweeper = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let now = now_ms();
    claim(&mut gone, 1, now, Duration::from_secs(1)).await;
    let later = now + 5_000;
    assert_eq!(sweeper.reclaim_expired(later, &policy(2)).await.unwrap(), [(1, VideoStatus::Pending)]);
    let due: i64 =
        sqlx::query_scalar("SELECT run_after FROM videos WHERE video_id = 1").fetch_one(pool(&db)).await.unwrap();
    assert_eq!(due, later, "a lost worker's video is due again at once, with no backoff");

    claim(&mut gone, 1, later, Duration::from_secs(1)).await;
    let latest = later + 5_000;
    assert_eq!(sweeper.reclaim_expired(latest, &policy(2)).await.unwrap(), [(1, VideoStatus::Failed)]);
    let (attempts, error): (i64, String) = sqlx::query_as("SELECT attempts, last_error FROM videos WHERE video_id = 1")
        .fetch_one(pool(&db))
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(error, format!("lease expired: {} stopped renewing it", gone.owner()));
}

#[tokio::test]
async fn a_released_video_gets_its_attempt_back_and_a_crashed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    seed(&db, 1..=2).await;
    let mut a = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let mut b = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    claim(&mut a, 1, now_ms(), Duration::from_secs(10)).await;
    claim(&mut b, 1, now_ms(), Duration::from_secs(10)).await;
    assert_eq!(a.hand_back(now_ms(), "stopping", &policy(3)).await.unwrap(), [2]);
    // Worker 1 of this very process "died": its claims go back as a crash.
    let pid = std::process::id();
    let back = db.release_process(1, pid, Outcome::Crashed, "worker died", now_ms(), &policy(1)).await.unwrap();
    assert_eq!(back, [(1, VideoStatus::Failed)]);
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT video_id, status, attempts FROM videos ORDER BY video_id")
            .fetch_all(pool(&db))
            .await
            .unwrap();
    assert_eq!(rows, [(1, "failed".into(), 1), (2, "pending".into(), 0)], "video 1 used its only attempt");
}

/// Applies the migration files the way `sqlite3 fleet.db < migrations/*.sql` would: no
/// bookkeeping table.
async fn apply_like_sqlite3(path: &std::path::Path) -> SqliteConnection {
    apply_some_like_sqlite3(path, MIGRATIONS).await
}

async fn apply_some_like_sqlite3(path: &std::path::Path, migrations: &[Migration]) -> SqliteConnection {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    for m in migrations {
        sqlx::raw_sql(m.sql).execute(&mut conn).await.unwrap();
    }
    conn
}

/// The migrations before 0004, which adds the warnings columns.
fn before_warnings() -> &'static [Migration] {
    let i = MIGRATIONS.iter().position(|m| m.name == "0004_warnings.sql").expect("0004 is embedded");
    &MIGRATIONS[..i]
}

/// Claims video `id` (shard 0 of 1) and finishes it as `status` with `warnings`; returns
/// (videos.warnings, the attempt's warnings).
async fn finish_with_warnings(
    db: &Store,
    id: i64,
    status: VideoStatus,
    warnings: &str,
) -> (Option<String>, Option<String>) {
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    sqlx::query("UPDATE videos SET run_after = CASE WHEN video_id = ? THEN 0 ELSE 1e15 END")
        .bind(id)
        .execute(pool(db))
        .await
        .unwrap();
    let c = claim(&mut shard, 1, now_ms(), Duration::from_secs(10)).await.remove(0);
    assert_eq!(c.video_id, id);
    let outcome = if status == VideoStatus::Done { Outcome::Done } else { Outcome::Error };
    let f = Finish {
        status,
        outcome,
        error: (status != VideoStatus::Done).then(|| "exit code 1: boom".into()),
        warnings: Some(warnings.into()),
        ..done(&c, "out")
    };
    assert_eq!(finish(&mut shard, &[f]).await, [id]);
    let video = sqlx::query_scalar("SELECT warnings FROM videos WHERE video_id = ?")
        .bind(id)
        .fetch_one(pool(db))
        .await
        .unwrap();
    let attempt = sqlx::query_scalar("SELECT warnings FROM attempts WHERE video_id = ? ORDER BY id DESC LIMIT 1")
        .bind(id)
        .fetch_one(pool(db))
        .await
        .unwrap();
    (video, attempt)
}

#[tokio::test]
async fn warnings_are_kept_for_a_done_attempt_and_never_for_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    seed(&db, 1..=2).await;
    let warned = Some("File ended prematurely".to_string());
    assert_eq!(
        finish_with_warnings(&db, 1, VideoStatus::Done, "File ended prematurely").await,
        (warned.clone(), warned)
    );
    assert_eq!(finish_with_warnings(&db, 2, VideoStatus::Failed, "ignored").await, (None, None));
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM attempts WHERE video_id = 2").fetch_one(pool(&db)).await.unwrap();
    assert_eq!(error.as_deref(), Some("exit code 1: boom"), "a failure's stderr stays in its error");
}

#[tokio::test]
async fn a_schema_applied_by_sqlite3_is_adopted_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.db");
    let mut conn = apply_like_sqlite3(&path).await;
    conn.execute("INSERT INTO videos (video_id, source) VALUES (1, 'kept')").await.unwrap();
    conn.close().await.unwrap();

    let db = Store::open(&path, 2).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM d1_migrations").fetch_all(pool(&db)).await.unwrap();
    assert_eq!(names, MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    assert_eq!(db.count_videos().await.unwrap(), 1, "existing rows are untouched");
    let journal = db.as_sqlite().unwrap().journal_mode().await.unwrap();
    assert_eq!(journal, "delete", "the journal mode of an existing file is left alone");
}

#[tokio::test]
async fn a_database_wrangler_migrated_is_used_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrangler.sqlite");
    let mut conn = apply_like_sqlite3(&path).await;
    // wrangler's bookkeeping, as `wrangler d1 migrations apply --local` leaves it.
    conn.execute(
        "CREATE TABLE d1_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)",
    )
    .await
    .unwrap();
    for m in MIGRATIONS {
        sqlx::query("INSERT INTO d1_migrations (name) VALUES (?)").bind(m.name).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let db = Store::open(&path, 2).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM d1_migrations").fetch_one(pool(&db)).await.unwrap();
    assert_eq!(rows, MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn a_partial_schema_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    conn.execute("CREATE TABLE videos (video_id INTEGER PRIMARY KEY, source TEXT NOT NULL)").await.unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let err = Store::open(&path, 1).await.unwrap_err().to_string();
    assert!(err.contains("partial schema") && err.contains("0001_videos.sql"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
}

#[tokio::test]
async fn a_sqlite3_schema_that_has_the_warnings_columns_is_adopted_with_its_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.db");
    let mut conn = apply_like_sqlite3(&path).await;
    conn.execute("INSERT INTO videos (video_id, source) VALUES (1, 'a')").await.unwrap();
    conn.close().await.unwrap();

    // Running 0004 again would fail on its first ALTER TABLE: adoption is what lets it open.
    let db = Store::open(&path, 2).await.unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM d1_migrations").fetch_one(pool(&db)).await.unwrap();
    assert_eq!(recorded, MIGRATIONS.len() as i64);
    let warned = Some("w".to_string());
    assert_eq!(finish_with_warnings(&db, 1, VideoStatus::Done, "w").await, (warned.clone(), warned));
}

#[tokio::test]
async fn a_sqlite3_schema_from_before_the_warnings_gets_the_columns_and_the_new_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.db");
    let mut conn = apply_some_like_sqlite3(&path, before_warnings()).await;
    conn.execute("INSERT INTO videos (video_id, source) VALUES (1, 'a')").await.unwrap();
    conn.close().await.unwrap();

    // The trigger 0004 replaces already exists; the missing columns say it never ran.
    let db = Store::open(&path, 2).await.unwrap();
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT name FROM d1_migrations ORDER BY id").fetch_all(pool(&db)).await.unwrap();
    assert_eq!(recorded, MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    let warned = Some("File ended prematurely".to_string());
    assert_eq!(
        finish_with_warnings(&db, 1, VideoStatus::Done, "File ended prematurely").await,
        (warned.clone(), warned),
        "the history trigger is the new one"
    );
}

#[tokio::test]
async fn a_schema_with_only_some_of_the_warnings_columns_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.db");
    let mut conn = apply_some_like_sqlite3(&path, before_warnings()).await;
    conn.execute("ALTER TABLE videos ADD COLUMN warnings TEXT").await.unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let err = Store::open(&path, 1).await.unwrap_err().to_string();
    assert!(err.contains("partial schema") && err.contains("0004_warnings.sql"), "{err}");
    assert!(err.contains("it adds videos.warnings, attempts.warnings; found videos.warnings"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written, not even the adopted 0001-0003");
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n").unwrap();
    let err = Store::open(&path, 1).await.unwrap_err().to_string();
    assert_eq!(err, format!("{} is not a SQLite database", path.display()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "these are my notes, not a database\n");
}

#[tokio::test]
async fn a_database_in_a_missing_directory_is_refused_without_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/fleet.db");
    let err = Store::open(&path, 1).await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn every_file_in_migrations_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(files, embedded);
}
