//! What is particular to PostgreSQL, against a real server (FLEET_TEST_POSTGRES_URL,
//! which `.ci/run` starts; each test skipped with the reason printed where there is
//! none): migrations under an advisory lock, refusing databases that are not a fleet's,
//! the claim's use of the shard index, `SKIP LOCKED`, and text PostgreSQL cannot store.
//! The storage's behaviour on both backends is `backends.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{claim, done, import, policy};
use shared::status::VideoStatus;
use shared::storage::testing::{self, POSTGRES_MIGRATIONS as PG_MIGRATIONS};
use shared::storage::{DbLocation, Finish, ImportRow, NewVideo, ShardSpec, Store, now_ms};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

/// A pool of the test's own on the database, as another client of it.
async fn pg(db: &DbLocation) -> PgPool {
    PgPool::connect(url(db)).await.unwrap()
}

fn url(db: &DbLocation) -> &str {
    match db {
        DbLocation::Postgres(u) => u,
        DbLocation::Sqlite(_) => panic!("a PostgreSQL database"),
    }
}

/// The tables of the database's public schema, by name.
async fn tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Polls `check` until it holds; fails the test after 20 s.
async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_shard_claims_finishes_and_counts_on_postgres_and_a_late_finisher_changes_nothing() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 4).await.unwrap();
    import(&db, 1..=10).await;
    assert!(db.ensure_count_layout(2).await.unwrap());
    let mut first = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let now = now_ms();
    let claimed = first.finish_and_claim(&[], 8, now, Duration::from_secs(1)).await.unwrap();
    let ids: Vec<i64> = claimed.claimed.iter().map(|c| c.video_id).collect();
    assert_eq!(ids, [1, 3, 5, 7, 9]);
    assert!(claimed.short);

    // The lease of video 1 lapses; another session of the shard takes it back and runs it.
    let later = now + 5_000;
    let mut second = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let taken = second.reclaim_expired(later, &policy(3)).await.unwrap();
    assert_eq!(taken.len(), 5);
    let again = claim(&mut second, 1, later, Duration::from_secs(10)).await.remove(0);
    assert_eq!((again.video_id, again.attempt), (1, 2));
    // PostgreSQL's text cannot hold NUL, which a handler's stderr may: it is replaced,
    // not a write that fails at every try.
    let warned = |c, result| Finish { warnings: Some("a warning\0with a NUL".into()), ..done(c, result) };
    let round = second.finish_and_claim(&[warned(&again, "new")], 0, later, Duration::from_secs(10)).await.unwrap();
    assert_eq!(round.applied, [1]);
    let late = [warned(&claimed.claimed[0], "old")];
    let late = first.finish_and_claim(&late, 0, later, Duration::from_secs(10)).await.unwrap();
    assert!(late.applied.is_empty(), "a late finisher changes nothing");
    let row = testing::video(&db, 1).await.unwrap().unwrap();
    assert_eq!((row.result.as_deref(), row.warnings.as_deref()), (Some("new"), Some("a warning\u{FFFD}with a NUL")));

    let shards = db.shard_progress(2).await.unwrap();
    assert_eq!((shards[1].done, shards[1].pending, shards[1].running), (1, 4, 0));
    assert_eq!((shards[0].pending, shards[0].done), (5, 0));
    let totals = db.run_totals(0, 2).await.unwrap();
    assert_eq!(totals.attempts(), 6, "five expired attempts and one done");
    // Closing waits for every connection, the shard sessions' too.
    drop((first, second));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_opens_racing_on_a_fresh_database_both_succeed_and_apply_the_migration_once() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    // Hold the migration lock so that both openers queue behind it, then let them go at
    // once: the second must find the schema the first made, not make it again.
    let mut holder = PgConnection::connect(url(&db)).await.unwrap();
    let lock = testing::POSTGRES_MIGRATE_LOCK;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(lock).execute(&mut holder).await.unwrap();
    let a = tokio::spawn(Store::open(db.clone(), 2));
    let b = tokio::spawn(Store::open(db.clone(), 2));
    wait_until("both openers wait for the migration lock", async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE d.datname = current_database() AND l.locktype = 'advisory' AND NOT l.granted",
        )
        .fetch_one(&mut holder)
        .await
        .unwrap();
        waiting == 2
    })
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock).execute(&mut holder).await.unwrap();
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());

    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT name FROM fleet_migrations ORDER BY name").fetch_all(&mut holder).await.unwrap();
    // Every migration, recorded once: the second opener found them applied (had it run
    // them again, its CREATE TABLE would have failed and so would its open).
    assert_eq!(recorded, PG_MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    import(&a, 1..=3).await;
    assert_eq!(b.count_videos().await.unwrap(), 3, "both opened the same, whole schema");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_schema_made_by_hand_from_the_first_file_is_adopted_and_the_later_files_are_applied() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    // As `psql -f migrations/postgres/0001_schema.sql` leaves it: no record of it.
    let mut psql = PgConnection::connect(url(&db)).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(PG_MIGRATIONS[0].sql)).execute(&mut psql).await.unwrap();
    let store = Store::open(db.clone(), 1).await.expect("adopted, not applied again (its CREATE TABLE would fail)");
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT name FROM fleet_migrations ORDER BY name").fetch_all(&mut psql).await.unwrap();
    assert_eq!(recorded, PG_MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    import(&store, 1..=2).await;
    assert_eq!(store.count_videos().await.unwrap(), 2);
    store.close().await;
}

#[tokio::test]
async fn a_database_a_newer_build_migrated_is_refused_and_left_unchanged() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    Store::open(db.clone(), 1).await.unwrap().close().await;
    let mut newer = PgConnection::connect(url(&db)).await.unwrap();
    sqlx::raw_sql("INSERT INTO fleet_migrations (name, applied_at) VALUES ('0099_future.sql', 1)")
        .execute(&mut newer)
        .await
        .unwrap();
    let err = Store::open(db.clone(), 1).await.unwrap_err();
    assert!(err.is_usage() && err.to_string().contains("0099_future.sql"), "{err}");
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_migrations").fetch_one(&mut newer).await.unwrap();
    assert_eq!(recorded, PG_MIGRATIONS.len() as i64 + 1, "nothing recorded or undone");
}

#[tokio::test]
async fn a_database_holding_another_applications_table_is_refused_and_left_unchanged() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    let mut app = PgConnection::connect(url(&db)).await.unwrap();
    sqlx::raw_sql("CREATE TABLE invoices (id BIGINT PRIMARY KEY, total NUMERIC); INSERT INTO invoices VALUES (7, 9.5)")
        .execute(&mut app)
        .await
        .unwrap();

    let err = Store::open(&db, 2).await.unwrap_err().to_string();
    assert!(err.contains("holds another application's tables (invoices)"), "{err}");
    let err = Store::open_existing(&db, 2).await.unwrap_err().to_string();
    assert!(err.contains("holds another application's tables (invoices)"), "{err}");
    let err = Store::open_read_only(&db).await.unwrap_err().to_string();
    assert!(err.contains("holds another application's tables (invoices)"), "{err}");
    assert_eq!(tables(&mut app).await, ["invoices"], "no table of ours was added");
    let kept: i64 = sqlx::query_scalar("SELECT id FROM invoices").fetch_one(&mut app).await.unwrap();
    assert_eq!(kept, 7);
}

#[tokio::test]
async fn an_empty_database_is_refused_by_the_commands_that_need_a_fleet_one_and_left_empty() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    // `retry` opens with open_existing: a --db naming the wrong, empty database must not
    // come out of it as a new fleet database.
    let err = Store::open_existing(&db, 2).await.unwrap_err().to_string();
    assert!(err.contains("is not a shardfleet one"), "{err}");
    let err = Store::open_read_only(&db).await.unwrap_err().to_string();
    assert!(err.contains("is not a shardfleet one"), "{err}");
    let mut conn = PgConnection::connect(url(&db)).await.unwrap();
    assert!(tables(&mut conn).await.is_empty(), "no table of ours was added");
}

#[tokio::test]
async fn a_schema_with_only_some_of_our_tables_is_refused_and_left_unchanged() {
    let Some(db) = testkit::fresh_postgres().await else { return };
    let mut by_hand = PgConnection::connect(url(&db)).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE videos (video_id BIGINT PRIMARY KEY, source TEXT NOT NULL); INSERT INTO videos VALUES (1, 'a')",
    )
    .execute(&mut by_hand)
    .await
    .unwrap();

    let err = Store::open(&db, 2).await.unwrap_err().to_string();
    assert!(err.contains("partial schema") && err.contains("0001_schema.sql") && err.contains("found videos"), "{err}");
    assert_eq!(tables(&mut by_hand).await, ["videos"], "nothing was added, not even the migrations record");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM videos").fetch_one(&mut by_hand).await.unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_claim_reads_the_shards_pending_index() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 2).await.unwrap();
    // Enough rows, with statistics, that a plan that could not use the index would be
    // a scan of the table.
    testing::seed_numbered(&db, 1..=20_000, ("src-", ""), false).await.unwrap();
    let shard = db.open_shard(ShardSpec::new(4, 1)).await.unwrap();
    testing::execute(&db, "ANALYZE videos").await.unwrap();

    let now = now_ms();
    for want in [1, 64, 512] {
        let sql = testing::postgres_claim_sql(4, 1, want);
        let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN {sql}")))
            .bind("w1")
            .bind(1_i64)
            .bind(now + 10_000)
            .bind(now)
            .fetch_all(&pg(&url).await)
            .await
            .unwrap();
        let plan = plan.join("\n");
        // An index scan says "using <index>", a bitmap scan "on <index>"; either finds
        // the shard's due rows without scanning the table for them. (How the update then
        // joins them back to their rows is the planner's choice by table size: at this
        // size a large batch may hash-join against a scan of the table.)
        let reads_the_index = plan.contains("using videos_pending_mod4") || plan.contains("on videos_pending_mod4");
        assert!(reads_the_index, "a claim of {want} does not use the shard index:\n{plan}");
    }
    drop(shard);
}

#[tokio::test]
async fn a_claim_passes_over_rows_another_transaction_holds_instead_of_waiting() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 4).await.unwrap();
    common::seed(&db, 1..=20).await;
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();

    // Another writer (a supervisor handing back, a stealing worker) holds videos 1-5.
    let pool = pg(&url).await;
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT video_id FROM videos WHERE video_id <= 5 FOR UPDATE").execute(&mut *other).await.unwrap();
    let round = tokio::time::timeout(Duration::from_secs(10), claim(&mut shard, 64, now_ms(), Duration::from_secs(10)))
        .await
        .expect("a claim does not queue behind rows another transaction holds");
    assert_eq!(round.iter().map(|c| c.video_id).collect::<Vec<_>>(), (6..=20).collect::<Vec<_>>());

    other.rollback().await.unwrap();
    let rest = claim(&mut shard, 64, now_ms(), Duration::from_secs(10)).await;
    assert_eq!(rest.iter().map(|c| c.video_id).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "released, they are claimed");
}

#[tokio::test]
async fn a_shard_session_whose_connection_the_server_ended_answers_again_on_a_fresh_one() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 4).await.unwrap();
    common::seed(&db, 1..=10).await;
    let mut shard = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    assert_eq!(shard.counts().await.unwrap().pending, 5);

    // The server ends every connection to the database but the test's own (a restart,
    // a failover, an administrator), and they are gone.
    let pool = pg(&url).await;
    let mut admin = pool.acquire().await.unwrap();
    let others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                  AND backend_type = 'client backend' AND usename = current_user";
    let ended: Vec<i32> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT pg_terminate_backend(pid)::INT FROM ({others}) o")))
            .fetch_all(&mut *admin)
            .await
            .unwrap();
    assert!(!ended.is_empty(), "the session's connection was among them");
    wait_until("the ended connections are gone", async || {
        sqlx::query_scalar::<_, i32>(AssertSqlSafe(others.to_string())).fetch_all(&mut *admin).await.unwrap().is_empty()
    })
    .await;

    // The session's next call meets its dead connection and says the database went
    // away; the session then leaves that connection, so the call after it answers.
    let err = shard.counts().await.unwrap_err();
    assert!(err.outage().is_some(), "{err}");
    assert_eq!(shard.counts().await.unwrap().pending, 5, "a fresh connection answers");
    let round = claim(&mut shard, 8, now_ms(), Duration::from_secs(10)).await;
    assert_eq!(round.iter().map(|c| c.video_id).collect::<Vec<_>>(), [2, 4, 6, 8, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_of_one_shard_claiming_at_once_never_get_the_same_video() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 4).await.unwrap();
    common::seed(&db, 1..=3000).await;
    let session = async |db: Store| {
        let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
        let mut got = Vec::new();
        loop {
            let round = claim(&mut shard, 8, now_ms(), Duration::from_secs(60)).await;
            if round.is_empty() {
                return got;
            }
            got.extend(round.into_iter().map(|c| c.video_id));
        }
    };
    let (a, b) = (tokio::spawn(session(db.clone())), tokio::spawn(session(db.clone())));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    let both: BTreeSet<i64> = a.iter().chain(&b).copied().collect();
    assert_eq!(a.len() + b.len(), both.len(), "a video was claimed by both sessions");
    assert_eq!(both, (1..=3000).collect(), "every video was claimed");
    let rows = testing::videos(&db).await.unwrap();
    assert!(rows.iter().all(|v| v.status == VideoStatus::Running && v.attempts == 1), "one claim each");
}

#[tokio::test]
async fn an_import_of_text_holding_a_nul_is_refused_by_its_line_and_imports_nothing() {
    let Some(url) = testkit::fresh_postgres().await else { return };
    let db = Store::open(&url, 2).await.unwrap();
    // SQLite stores a NUL in text; PostgreSQL's text cannot hold one. The import names
    // the line rather than failing on the server's encoding error.
    let row = |line, id, source: &str| ImportRow {
        line,
        video: NewVideo { video_id: id, source: source.into(), payload: None },
    };
    let mut import = db.begin_import().await.unwrap();
    assert!(import.add(vec![row(2, 1, "fine")]).await.unwrap().is_empty());
    let err = import.add(vec![row(3, 2, "also fine"), row(4, 3, "bad\0name")]).await.unwrap_err().to_string();
    assert_eq!(err, "line 4: video 3 holds a NUL character, which PostgreSQL cannot store; nothing was imported");
    import.roll_back().await.unwrap();
    assert_eq!(db.count_videos().await.unwrap(), 0, "nothing was imported");
}
