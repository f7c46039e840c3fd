//! What is particular to SQLite: recognising schemas that other tools applied (the
//! `sqlite3` shell, wrangler/D1), databases made by earlier versions, and files that
//! are not SQLite databases. The storage's behaviour on both backends is `backends.rs`.

mod common;

use common::{assert_exact, ensure, finish_with_warnings};
use shared::status::{ShardCounts, VideoStatus};
use shared::storage::Store;
use shared::storage::testing::{self, Migration, SQLITE_MIGRATIONS as MIGRATIONS};
use sqlx::{Connection, Executor, SqliteConnection};

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

#[tokio::test]
async fn a_schema_applied_by_sqlite3_is_adopted_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.db");
    let mut conn = apply_like_sqlite3(&path).await;
    conn.execute("INSERT INTO videos (video_id, source) VALUES (1, 'kept')").await.unwrap();
    conn.close().await.unwrap();

    let db = Store::open(&path, 2).await.unwrap();
    let names: Vec<String> = testing::column(&db, "SELECT name FROM d1_migrations").await.unwrap();
    assert_eq!(names, MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    assert_eq!(db.count_videos().await.unwrap(), 1, "existing rows are untouched");
    let journal = testing::column(&db, "PRAGMA journal_mode").await.unwrap().remove(0);
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
    let rows: i64 = testing::scalar(&db, "SELECT count(*) FROM d1_migrations").await.unwrap();
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
    let recorded: i64 = testing::scalar(&db, "SELECT count(*) FROM d1_migrations").await.unwrap();
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
    let recorded: Vec<String> = testing::column(&db, "SELECT name FROM d1_migrations ORDER BY id").await.unwrap();
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
/// Applies the first `n` migration files the way `sqlite3 fleet.db < migrations/*.sql`
/// would, and records them as wrangler does.
async fn older_database(path: &std::path::Path, n: usize) -> SqliteConnection {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    conn.execute(
        "CREATE TABLE d1_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)",
    )
    .await
    .unwrap();
    for m in &MIGRATIONS[..n] {
        sqlx::raw_sql(m.sql).execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO d1_migrations (name) VALUES (?)").bind(m.name).execute(&mut conn).await.unwrap();
    }
    conn
}

#[tokio::test]
async fn a_version_2_database_gets_counts_of_the_videos_it_already_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let mut conn = older_database(&path, 2).await;
    conn.execute(
        "INSERT INTO videos (video_id, source, status) VALUES (1, 'a', 'done'), (2, 'b', 'pending'), (3, 'c', 'failed'), (4, 'd', 'pending')",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();

    // `status` reads a database it does not migrate: the table is counted.
    let reader = Store::open_read_only(&path).await.unwrap();
    let before = reader.shard_progress(2).await.unwrap();
    assert_eq!(before[0], ShardCounts { pending: 2, running: 0, done: 0, failed: 0 });
    reader.close().await;

    let db = Store::open(&path, 1).await.unwrap();
    let names: Vec<String> = testing::column(&db, "SELECT name FROM d1_migrations ORDER BY id").await.unwrap();
    assert_eq!(names, MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>(), "every later migration applied");
    assert_exact(&db, 1, "right after the migration").await;
    assert_eq!(db.totals().await.unwrap(), ShardCounts { pending: 2, running: 0, done: 1, failed: 1 });
    assert!(ensure(&db, 2).await);
    assert_exact(&db, 2, "after a fleet of 2 started").await;
}

#[tokio::test]
async fn a_version_3_schema_applied_by_another_tool_is_adopted_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.db");
    let mut conn = older_database(&path, 3).await;
    conn.execute("DELETE FROM d1_migrations WHERE name = '0003_counts.sql'").await.unwrap();
    conn.execute("INSERT INTO videos (video_id, source) VALUES (5, 'x')").await.unwrap();
    conn.close().await.unwrap();

    let db = Store::open(&path, 1).await.unwrap();
    let recorded: i64 = testing::scalar(&db, "SELECT count(*) FROM d1_migrations").await.unwrap();
    assert_eq!(recorded, MIGRATIONS.len() as i64, "the third migration is recorded, not applied again");
    assert_exact(&db, 1, "adopted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_waits_for_the_lock_is_counted_and_writers_take_turns_beside_the_file() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let turns = dir.path().join("fleet.db-writers");
    let db = Store::open(&path, 2).await.unwrap();
    let videos: Vec<_> = (1..=10)
        .map(|id| shared::storage::NewVideo { video_id: id, source: format!("v{id}"), payload: None })
        .collect();
    testing::insert_videos(&db, &videos).await.unwrap();
    assert!(turns.exists(), "a transaction that wrote took its turn on the file beside the database");

    // Another tool holds the write lock for a moment: the fleet's write waits for it in
    // SQLite's busy handler, and that wait is counted.
    let before = shared::storage::LOCK_WAITS.load(Ordering::Relaxed);
    let mut other = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { testing::mark_failed(&db, 1, 3, "x").await }
    });
    // Polled, not slept on: the busy handler counts the write's wait as it starts it.
    testkit::wait_for(std::time::Duration::from_secs(20), "the write waiting for the lock", || async {
        shared::storage::LOCK_WAITS.load(Ordering::Relaxed) > before
    })
    .await;
    assert!(!waiting.is_finished(), "the write waits while the lock is held");
    other.execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    assert!(shared::storage::LOCK_WAITS.load(Ordering::Relaxed) > before, "the wait was counted");
    db.close().await;

    // A database only read, or refused, gets no turn file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    Store::open(&path, 1).await.unwrap().close().await;
    let reader = Store::open_read_only(&path).await.unwrap();
    reader.totals().await.unwrap();
    reader.close().await;
    assert!(
        !dir.path().join("fleet.db-writers").exists(),
        "{:?}",
        std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_import_is_in_the_file_itself_once_the_store_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let db = Store::open(&path, 2).await.unwrap();
    let mut import = db.begin_import().await.unwrap();
    let rows = (1..=50)
        .map(|id| shared::storage::ImportRow {
            line: id as u64 + 1,
            video: shared::storage::NewVideo { video_id: id, source: format!("v{id}"), payload: None },
        })
        .collect();
    assert!(import.add(rows).await.unwrap().is_empty());
    import.commit().await.unwrap();
    db.close().await;
    // Copied without its -wal file (as a backup of the file alone would be), it holds
    // every row: the import's own connection was closed, so the WAL was checkpointed.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let copied = Store::open_read_only(&copy).await.unwrap();
    assert_eq!(copied.count_videos().await.unwrap(), 50);
    copied.close().await;
}

#[tokio::test]
async fn a_status_word_this_build_does_not_know_is_counted_nowhere_and_named_by_retry() {
    // Only a tool that switches off the CHECK on `status` can write one. The first is
    // written under the triggers of 0003, which counted it as failed; migration 0010
    // counts again.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    testing::migrate_like_sqlite3(&path, Some("0010_counts_unknown.sql")).await.unwrap();
    let unknown = |id: i64| {
        format!(
            "PRAGMA ignore_check_constraints = ON; INSERT INTO videos (video_id, source, status) VALUES ({id}, 'x', 'paused')"
        )
    };
    testing::execute_foreign(
        &path,
        "INSERT INTO videos (video_id, source, status) VALUES (1, 'a', 'failed'), (2, 'b', 'pending')",
    )
    .await
    .unwrap();
    testing::execute_foreign(&path, &unknown(3)).await.unwrap();
    let db = Store::open(&path, 1).await.unwrap();
    let known = ShardCounts { pending: 1, running: 0, done: 0, failed: 1 };
    assert_eq!(db.totals().await.unwrap(), known, "counted again by the migration");
    testing::execute_foreign(&path, &unknown(4)).await.unwrap();
    assert_eq!(db.totals().await.unwrap(), known, "and not counted by the triggers");
    assert_eq!(db.shard_progress(3).await.unwrap()[0], ShardCounts::default(), "nor by a count of the table");
    let named = shared::storage::RequeueOutcome::NotFailed("paused".into());
    assert_eq!(db.requeue_video(3).await.unwrap(), named, "named as it is, not read as pending");
    assert_eq!(db.requeue_ids(&[1, 3]).await.unwrap(), Err(vec![(3, Some("paused".to_string()))]));
    assert_eq!(testing::video(&db, 1).await.unwrap().unwrap().status, VideoStatus::Failed, "nothing requeued");
}
