//! The storage against both backends, each test run once on a fresh SQLite file and
//! once on a fresh PostgreSQL database (`<test>::sqlite`, `<test>::postgres`; the
//! latter skipped, with the reason printed, when FLEET_TEST_POSTGRES_URL names no
//! server): claiming by shard, due times, fencing of late finishers, lapsed leases,
//! hand-backs, warnings, the kept counts through every kind of write, import, requeue,
//! export, run totals, the supervisor's run records and heartbeats, and the words the
//! schema accepts. What is particular to one backend is in `sqlite.rs` and
//! `postgres.rs`.

#[macro_use]
mod common;

use std::time::Duration;

use common::{assert_exact, claim, done, ensure, finish, finish_with_warnings, import, policy, seed};
use futures_util::TryStreamExt;
use shared::status::{Outcome, ShardCounts, VideoStatus};
use shared::storage::testing;
use shared::storage::{
    DbLocation, EXISTING_NAMED, EventKind, ExportFilter, Finish, FleetRun, FleetWorker, ImportReport, ImportRow,
    NewVideo, Repeat, RequeueOutcome, RunOrder, RunState, ShardSpec, SlotStatus, Store, now_ms,
};

/// Room for two shard sessions and the test's own reads.
async fn open(db: DbLocation) -> Store {
    Store::open(db, 4).await.unwrap()
}

/// The ids of `claimed`, in id order: neither backend's `UPDATE ... RETURNING` promises
/// the order of the rows it returns.
fn ids(claimed: &[shared::storage::Claimed]) -> Vec<i64> {
    let mut ids: Vec<i64> = claimed.iter().map(|c| c.video_id).collect();
    ids.sort_unstable();
    ids
}

on_both_backends!(a_claim_takes_only_due_pending_videos_of_its_own_shard);
async fn a_claim_takes_only_due_pending_videos_of_its_own_shard(db: Store) {
    seed(&db, 1..=30).await;
    testing::execute(&db, &format!("UPDATE videos SET run_after = {} WHERE video_id = 3", now_ms() + 60_000))
        .await
        .unwrap();
    let mut shard = db.open_shard(ShardSpec::new(3, 0)).await.unwrap();
    let got = claim(&mut shard, 64, now_ms(), Duration::from_secs(10)).await;
    assert_eq!(ids(&got), [6, 9, 12, 15, 18, 21, 24, 27, 30], "video 3 is not due yet");
    assert!(got.iter().all(|c| c.attempt == 1 && c.token == got[0].token));
    let again = claim(&mut shard, 64, now_ms(), Duration::from_secs(10)).await;
    assert!(again.is_empty(), "claimed videos are not claimed twice");
}

on_both_backends!(a_claim_takes_the_earliest_due_first_and_no_more_than_asked);
async fn a_claim_takes_the_earliest_due_first_and_no_more_than_asked(db: Store) {
    seed(&db, 1..=6).await;
    // Videos 5 and 6 have been due longest (retries whose backoff ran out long ago); the
    // rest became due later, so an order by id alone would take 1, 2 and 3.
    testing::execute(&db, "UPDATE videos SET run_after = CASE video_id WHEN 5 THEN 1 WHEN 6 THEN 2 ELSE 3 END")
        .await
        .unwrap();
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let got = shard.finish_and_claim(&[], 3, now_ms(), Duration::from_secs(10)).await.unwrap();
    // A want of 3 is claimed as 2 + 1 (batches are powers of two): 5 and 6, then 1.
    assert_eq!(ids(&got.claimed), [1, 5, 6]);
    assert!(!got.short, "more is due");
    let rest = shard.finish_and_claim(&[], 8, now_ms(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&rest.claimed), [2, 3, 4]);
    assert!(rest.short, "fewer than asked: nothing more is due");
}

on_both_backends!(a_late_finisher_whose_lease_was_taken_over_cannot_overwrite_the_newer_result);
async fn a_late_finisher_whose_lease_was_taken_over_cannot_overwrite_the_newer_result(db: Store) {
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
    let row = testing::video(&db, 1).await.unwrap().unwrap();
    assert_eq!((row.result.as_deref(), row.attempts, row.status), (Some("new"), 2, VideoStatus::Done));
    let history: Vec<(i64, String, Option<String>)> =
        testing::attempts(&db).await.unwrap().into_iter().map(|a| (a.attempt, a.outcome, a.worker)).collect();
    assert_eq!(
        history,
        [(1, "expired".into(), Some(first.owner().into())), (2, "done".into(), Some(second.owner().into()))],
        "one history row per attempt, none for the discarded late result"
    );
}

on_both_backends!(a_renewed_lease_is_not_taken_back);
async fn a_renewed_lease_is_not_taken_back(db: Store) {
    seed(&db, 1..=2).await;
    let mut worker = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let mut sweeper = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let now = now_ms();
    claim(&mut worker, 2, now, Duration::from_secs(1)).await;
    assert_eq!(worker.renew(now + 60_000).await.unwrap(), 2);
    assert!(sweeper.reclaim_expired(now + 5_000, &policy(3)).await.unwrap().is_empty());
    assert_eq!(testing::count_table(&db, 1).await.unwrap()[0].running, 2);
}

on_both_backends!(a_lapsed_lease_is_retried_at_once_until_its_last_attempt_then_fails_with_the_reason);
async fn a_lapsed_lease_is_retried_at_once_until_its_last_attempt_then_fails_with_the_reason(db: Store) {
    seed(&db, 1..=1).await;
    let mut gone = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let mut sweeper = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    let now = now_ms();
    claim(&mut gone, 1, now, Duration::from_secs(1)).await;
    let later = now + 5_000;
    assert_eq!(sweeper.reclaim_expired(later, &policy(2)).await.unwrap(), [(1, VideoStatus::Pending)]);
    let due = testing::video(&db, 1).await.unwrap().unwrap().run_after;
    assert_eq!(due, later, "a lost worker's video is due again at once, with no backoff");

    claim(&mut gone, 1, later, Duration::from_secs(1)).await;
    let latest = later + 5_000;
    assert_eq!(sweeper.reclaim_expired(latest, &policy(2)).await.unwrap(), [(1, VideoStatus::Failed)]);
    let row = testing::video(&db, 1).await.unwrap().unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.last_error, Some(format!("lease expired: {} stopped renewing it", gone.owner())));
}

on_both_backends!(a_released_video_gets_its_attempt_back_and_a_crashed_one_does_not);
async fn a_released_video_gets_its_attempt_back_and_a_crashed_one_does_not(db: Store) {
    seed(&db, 1..=2).await;
    let mut a = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let mut b = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    claim(&mut a, 1, now_ms(), Duration::from_secs(10)).await;
    claim(&mut b, 1, now_ms(), Duration::from_secs(10)).await;
    assert_eq!(a.hand_back(&[], now_ms(), "stopping", &policy(3)).await.unwrap(), [2]);
    // Worker 1 of this very process "died": its claims go back as a crash.
    let pid = std::process::id();
    let back = db.release_process(1, pid, Outcome::Crashed, "worker died", now_ms(), &policy(1)).await.unwrap();
    assert_eq!(back, [(1, VideoStatus::Failed)]);
    let rows: Vec<(i64, VideoStatus, i64)> =
        testing::videos(&db).await.unwrap().into_iter().map(|v| (v.video_id, v.status, v.attempts)).collect();
    assert_eq!(rows, [(1, VideoStatus::Failed, 1), (2, VideoStatus::Pending, 0)], "video 1 used its only attempt");
    let outcomes: Vec<String> = testing::attempts(&db).await.unwrap().into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, ["released", "crashed"]);
}

on_both_backends!(warnings_are_kept_for_a_done_attempt_and_never_for_a_failed_one);
async fn warnings_are_kept_for_a_done_attempt_and_never_for_a_failed_one(db: Store) {
    seed(&db, 1..=2).await;
    let warned = Some("File ended prematurely".to_string());
    assert_eq!(
        finish_with_warnings(&db, 1, VideoStatus::Done, "File ended prematurely").await,
        (warned.clone(), warned)
    );
    assert_eq!(finish_with_warnings(&db, 2, VideoStatus::Failed, "ignored").await, (None, None));
    let error = testing::attempts(&db).await.unwrap().into_iter().find(|a| a.video_id == 2).unwrap().error;
    assert_eq!(error.as_deref(), Some("exit code 1: boom"), "a failure's stderr stays in its error");
}

on_both_backends!(the_kept_counts_equal_a_full_count_through_import_claim_finish_retry_release_and_delete);
async fn the_kept_counts_equal_a_full_count_through_import_claim_finish_retry_release_and_delete(db: Store) {
    assert_exact(&db, 1, "fresh").await;
    assert!(ensure(&db, 3).await);
    import(&db, 1..=60).await;
    assert_exact(&db, 3, "after the import").await;

    let mut shard = db.open_shard(ShardSpec::new(3, 1)).await.unwrap();
    let now = now_ms();
    let lease = Duration::from_secs(10);
    let got = shard.finish_and_claim(&[], 16, now, lease).await.unwrap().claimed;
    assert_eq!(got.len(), 16);
    assert_exact(&db, 3, "after a claim").await;

    let ending =
        |i: usize, status, outcome| Finish { status, outcome, error: Some("boom".into()), ..done(&got[i], "") };
    let batch = [
        ending(0, VideoStatus::Done, Outcome::Done),
        ending(1, VideoStatus::Done, Outcome::Done),
        ending(2, VideoStatus::Pending, Outcome::Error),
        ending(3, VideoStatus::Failed, Outcome::Error),
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

    let more = shard.finish_and_claim(&[], 4, now_ms(), lease).await.unwrap().claimed;
    assert_eq!(more.len(), 4);
    assert_eq!(shard.hand_back(&[], now_ms(), "stopping", &policy(3)).await.unwrap().len(), 4);
    assert_exact(&db, 3, "after a release").await;
    drop((shard, someone_else));

    assert!(db.requeue_all_failed().await.unwrap() > 0);
    assert_exact(&db, 3, "after requeueing the failed").await;
    testing::execute(&db, "DELETE FROM videos WHERE video_id % 7 = 0").await.unwrap();
    assert_exact(&db, 3, "after deletes").await;
}

on_both_backends!(writes_from_outside_the_fleet_keep_the_counts_exact);
async fn writes_from_outside_the_fleet_keep_the_counts_exact(db: Store) {
    assert!(ensure(&db, 4).await);
    let mut statements = vec![
        "INSERT INTO videos (video_id, source) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (10, 'd'), (11, 'e'), (-6, 'n')",
        "INSERT INTO videos (video_id, source, status) VALUES (20, 'f', 'done'), (21, 'g', 'failed')",
        "INSERT INTO videos (video_id, source) VALUES (1, 'again') ON CONFLICT (video_id) DO NOTHING",
        "INSERT INTO videos (video_id, source) VALUES (2, 'b') ON CONFLICT (video_id) DO UPDATE SET status = 'done'",
        "UPDATE videos SET status = 'running' WHERE video_id IN (3, 10)",
        "UPDATE videos SET status = 'running' WHERE video_id = 3",
        "UPDATE videos SET video_id = 13 WHERE video_id = 10",
        "UPDATE videos SET video_id = 30, status = 'done' WHERE video_id = 11",
        "UPDATE videos SET video_id = -7 WHERE video_id = 30",
        "UPDATE videos SET source = 'renamed', attempts = 2",
        "DELETE FROM videos WHERE video_id = 1",
        "DELETE FROM videos WHERE status = 'failed'",
    ];
    if !db.is_postgres() {
        // SQLite numbers a row given no id (a rowid table); PostgreSQL's video_id has
        // no default, so it refuses such a row.
        statements.insert(4, "INSERT INTO videos (source) VALUES ('no id given')");
    }
    for sql in statements {
        testing::execute(&db, sql).await.unwrap();
        // Negative ids belong to no shard: kept counts leave them out.
        let (_, kept) = testing::kept_counts(&db).await.unwrap();
        let counted: Vec<_> = testing::table_counts(&db, 4).await.unwrap().into_iter().filter(|c| c.0 >= 0).collect();
        assert_eq!(kept, counted, "{sql}: kept counts differ from a full count");
    }
    testing::execute(&db, "DELETE FROM videos").await.unwrap();
    assert_exact(&db, 4, "after deleting every row").await;
}

on_both_backends!(a_fleet_of_another_size_recounts_once_and_its_counts_stay_exact);
async fn a_fleet_of_another_size_recounts_once_and_its_counts_stay_exact(db: Store) {
    import(&db, 1..=50).await;
    assert!(ensure(&db, 3).await, "the first fleet of 3 recounts");
    assert!(!ensure(&db, 3).await, "a second starter of the same fleet does not");
    testing::execute(&db, "UPDATE videos SET status = 'done' WHERE video_id <= 10").await.unwrap();
    assert_exact(&db, 3, "N = 3").await;

    assert!(ensure(&db, 4).await, "a fleet of 4 recounts");
    assert_exact(&db, 4, "right after the recount for N = 4").await;
    import(&db, 51..=70).await;
    testing::execute(&db, "UPDATE videos SET status = 'failed' WHERE video_id % 5 = 0").await.unwrap();
    assert_exact(&db, 4, "N = 4, after more writes").await;
    let shards = db.shard_progress(4).await.unwrap();
    assert_eq!(shards.iter().map(ShardCounts::total).sum::<u64>(), 70);
}

on_both_backends!(two_starters_at_once_recount_only_once);
async fn two_starters_at_once_recount_only_once(db: Store) {
    import(&db, 1..=2000).await;
    let (a, b) = tokio::join!(ensure(&db, 5), ensure(&db, 5));
    assert!(a ^ b, "exactly one of them recounted ({a}, {b})");
    assert_exact(&db, 5, "after both").await;
}

on_both_backends!(readers_answer_from_the_kept_counts_for_their_layout_and_count_the_table_otherwise);
async fn readers_answer_from_the_kept_counts_for_their_layout_and_count_the_table_otherwise(db: Store) {
    import(&db, 1..=30).await;
    ensure(&db, 3).await;
    // Skew the kept counts so a reader that counts the table is told apart from one that
    // reads them.
    testing::execute(&db, "UPDATE video_counts SET videos = videos + 100 WHERE shard = 2 AND status = 'done'")
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

on_both_backends!(requeueing_puts_failed_videos_back_with_their_attempts_reset_and_leaves_others_alone);
async fn requeueing_puts_failed_videos_back_with_their_attempts_reset_and_leaves_others_alone(db: Store) {
    seed(&db, 1..=5).await;
    for id in [1, 2, 3] {
        testing::mark_failed(&db, id, 3, "boom").await.unwrap();
    }
    assert_eq!(db.requeue_video(1).await.unwrap(), RequeueOutcome::Requeued);
    assert_eq!(db.requeue_video(4).await.unwrap(), RequeueOutcome::NotFailed("pending".into()));
    assert_eq!(db.requeue_video(99).await.unwrap(), RequeueOutcome::Missing);
    let v1 = testing::video(&db, 1).await.unwrap().unwrap();
    assert_eq!((v1.status, v1.attempts, v1.last_error), (VideoStatus::Pending, 0, None));

    // A list is all or nothing: one that is not failed stops the lot.
    let refused = db.requeue_ids(&[2, 4, 98]).await.unwrap().unwrap_err();
    assert_eq!(refused, [(4, Some("pending".to_string())), (98, None)]);
    assert_eq!(testing::video(&db, 2).await.unwrap().unwrap().status, VideoStatus::Failed, "nothing requeued");
    assert_eq!(db.requeue_ids(&[2]).await.unwrap(), Ok(1));
    assert_eq!(db.requeue_all_failed().await.unwrap(), 1, "only video 3 was left failed");
    assert_eq!(testing::count_table(&db, 1).await.unwrap()[0], ShardCounts { pending: 5, ..Default::default() });
    assert_exact(&db, 1, "after requeueing").await;
}

on_both_backends!(an_export_streams_every_row_in_id_order_filtered_by_status_and_warnings);
async fn an_export_streams_every_row_in_id_order_filtered_by_status_and_warnings(db: Store) {
    seed(&db, 1..=4).await;
    testing::mark_failed(&db, 4, 3, "boom").await.unwrap();
    finish_with_warnings(&db, 2, VideoStatus::Done, "w").await;
    finish_with_warnings(&db, 3, VideoStatus::Done, "").await;
    testing::execute(&db, "UPDATE videos SET warnings = NULL WHERE video_id = 3").await.unwrap();

    let export = |filter: ExportFilter<'static>| {
        let db = db.clone();
        async move {
            let rows: Vec<_> = db.export_rows(filter).await.unwrap().try_collect().await.unwrap();
            rows.into_iter().map(|r| (r.video_id, r.status, r.warnings)).collect::<Vec<_>>()
        }
    };
    let all = export(ExportFilter::default()).await;
    assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let statuses: &'static [VideoStatus] = &[VideoStatus::Failed, VideoStatus::Pending];
    let some = export(ExportFilter { statuses, ..Default::default() }).await;
    assert_eq!(some.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 4]);
    let warned = export(ExportFilter { warned: true, ..Default::default() }).await;
    assert_eq!(warned, [(2, VideoStatus::Done, Some("w".to_string()))]);
}

on_both_backends!(the_run_totals_count_attempts_by_shard_since_the_run_began);
async fn the_run_totals_count_attempts_by_shard_since_the_run_began(db: Store) {
    seed(&db, 1..=4).await;
    let began = now_ms();
    let lease = Duration::from_secs(10);
    let mut even = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let mut odd = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let got = claim(&mut even, 2, began, lease).await;
    let timed = |c, ms| Finish { duration_ms: ms, ..done(c, "ok") };
    assert_eq!(finish(&mut even, &[timed(&got[0], 100), timed(&got[1], 300)]).await, [2, 4]);
    let got = claim(&mut odd, 1, began, lease).await;
    let failed = Finish {
        status: VideoStatus::Failed,
        outcome: Outcome::Memory,
        error: Some("oom".into()),
        ..done(&got[0], "")
    };
    assert_eq!(finish(&mut odd, &[failed]).await, [1]);

    let totals = db.run_totals(began, 2).await.unwrap();
    assert_eq!(totals.attempts(), 3);
    assert_eq!(totals.finished, 3);
    assert_eq!(totals.memory_kills, 1);
    assert_eq!(totals.avg_done_ms, Some(200.0));
    let shards: Vec<(u32, u64, Option<f64>)> =
        totals.shards.iter().map(|s| (s.shard, s.attempts, s.avg_done_ms)).collect();
    assert_eq!(shards, [(0, 2, Some(200.0)), (1, 1, None)]);
    let later = db.run_totals(now_ms() + 60_000, 2).await.unwrap();
    assert_eq!(later.attempts(), 0, "attempts before the run began are not its own");
}

/// Import rows for `(line, id)` pairs, with source `new-<id>`.
fn import_rows(lines_and_ids: &[(u64, i64)]) -> Vec<ImportRow> {
    lines_and_ids
        .iter()
        .map(|&(line, id)| ImportRow {
            line,
            video: NewVideo { video_id: id, source: format!("new-{id}"), payload: Some(format!("{{\"n\":{id}}}")) },
        })
        .collect()
}

on_both_backends!(an_import_adds_new_videos_and_counts_and_names_those_already_there_leaving_them_alone);
async fn an_import_adds_new_videos_and_counts_and_names_those_already_there_leaving_them_alone(db: Store) {
    seed(&db, 1..=3).await;
    testing::mark_failed(&db, 3, 2, "boom").await.unwrap();
    let mut import = db.begin_import().await.unwrap();
    // Two batches: the second holds only new ids, above every id there before.
    assert!(import.add(import_rows(&[(1, 2), (2, 4), (3, 3), (4, 5)])).await.unwrap().is_empty());
    assert!(import.add(import_rows(&[(5, 6), (6, 7)])).await.unwrap().is_empty());
    let report = import.commit().await.unwrap();
    assert_eq!(report, ImportReport { inserted: 4, existing: 2, existing_ids: vec![2, 3] });

    let rows: Vec<(i64, Option<String>, Option<String>, VideoStatus)> =
        testing::videos(&db).await.unwrap().into_iter().map(|v| (v.video_id, v.source, v.payload, v.status)).collect();
    let new = |id: i64| (id, Some(format!("new-{id}")), Some(format!("{{\"n\":{id}}}")), VideoStatus::Pending);
    let old = |id: i64, status| (id, Some(format!("src-{id}")), None, status);
    assert_eq!(
        rows,
        [
            old(1, VideoStatus::Pending),
            old(2, VideoStatus::Pending),
            old(3, VideoStatus::Failed),
            new(4),
            new(5),
            new(6),
            new(7)
        ],
        "videos already there keep their source, payload and status"
    );
}

on_both_backends!(an_import_names_only_the_first_few_videos_already_there_and_counts_them_all);
async fn an_import_names_only_the_first_few_videos_already_there_and_counts_them_all(db: Store) {
    seed(&db, 1..=25).await;
    let mut import = db.begin_import().await.unwrap();
    let lines: Vec<(u64, i64)> = (1..=30).map(|id| (id as u64, id)).collect();
    assert!(import.add(import_rows(&lines)).await.unwrap().is_empty());
    let report = import.commit().await.unwrap();
    assert_eq!((report.inserted, report.existing), (5, 25));
    assert_eq!(report.existing_ids, (1..=EXISTING_NAMED as i64).collect::<Vec<_>>());
}

on_both_backends!(a_repeated_id_in_the_file_is_reported_with_the_line_that_had_it_first);
async fn a_repeated_id_in_the_file_is_reported_with_the_line_that_had_it_first(db: Store) {
    let mut import = db.begin_import().await.unwrap();
    assert!(import.add(import_rows(&[(2, 10), (3, 11), (4, 12)])).await.unwrap().is_empty());
    // Id 11 repeats line 3 (an earlier batch), id 13 its own batch's line 6.
    let repeats = import.add(import_rows(&[(5, 13), (6, 11), (7, 13)])).await.unwrap();
    assert_eq!(
        repeats,
        [Repeat { line: 6, video_id: 11, first_line: 3 }, Repeat { line: 7, video_id: 13, first_line: 5 }]
    );
    // The caller stops at a bad file; later rows are still checked for repeats.
    let repeats = import.add(import_rows(&[(8, 10), (9, 14)])).await.unwrap();
    assert_eq!(repeats, [Repeat { line: 8, video_id: 10, first_line: 2 }]);
    import.roll_back().await.unwrap();
    assert_eq!(db.count_videos().await.unwrap(), 0, "a rolled-back import leaves nothing");
}

on_both_backends!(an_import_is_seen_all_at_once_at_commit_and_not_at_all_after_a_roll_back_or_a_drop);
async fn an_import_is_seen_all_at_once_at_commit_and_not_at_all_after_a_roll_back_or_a_drop(db: Store) {
    // Each import begins under a time limit: one that waits for a lock an earlier import
    // failed to give back would otherwise hang the test instead of failing it.
    let begin = |what: &'static str| {
        let db = db.clone();
        async move { tokio::time::timeout(Duration::from_secs(20), db.begin_import()).await.expect(what).unwrap() }
    };

    let mut import = begin("a first import begins").await;
    assert!(import.add(import_rows(&[(1, 1), (2, 2)])).await.unwrap().is_empty());
    assert_eq!(db.count_videos().await.unwrap(), 0, "other connections see nothing before the commit");
    import.roll_back().await.unwrap();
    assert_eq!(db.count_videos().await.unwrap(), 0, "a rolled-back import leaves nothing");

    let mut import = begin("an import after a roll-back begins").await;
    assert!(import.add(import_rows(&[(1, 3), (2, 4)])).await.unwrap().is_empty());
    // A caller that returns early with an error (`?`) drops its import half done.
    drop(import);
    assert_eq!(db.count_videos().await.unwrap(), 0, "a dropped import leaves nothing");

    let mut import = begin("an import after a drop begins").await;
    assert!(import.add(import_rows(&[(1, 5), (2, 6)])).await.unwrap().is_empty());
    assert_eq!(import.commit().await.unwrap().inserted, 2);
    let ids: Vec<i64> = testing::videos(&db).await.unwrap().into_iter().map(|v| v.video_id).collect();
    assert_eq!(ids, [5, 6], "only the committed import's rows, none of the dropped one's");
}

/// A run as `supervisor start` records it, of `workers` slots from port `base_port`.
fn new_run(workers: i64, base_port: i64) -> FleetRun {
    FleetRun {
        supervisor_pid: i64::from(std::process::id()),
        host: Some("test-host".into()),
        mem_limit_bytes: Some(250 << 20),
        mem_enforce: "sample".into(),
        handler: "sleep 20ms".into(),
        concurrency: 4,
        control_token: Some("secret".into()),
        ..FleetRun::example(workers, base_port)
    }
}

on_both_backends!(a_run_its_worker_slots_and_its_events_read_back_as_the_supervisor_wrote_them);
async fn a_run_its_worker_slots_and_its_events_read_back_as_the_supervisor_wrote_them(db: Store) {
    assert_eq!(db.latest_run().await.unwrap(), None, "no fleet ever started here");
    let first = db.insert_run(&new_run(2, 7000)).await.unwrap();
    // Worker ids 1 and 3 of a fleet of 4, reached at another address: one host's share.
    let run = FleetRun { worker_ids: Some("1,3".into()), advertise: Some("10.0.0.7".into()), ..new_run(4, 8000) };
    let id = db.insert_run(&run).await.unwrap();
    assert!(id > first, "run ids grow: the latest run is the highest");
    let latest = db.latest_run().await.unwrap().unwrap();
    assert!(latest.heartbeat_at.is_some(), "a new run is alive from the start");
    assert_eq!(latest, FleetRun { run_id: id, heartbeat_at: latest.heartbeat_at, ..run });

    // A slot for each of its ids, `starting`, on the port of its id.
    let slots = db.run_workers(id).await.unwrap();
    let ports: Vec<(i64, i64, SlotStatus)> = slots.iter().map(|w| (w.worker_id, w.port, w.state)).collect();
    assert_eq!(ports, [(1, 8001, SlotStatus::Starting), (3, 8003, SlotStatus::Starting)]);

    let before = now_ms();
    let running = FleetWorker {
        pid: Some(4242),
        state: SlotStatus::Running,
        started_at: Some(before),
        restarts: 1,
        last_reason: Some("exit code 101".into()),
        last_restart_at: Some(before - 10),
        rss_bytes: Some(1 << 20),
        memory_kills: 2,
        ..slots[1].clone()
    };
    db.update_worker(&running).await.unwrap();
    let slots = db.run_workers(id).await.unwrap();
    let updated_at = slots[1].updated_at.expect("an update stamps its time");
    assert!(updated_at >= before);
    assert_eq!(slots[1], FleetWorker { updated_at: Some(updated_at), ..running });
    assert_eq!(slots[0].state, SlotStatus::Starting, "the other slots are left as they were");
    assert_eq!(db.run_workers(first).await.unwrap().len(), 2, "each run has its own slots");

    db.add_event(id, 1, EventKind::Restart, "exit code 101").await.unwrap();
    db.add_event(id, 3, EventKind::MemoryKill, "handler used 300 MiB").await.unwrap();
    db.add_event(first, 0, EventKind::Kill, "another run's").await.unwrap();
    let events: Vec<(i64, EventKind, String)> =
        db.run_events(id).await.unwrap().into_iter().map(|e| (e.worker_id, e.kind, e.reason)).collect();
    assert_eq!(
        events,
        [(1, EventKind::Restart, "exit code 101".into()), (3, EventKind::MemoryKill, "handler used 300 MiB".into())],
        "the run's own events, oldest first"
    );

    db.set_run_state(id, RunState::Stopping, false).await.unwrap();
    let stopping = db.latest_run().await.unwrap().unwrap();
    assert_eq!((stopping.state, stopping.stopped_at), (RunState::Stopping, None));
    db.set_run_state(id, RunState::Stopped, true).await.unwrap();
    let stopped = db.latest_run().await.unwrap().unwrap();
    assert_eq!(stopped.state, RunState::Stopped);
    assert!(stopped.stopped_at.is_some_and(|t| t >= before), "stopping stamps its end");
    let runs: Vec<(i64, RunState)> =
        testing::fleet_runs(&db).await.unwrap().into_iter().map(|r| (r.run_id, r.state)).collect();
    assert_eq!(runs, [(first, RunState::Running), (id, RunState::Stopped)], "the other run is untouched");
}

on_both_backends!(a_heartbeat_hears_a_stop_request_and_a_takeover_and_a_refused_start_records_nothing);
async fn a_heartbeat_hears_a_stop_request_and_a_takeover_and_a_refused_start_records_nothing(db: Store) {
    let old = db.insert_run(&new_run(2, 7000)).await.unwrap();
    let before = db.clock().await.unwrap();
    assert_eq!(db.heartbeat(old).await.unwrap(), RunOrder::CarryOn);
    let stamped = db.latest_run().await.unwrap().unwrap().heartbeat_at.unwrap();
    assert!(stamped >= before, "a heartbeat is stamped by the database's clock, now");

    // `supervisor stop` asks; the first request's time stays.
    db.request_stop(&[old], 1_000).await.unwrap();
    db.request_stop(&[old], 2_000).await.unwrap();
    assert_eq!(db.heartbeat(old).await.unwrap(), RunOrder::Stop);
    assert_eq!(db.latest_run().await.unwrap().unwrap().stop_requested_at, Some(1_000));

    // A start that its decision refuses records nothing.
    let refused = db
        .begin_run(&new_run(2, 7100), |live, _| {
            assert_eq!(live.iter().map(|r| r.run_id).collect::<Vec<_>>(), [old], "the decision sees the live run");
            Err("worker ids 0-1 are run by another supervisor".to_string())
        })
        .await
        .unwrap();
    assert_eq!(refused.map(|b| b.run_id), Err("worker ids 0-1 are run by another supervisor".to_string()));
    assert_eq!(testing::fleet_runs(&db).await.unwrap().len(), 1, "no run was recorded");

    // One that takes the old run over marks it crashed, and the old supervisor hears it.
    let begun = db.begin_run(&new_run(2, 7200), |_, _| Ok::<_, String>(vec![old])).await.unwrap().unwrap();
    assert_eq!(begun.taken.iter().map(|r| r.run_id).collect::<Vec<_>>(), [old], "the runs taken over come back");
    let new = begun.run_id;
    let runs: Vec<(i64, RunState, bool)> = testing::fleet_runs(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.run_id, r.state, r.stopped_at.is_some()))
        .collect();
    assert_eq!(runs, [(old, RunState::Crashed, true), (new, RunState::Running, false)]);
    assert_eq!(db.heartbeat(old).await.unwrap(), RunOrder::TakenOver);
    assert_eq!(db.heartbeat(new).await.unwrap(), RunOrder::CarryOn);
    assert_eq!(db.live_runs().await.unwrap().iter().map(|r| r.run_id).collect::<Vec<_>>(), [new]);
    assert_eq!(db.heartbeat(new + 100).await.unwrap(), RunOrder::TakenOver, "a run that is not there is no one's");
}

const MEM_ENFORCE: [&str; 4] = ["cgroup-v2", "cgroup-v1", "sample", "none"];

/// One `fleet_runs` row with this state and enforcement.
fn run_row(id: i64, state: &str, mem_enforce: &str) -> String {
    format!(
        "INSERT INTO fleet_runs (run_id, supervisor_pid, started_at, state, workers, base_port, bind, mem_enforce, \
         handler, concurrency) VALUES ({id}, 1, 0, '{state}', 2, 3001, '127.0.0.1', '{mem_enforce}', 'sleep', 1)"
    )
}

/// Runs `sql` on the fleet database as another tool would; Err with the database's words.
async fn write(db: &Store, sql: &str) -> Result<(), String> {
    testing::execute(db, sql).await.map_err(|e| e.to_string())
}

/// `sql` is refused by a CHECK: PostgreSQL's constraints, or SQLite's checking triggers
/// (migration 0006), which raise the words SQLite's own CHECK constraints use.
async fn refused(db: &Store, sql: &str) {
    let e = write(db, sql).await.expect_err(sql);
    let check = if db.is_postgres() { "violates check constraint" } else { "CHECK constraint failed" };
    assert!(e.contains(check), "{sql}: {e}");
}

// The schema holds every state, outcome and kind to the words the code writes: each of
// the Rust types' words is accepted, anything else is refused by the database itself,
// so a tool writing around the fleet cannot leave a row the fleet would misread.
on_both_backends!(every_word_the_code_writes_is_accepted_and_any_other_is_refused_by_the_database);
async fn every_word_the_code_writes_is_accepted_and_any_other_is_refused_by_the_database(db: Store) {
    let mut id = 0;
    for state in RunState::ALL {
        for enforce in MEM_ENFORCE {
            id += 1;
            write(&db, &run_row(id, state.as_str(), enforce)).await.unwrap();
        }
    }
    refused(&db, &run_row(1000, "paused", "none")).await;
    refused(&db, &run_row(1001, "running", "cgroup-v3")).await;
    refused(&db, "UPDATE fleet_runs SET state = 'Running' WHERE run_id = 1").await;
    refused(
        &db,
        "INSERT INTO fleet_runs (supervisor_pid, started_at, state, workers, base_port, bind, mem_enforce, handler, \
         concurrency) VALUES (1, 0, 'running', 0, 3001, '127.0.0.1', 'none', 'sleep', 1)",
    )
    .await;

    for (k, state) in SlotStatus::ALL.iter().enumerate() {
        let sql =
            format!("INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (1, {k}, 3001, '{state}')");
        write(&db, &sql).await.unwrap();
    }
    refused(&db, "INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES (1, 99, 3001, 'sleeping')").await;
    refused(&db, "UPDATE fleet_workers SET state = 'gone' WHERE worker_id = 0").await;

    for kind in EventKind::ALL {
        let sql =
            format!("INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (1, 0, 0, '{kind}', 'r')");
        write(&db, &sql).await.unwrap();
    }
    refused(&db, "INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES (1, 0, 0, 'unhealthy', 'r')")
        .await;

    // Outcomes: in the history (plus 'unknown', which the history trigger writes for a
    // row some tool moved out of running without one) and as a video's last outcome.
    write(&db, "INSERT INTO videos (video_id, source) VALUES (1, 's')").await.unwrap();
    for outcome in Outcome::ALL.iter().map(|o| o.as_str()).chain(["unknown"]) {
        let sql = format!("INSERT INTO attempts (video_id, attempt, outcome) VALUES (1, 1, '{outcome}')");
        write(&db, &sql).await.unwrap();
        if outcome != "unknown" {
            write(&db, &format!("UPDATE videos SET last_outcome = '{outcome}' WHERE video_id = 1")).await.unwrap();
        }
    }
    refused(&db, "INSERT INTO attempts (video_id, attempt, outcome) VALUES (1, 1, 'ok')").await;
    refused(&db, "UPDATE videos SET last_outcome = 'unknown' WHERE video_id = 1").await;
    refused(&db, "UPDATE videos SET attempts = -1 WHERE video_id = 1").await;
    refused(&db, "UPDATE videos SET status = 'paused' WHERE video_id = 1").await;
}

on_both_backends!(a_helping_round_takes_its_own_shard_first_then_a_small_batch_of_the_helped_one);
async fn a_helping_round_takes_its_own_shard_first_then_a_small_batch_of_the_helped_one(db: Store) {
    seed(&db, 1..=60).await;
    let mut shard = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let lease = Duration::from_secs(10);
    let own = shard.finish_and_claim_helping(&[], 28, &[1], now_ms(), lease).await.unwrap();
    assert_eq!(own.claimed.len(), 28, "the own shard had enough");
    assert!(own.claimed.iter().all(|c| c.video_id % 2 == 0));

    let round = shard.finish_and_claim_helping(&[], 64, &[1], now_ms(), lease).await.unwrap();
    let (mine, helped): (Vec<i64>, Vec<i64>) = ids(&round.claimed).into_iter().partition(|id| id % 2 == 0);
    assert_eq!(mine, [58, 60], "the rest of the own shard first");
    assert_eq!(helped.len(), shared::storage::STEAL_BATCH, "then at most a small batch of the helped shard");
    assert!(!round.short, "the helped shard had more than the batch");

    // The helped shard's owner still claims what is left, and nothing twice.
    let mut owner = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let rest = claim(&mut owner, 64, now_ms(), lease).await;
    assert_eq!(rest.len(), 30 - shared::storage::STEAL_BATCH);
    assert!(rest.iter().all(|c| !helped.contains(&c.video_id)));
}

on_both_backends!(a_helper_sweeps_the_lapsed_leases_of_the_shard_it_helps);
async fn a_helper_sweeps_the_lapsed_leases_of_the_shard_it_helps(db: Store) {
    seed(&db, 1..=4).await;
    let now = now_ms();
    let mut gone = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    assert_eq!(claim(&mut gone, 2, now, Duration::from_secs(1)).await.len(), 2);
    let mut helper = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    assert!(helper.reclaim_expired(now + 5_000, &policy(3)).await.unwrap().is_empty(), "its own shard holds none");
    let mut swept = helper.reclaim_expired_in(1, (now + 5_000, None), &policy(3)).await.unwrap();
    swept.sort_unstable_by_key(|s| s.0);
    assert_eq!(swept, [(1, VideoStatus::Pending), (3, VideoStatus::Pending)]);
}

on_both_backends!(heartbeats_are_kept_per_fleet_size_and_worker_and_overwritten_by_the_next);
async fn heartbeats_are_kept_per_fleet_size_and_worker_and_overwritten_by_the_next(db: Store) {
    let mut w0 = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let mut w1 = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let mut other_fleet = db.open_shard(ShardSpec::new(3, 0)).await.unwrap();
    w0.beat(1_000, 15_000).await.unwrap();
    w1.beat(2_000, 15_000).await.unwrap();
    other_fleet.beat(3_000, 15_000).await.unwrap();
    w0.beat(4_000, 9_000).await.unwrap();
    let beats = w1.beats().await.unwrap();
    let seen: Vec<(u32, i64, i64)> = beats.iter().map(|b| (b.worker_id, b.beat_at, b.lease_ms)).collect();
    assert_eq!(seen, [(0, 4_000, 9_000), (1, 2_000, 15_000)]);
    assert_eq!(beats[0].owner, w0.owner());
    assert_eq!(other_fleet.beats().await.unwrap().len(), 1);
    let counts = w0.all_counts().await.unwrap();
    assert_eq!(counts.len(), 2);
}

on_both_backends!(claims_heard_of_are_kept_and_the_rest_are_handed_back_uncounted_after_a_lost_connection);
async fn claims_heard_of_are_kept_and_the_rest_are_handed_back_uncounted_after_a_lost_connection(db: Store) {
    seed(&db, 1..=3).await;
    let mut shard = db.open_shard(ShardSpec::new(1, 0)).await.unwrap();
    // The worker heard of its first claim (video 1); the second's COMMIT (videos 2 and 3,
    // one statement, one token) went through unheard.
    let heard = claim(&mut shard, 1, now_ms(), Duration::from_secs(30)).await.remove(0);
    assert_eq!(heard.video_id, 1);
    claim(&mut shard, 2, now_ms(), Duration::from_secs(30)).await;
    let mut back = shard.hand_back(&[heard.token], now_ms(), "lost as claimed", &policy(3)).await.unwrap();
    back.sort_unstable();
    assert_eq!(back, [2, 3]);
    let rows: Vec<(i64, VideoStatus, i64)> =
        testing::videos(&db).await.unwrap().into_iter().map(|v| (v.video_id, v.status, v.attempts)).collect();
    assert_eq!(
        rows,
        [(1, VideoStatus::Running, 1), (2, VideoStatus::Pending, 0), (3, VideoStatus::Pending, 0)],
        "the unheard claims count no attempt; the one in hand runs on"
    );
}

on_both_backends!(a_lease_that_lapsed_while_the_database_was_away_is_swept_without_counting_the_attempt);
async fn a_lease_that_lapsed_while_the_database_was_away_is_swept_without_counting_the_attempt(db: Store) {
    seed(&db, 1..=2).await;
    let mut gone = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let mut also_gone = db.open_shard(ShardSpec::new(2, 1)).await.unwrap();
    let mut sweeper = db.open_shard(ShardSpec::new(2, 0)).await.unwrap();
    let now = now_ms();
    claim(&mut gone, 1, now, Duration::from_secs(1)).await; // video 2, lapses at now + 1 s
    claim(&mut also_gone, 1, now - 60_000, Duration::from_secs(1)).await; // video 1, lapsed long before
    // The sweeper saw the database away from now to now + 30 s.
    let away = Some((now, now + 30_000));
    let swept = sweeper.reclaim_expired_in(0, (now + 45_000, away), &policy(1)).await.unwrap();
    assert_eq!(swept, [(2, VideoStatus::Pending)], "one attempt of one, yet it runs again: it was not its fault");
    let other = sweeper.reclaim_expired_in(1, (now + 45_000, away), &policy(1)).await.unwrap();
    assert_eq!(other, [(1, VideoStatus::Failed)], "a lease that lapsed before the outage counts as ever");
    let row = testing::video(&db, 2).await.unwrap().unwrap();
    assert_eq!(row.attempts, 0);
    assert!(row.last_error.unwrap().contains("while the database was away"));
}
