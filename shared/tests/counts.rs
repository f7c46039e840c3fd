//! The kept shard counts against real SQLite files: every kind of write keeps them equal
//! to a full count, a new layout recounts once, readers use them, and databases made by
//! earlier versions or other tools get them.

use std::time::Duration;

use shared::retry::RetryPolicy;
use shared::status::{Outcome, ShardCounts, VideoStatus};
use shared::storage::sqlite::MIGRATIONS;
use shared::storage::{self, Claimed, Finish, ImportRow, NewVideo, ShardSpec, Store};
use sqlx::{Connection, Executor, SqliteConnection, SqlitePool};

async fn fresh(dir: &tempfile::TempDir) -> Store {
    // Room for two shard sessions and the test's own reads.
    Store::open(&dir.path().join("fleet.db"), 4).await.unwrap()
}

fn pool(db: &Store) -> &SqlitePool {
    db.as_sqlite().expect("a SQLite store").pool()
}

async fn import(db: &Store, ids: std::ops::RangeInclusive<i64>) {
    let rows: Vec<ImportRow> = ids
        .map(|id| ImportRow {
            line: id as u64,
            video: NewVideo { video_id: id, source: format!("src-{id}"), payload: None },
        })
        .collect();
    let mut import = db.begin_import().await.unwrap();
    for batch in rows.chunks(storage::IMPORT_BATCH) {
        assert!(import.add(batch.to_vec()).await.unwrap().is_empty(), "no repeats");
    }
    import.commit().await.unwrap();
}

/// The counts table, rows with videos only, against a full `GROUP BY` under layout `n`.
async fn assert_exact(db: &Store, n: u32, when: &str) {
    let layout: i64 = sqlx::query_scalar("SELECT workers FROM video_counts_layout").fetch_one(pool(db)).await.unwrap();
    assert_eq!(layout, n as i64, "{when}: the counts are kept for {n} shards");
    let kept: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT shard, status, videos FROM video_counts WHERE videos <> 0 ORDER BY 1, 2")
            .fetch_all(pool(db))
            .await
            .unwrap();
    let counted: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT video_id % ?, status, count(*) FROM videos GROUP BY 1, 2 ORDER BY 1, 2")
            .bind(n)
            .fetch_all(pool(db))
            .await
            .unwrap();
    assert_eq!(kept, counted, "{when}: kept counts differ from a full count");
}

fn finish(c: &Claimed, status: VideoStatus, outcome: Outcome) -> Finish {
    Finish {
        video_id: c.video_id,
        token: c.token,
        status,
        outcome,
        result: None,
        error: Some("boom".into()),
        warnings: None,
        run_after: 0,
        finished_at: storage::now_ms(),
        duration_ms: 1,
    }
}

async fn ensure(db: &Store, n: u32) -> bool {
    db.ensure_count_layout(n).await.unwrap()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, backoff: Duration::from_secs(60), backoff_max: Duration::from_secs(3600) }
}

#[tokio::test]
async fn the_kept_counts_equal_a_full_count_through_import_claim_finish_retry_release_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    assert_exact(&db, 1, "fresh").await;
    assert!(ensure(&db, 3).await);
    import(&db, 1..=60).await;
    assert_exact(&db, 3, "after the import").await;

    let mut shard = db.open_shard(ShardSpec::new(3, 1)).await.unwrap();
    let now = storage::now_ms();
    let lease = Duration::from_secs(10);
    let got = shard.finish_and_claim(&[], 16, now, lease).await.unwrap().claimed;
    assert_eq!(got.len(), 16);
    assert_exact(&db, 3, "after a claim").await;

    let batch = [
        finish(&got[0], VideoStatus::Done, Outcome::Done),
        finish(&got[1], VideoStatus::Done, Outcome::Done),
        finish(&got[2], VideoStatus::Pending, Outcome::Error),
        finish(&got[3], VideoStatus::Failed, Outcome::Error),
    ];
    shard.finish_and_claim(&batch, 0, now, lease).await.unwrap();
    assert_exact(&db, 3, "after finishing done, retry-later and failed").await;
    let again = shard.finish_and_claim(&batch, 0, now, lease).await.unwrap();
    assert!(again.applied.is_empty(), "a repeated finish changes nothing");
    assert_exact(&db, 3, "after a fenced-off finish").await;

    let mut someone_else = db.open_shard(ShardSpec::new(3, 1)).await.unwrap();
    let expired = someone_else.reclaim_expired(now + 60_000, &policy(1)).await.unwrap();
    assert_eq!(expired.len(), 12);
    assert_exact(&db, 3, "after reclaiming lapsed leases").await;

    let more = shard.finish_and_claim(&[], 4, storage::now_ms(), lease).await.unwrap().claimed;
    assert_eq!(more.len(), 4);
    assert_eq!(shard.hand_back(storage::now_ms(), "stopping", &policy(3)).await.unwrap().len(), 4);
    assert_exact(&db, 3, "after a release").await;
    drop((shard, someone_else));

    assert!(db.requeue_all_failed().await.unwrap() > 0);
    assert_exact(&db, 3, "after requeueing the failed").await;
    sqlx::query("DELETE FROM videos WHERE video_id % 7 = 0").execute(pool(&db)).await.unwrap();
    assert_exact(&db, 3, "after deletes").await;
}

#[tokio::test]
async fn writes_from_outside_the_fleet_keep_the_counts_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    assert!(ensure(&db, 4).await);
    let statements = [
        "INSERT INTO videos (video_id, source) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (10, 'd'), (11, 'e')",
        "INSERT INTO videos (video_id, source, status) VALUES (20, 'f', 'done'), (21, 'g', 'failed')",
        "INSERT INTO videos (video_id, source) VALUES (1, 'again') ON CONFLICT (video_id) DO NOTHING",
        "INSERT INTO videos (video_id, source) VALUES (2, 'b') ON CONFLICT (video_id) DO UPDATE SET status = 'done'",
        "INSERT INTO videos (source) VALUES ('no id given')",
        "UPDATE videos SET status = 'running' WHERE video_id IN (3, 10)",
        "UPDATE videos SET status = 'running' WHERE video_id = 3",
        "UPDATE videos SET video_id = 13 WHERE video_id = 10",
        "UPDATE videos SET video_id = 30, status = 'done' WHERE video_id = 11",
        "UPDATE videos SET source = 'renamed', attempts = 2",
        "DELETE FROM videos WHERE video_id = 1",
        "DELETE FROM videos WHERE status = 'failed'",
    ];
    for sql in statements {
        pool(&db).execute(sql).await.unwrap();
        assert_exact(&db, 4, sql).await;
    }
    pool(&db).execute("DELETE FROM videos").await.unwrap();
    assert_exact(&db, 4, "after deleting every row").await;
}

#[tokio::test]
async fn a_fleet_of_another_size_recounts_once_and_its_counts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    import(&db, 1..=50).await;
    assert!(ensure(&db, 3).await, "the first fleet of 3 recounts");
    assert!(!ensure(&db, 3).await, "a second starter of the same fleet does not");
    pool(&db).execute("UPDATE videos SET status = 'done' WHERE video_id <= 10").await.unwrap();
    assert_exact(&db, 3, "N = 3").await;

    assert!(ensure(&db, 4).await, "a fleet of 4 recounts");
    assert_exact(&db, 4, "right after the recount for N = 4").await;
    import(&db, 51..=70).await;
    pool(&db).execute("UPDATE videos SET status = 'failed' WHERE video_id % 5 = 0").await.unwrap();
    assert_exact(&db, 4, "N = 4, after more writes").await;
    let shards = db.shard_progress(4).await.unwrap();
    assert_eq!(shards.iter().map(ShardCounts::total).sum::<u64>(), 70);
}

#[tokio::test]
async fn two_starters_at_once_recount_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Store::open(&dir.path().join("fleet.db"), 4).await.unwrap();
    import(&db, 1..=2000).await;
    let (a, b) = tokio::join!(ensure(&db, 5), ensure(&db, 5));
    assert!(a ^ b, "exactly one of them recounted ({a}, {b})");
    assert_exact(&db, 5, "after both").await;
}

#[tokio::test]
async fn readers_answer_from_the_kept_counts_for_their_layout_and_count_the_table_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh(&dir).await;
    import(&db, 1..=30).await;
    ensure(&db, 3).await;
    // Skew the kept counts so a reader that counts the table is told apart from one that
    // reads them.
    pool(&db)
        .execute("UPDATE video_counts SET videos = videos + 100 WHERE shard = 2 AND status = 'done'")
        .await
        .unwrap();

    let shards = db.shard_progress(3).await.unwrap();
    assert_eq!(shards[2], ShardCounts { pending: 10, running: 0, done: 100, failed: 0 });
    let totals = db.totals().await.unwrap();
    assert_eq!(totals, ShardCounts { pending: 30, running: 0, done: 100, failed: 0 }, "totals sum any layout");
    let mut shard = db.open_shard(ShardSpec::new(3, 2)).await.unwrap();
    assert_eq!(shard.counts().await.unwrap().done, 100);
    drop(shard);

    // Another layout is counted from the table.
    let by_two = db.shard_progress(2).await.unwrap();
    assert_eq!(by_two, [ShardCounts { pending: 15, ..Default::default() }; 2]);
    let mut shard = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    assert_eq!(shard.counts().await.unwrap().pending, 15);
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
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM d1_migrations ORDER BY id").fetch_all(pool(&db)).await.unwrap();
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
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM d1_migrations").fetch_one(pool(&db)).await.unwrap();
    assert_eq!(recorded, MIGRATIONS.len() as i64, "the third migration is recorded, not applied again");
    assert_exact(&db, 1, "adopted").await;
}
