//! The PostgreSQL backend against a real server (FLEET_TEST_POSTGRES_URL, which
//! `.ci/run` starts; skipped with the reason printed where there is none): what is
//! particular to PostgreSQL, such as migrations under an advisory lock and the claim's
//! use of the shard index.

use std::time::Duration;

use shared::retry::RetryPolicy;
use shared::status::{Outcome, VideoStatus};
use shared::storage::{DbLocation, Finish, ImportRow, NewVideo, ShardSpec, Store, now_ms};

/// A fresh, empty database on the test server, or None (with the reason printed).
async fn fresh_database() -> Option<DbLocation> {
    let Ok(server) = std::env::var("FLEET_TEST_POSTGRES_URL") else {
        eprintln!("skipped: FLEET_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)");
        return None;
    };
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("the test server answers");
    let name = format!("fleet_{}_{:x}", std::process::id(), rand_suffix());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let (base, _) = server.rsplit_once('/').expect("the URL names a database");
    Some(format!("{base}/{name}").parse().unwrap())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, backoff: Duration::from_secs(60), backoff_max: Duration::from_secs(3600) }
}

async fn import(db: &Store, ids: std::ops::RangeInclusive<i64>) {
    let mut import = db.begin_import().await.unwrap();
    let rows = ids
        .map(|id| ImportRow {
            line: id as u64,
            video: NewVideo { video_id: id, source: format!("src-{id}"), payload: None },
        })
        .collect();
    assert!(import.add(rows).await.unwrap().is_empty());
    import.commit().await.unwrap();
}

#[tokio::test]
async fn a_shard_claims_finishes_and_counts_on_postgres_and_a_late_finisher_changes_nothing() {
    let Some(url) = fresh_database().await else { return };
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
    let again = second.finish_and_claim(&[], 1, later, Duration::from_secs(10)).await.unwrap().claimed.remove(0);
    assert_eq!((again.video_id, again.attempt), (1, 2));
    let done = |c: &shared::storage::Claimed, result: &str| Finish {
        video_id: c.video_id,
        token: c.token,
        status: VideoStatus::Done,
        outcome: Outcome::Done,
        result: Some(result.into()),
        error: None,
        warnings: Some("a warning\0with a NUL".into()),
        run_after: 0,
        finished_at: later,
        duration_ms: 1,
    };
    let round = second.finish_and_claim(&[done(&again, "new")], 0, later, Duration::from_secs(10)).await.unwrap();
    assert_eq!(round.applied, [1]);
    let late =
        first.finish_and_claim(&[done(&claimed.claimed[0], "old")], 0, later, Duration::from_secs(10)).await.unwrap();
    assert!(late.applied.is_empty(), "a late finisher changes nothing");

    let shards = db.shard_progress(2).await.unwrap();
    assert_eq!((shards[1].done, shards[1].pending, shards[1].running), (1, 4, 0));
    assert_eq!((shards[0].pending, shards[0].done), (5, 0));
    let totals = db.run_totals(0, 2).await.unwrap();
    assert_eq!(totals.attempts(), 6, "five expired attempts and one done");
    // Closing waits for every connection, the shard sessions' too.
    drop((first, second));
    db.close().await;
}
