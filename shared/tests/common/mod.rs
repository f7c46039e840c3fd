//! Helpers of shared's storage tests, for either backend: they go through the domain
//! verbs, and through `storage::testing` for the rows themselves.

// Each test file uses some of these.
#![allow(dead_code)]

/// `on_both_backends!(name);` above `async fn name(db: Store)` makes two tests of it,
/// `name::sqlite` and `name::postgres`, each given a fresh database of its own, opened by
/// the test file's own `open`.
#[allow(unused_macros)] // sqlite.rs and postgres.rs test one backend each
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::open(dir.path().join("fleet.db").into()).await).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(url) = testkit::fresh_postgres().await else { return };
                super::$name(super::open(url).await).await;
            }
        }
    };
}

use std::time::Duration;

use shared::retry::RetryPolicy;
use shared::status::{Outcome, VideoStatus};
use shared::storage::testing;
use shared::storage::{self, Claimed, Finish, ImportRow, NewVideo, Shard, ShardSpec, Store, now_ms};

pub fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, backoff: Duration::from_secs(60), backoff_max: Duration::from_secs(3600) }
}

/// Adds videos `ids` with source `src-<id>`, as another tool would (no import).
pub async fn seed(db: &Store, ids: std::ops::RangeInclusive<i64>) {
    testing::seed_numbered(db, ids, ("src-", ""), false).await.unwrap();
}

/// Imports videos `ids` (source `src-<id>`) the way `supervisor import` does.
pub async fn import(db: &Store, ids: std::ops::RangeInclusive<i64>) {
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

/// A successful finish of claim `c` with `result`.
pub fn done(c: &Claimed, result: &str) -> Finish {
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
pub async fn claim(shard: &mut Shard, want: usize, now: i64, lease: Duration) -> Vec<Claimed> {
    shard.finish_and_claim(&[], want, now, lease).await.unwrap().claimed
}

/// Writes `finishes`; returns the ids whose write took effect.
pub async fn finish(shard: &mut Shard, finishes: &[Finish]) -> Vec<i64> {
    shard.finish_and_claim(finishes, 0, now_ms(), Duration::from_secs(10)).await.unwrap().applied
}

/// Claims video `id` (shard 0 of 1) and finishes it as `status` with `warnings`; returns
/// (videos.warnings, the attempt's warnings).
pub async fn finish_with_warnings(
    db: &Store,
    id: i64,
    status: VideoStatus,
    warnings: &str,
) -> (Option<String>, Option<String>) {
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    // Only video `id` is due, so the claim takes it.
    testing::execute(
        db,
        &format!("UPDATE videos SET run_after = CASE WHEN video_id = {id} THEN 0 ELSE {} END", i64::MAX),
    )
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
    let video = testing::video(db, id).await.unwrap().unwrap().warnings;
    let attempt = testing::attempts(db).await.unwrap().into_iter().rfind(|a| a.video_id == id).unwrap().warnings;
    (video, attempt)
}

/// The kept counts, rows with videos only, against a full `GROUP BY` under layout `n`.
pub async fn assert_exact(db: &Store, n: u32, when: &str) {
    let (layout, kept) = testing::kept_counts(db).await.unwrap();
    assert_eq!(layout, Some(i64::from(n)), "{when}: the counts are kept for {n} shards");
    let counted = testing::table_counts(db, n).await.unwrap();
    assert_eq!(kept, counted, "{when}: kept counts differ from a full count");
}

pub async fn ensure(db: &Store, n: u32) -> bool {
    db.ensure_count_layout(n).await.unwrap()
}
