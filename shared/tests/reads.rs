//! The page's reads against both backends (`<test>::sqlite` on a fresh file,
//! `<test>::postgres` on a fresh database, skipped when FLEET_TEST_POSTGRES_URL names no
//! server): the failed list's keyset pages and search, a video's history, and a
//! drained worker's resume request.

#[macro_use]
mod common;

use shared::storage::testing;
use shared::storage::{CUT_CHARS, DbLocation, FleetRun, Page, RunState, SlotStatus, Store};

async fn open(db: DbLocation) -> Store {
    Store::open(db, 2).await.unwrap()
}

/// Videos 1..=30 with sources `https://v/<id>.mp4`; every third one failed.
async fn thirty_with_ten_failed(db: &Store) {
    testing::seed_numbered(db, 1..=30, ("https://v/", ".mp4"), false).await.unwrap();
    for id in (3..=30).step_by(3) {
        testing::mark_failed(db, id, 3, &format!("boom {id}")).await.unwrap();
    }
}

fn ids(page: &shared::storage::FailedPage) -> Vec<i64> {
    page.rows.iter().map(|r| r.video_id).collect()
}

on_both_backends!(the_failed_list_pages_forward_and_back_by_id);
async fn the_failed_list_pages_forward_and_back_by_id(db: Store) {
    thirty_with_ten_failed(&db).await;
    let first = db.failed_page(None, Page::First, 4).await.unwrap();
    assert_eq!((ids(&first), first.earlier, first.later), (vec![3, 6, 9, 12], false, true));
    assert_eq!(first.rows[0].last_error.as_deref(), Some("boom 3"));
    assert_eq!((first.rows[0].attempts, first.rows[0].source.as_deref()), (3, Some("https://v/3.mp4")));
    let second = db.failed_page(None, Page::After(12), 4).await.unwrap();
    assert_eq!((ids(&second), second.earlier, second.later), (vec![15, 18, 21, 24], true, true));
    let last = db.failed_page(None, Page::After(24), 4).await.unwrap();
    assert_eq!((ids(&last), last.earlier, last.later), (vec![27, 30], true, false));
    let back = db.failed_page(None, Page::Before(15), 4).await.unwrap();
    assert_eq!((ids(&back), back.earlier, back.later), (vec![3, 6, 9, 12], false, true));
    let back = db.failed_page(None, Page::Before(27), 4).await.unwrap();
    assert_eq!((ids(&back), back.earlier, back.later), (vec![15, 18, 21, 24], true, true));
}

on_both_backends!(the_failed_list_is_searched_by_id_or_by_a_literal_source_substring);
async fn the_failed_list_is_searched_by_id_or_by_a_literal_source_substring(db: Store) {
    thirty_with_ten_failed(&db).await;
    // "1" is id 1, which did not fail, and is in the sources of the failed 12 to 21.
    let page = db.failed_page(Some("1"), Page::First, 50).await.unwrap();
    assert_eq!(ids(&page), [12, 15, 18, 21]);
    let page = db.failed_page(Some(" 27 "), Page::First, 50).await.unwrap();
    assert_eq!(ids(&page), [27]);
    // Literal: `%` and `_` are no wildcards, and the case counts.
    for search in ["%", "_", "HTTPS"] {
        assert!(db.failed_page(Some(search), Page::First, 50).await.unwrap().rows.is_empty(), "{search}");
    }
    let page = db.failed_page(Some("0.mp4"), Page::First, 2).await.unwrap();
    assert_eq!((ids(&page), page.later), (vec![30], false));
}

on_both_backends!(long_sources_and_errors_are_cut_in_the_database);
async fn long_sources_and_errors_are_cut_in_the_database(db: Store) {
    let long = "x".repeat(5000);
    testing::seed_numbered(&db, 1..=1, (&long, ""), false).await.unwrap();
    testing::mark_failed(&db, 1, 1, &"é".repeat(5000)).await.unwrap();
    let page = db.failed_page(None, Page::First, 10).await.unwrap();
    let row = &page.rows[0];
    assert_eq!(row.source.as_ref().map(|s| s.chars().count() as i64), Some(CUT_CHARS));
    assert_eq!(row.last_error.as_ref().map(|s| s.chars().count() as i64), Some(CUT_CHARS));
}

on_both_backends!(a_history_lists_every_attempt_latest_first);
async fn a_history_lists_every_attempt_latest_first(db: Store) {
    thirty_with_ten_failed(&db).await;
    testing::execute(
        &db,
        "INSERT INTO attempts (video_id, attempt, worker, started_at, finished_at, duration_ms, outcome, error, \
         warnings) VALUES (3, 1, 'w0', 1000, 1500, 500, 'timeout', 'too slow', NULL), \
         (3, 2, 'w1', 2000, 2100, 100, 'error', 'boom 3', NULL), (4, 1, 'w1', 1, 2, 1, 'done', NULL, 'odd')",
    )
    .await
    .unwrap();
    let h = db.video_history(3).await.unwrap().unwrap();
    assert_eq!((h.status.as_str(), h.attempts, h.last_error.as_deref()), ("failed", 3, Some("boom 3")));
    let tried: Vec<_> = h.history.iter().map(|a| (a.attempt, a.worker.as_deref(), a.outcome.as_str())).collect();
    assert_eq!(tried, [(2, Some("w1"), "error"), (1, Some("w0"), "timeout")]);
    assert_eq!((h.history[1].duration_ms, h.history[1].error.as_deref()), (Some(500), Some("too slow")));
    let h = db.video_history(4).await.unwrap().unwrap();
    assert_eq!(h.history[0].warnings.as_deref(), Some("odd"));
    assert!(db.video_history(999).await.unwrap().is_none());
}

on_both_backends!(a_resume_request_reaches_only_a_drained_slot_of_a_live_run_once);
async fn a_resume_request_reaches_only_a_drained_slot_of_a_live_run_once(db: Store) {
    let run = FleetRun::example(2, 3001);
    let run_id = db.insert_run(&run).await.unwrap();
    let mut slot = db.run_workers(run_id).await.unwrap().remove(1);
    assert!(!db.request_resume(1).await.unwrap(), "a starting slot is no drained one");
    slot.state = SlotStatus::Drained;
    db.update_worker(&slot).await.unwrap();
    assert_eq!(db.run_workers(run_id).await.unwrap()[1].state, SlotStatus::Drained);
    assert!(db.request_resume(1).await.unwrap());
    assert_eq!(db.take_resumes(run_id).await.unwrap(), [1]);
    assert!(db.take_resumes(run_id).await.unwrap().is_empty(), "each request is handed out once");
    db.set_run_state(run_id, RunState::Stopped, true).await.unwrap();
    assert!(!db.request_resume(1).await.unwrap(), "an ended run restarts nothing");
}
