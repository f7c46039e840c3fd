//! `--steal`: real workers taking videos of other shards, on SQLite and (where the test
//! server is set, as in `.ci/run`) on PostgreSQL. Each test runs on both backends: the
//! logic is the same, the SQL is not.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use shared::status::VideoStatus;
use shared::storage::{DbLocation, NewVideo, Store, testing};
use testkit::{WorkerBuilder, WorkerProc, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// A fresh database of one backend: the argument workers get, an open store for the
/// test's own reads, and a directory to run in.
struct Db {
    arg: OsString,
    store: Store,
    dir: tempfile::TempDir,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let store = Store::open(&path, 2).await.unwrap();
        Db { arg: path.into_os_string(), store, dir }
    }

    /// None (and a line saying why) without the test server.
    async fn postgres() -> Option<Db> {
        let location: DbLocation = testkit::fresh_postgres().await?;
        let store = Store::open(location.clone(), 2).await.unwrap();
        Some(Db { arg: location.as_arg(), store, dir: tempfile::tempdir().unwrap() })
    }

    /// Both backends this machine has.
    async fn each() -> Vec<Db> {
        let mut all = vec![Db::sqlite().await];
        all.extend(Db::postgres().await);
        all
    }

    fn name(&self) -> &'static str {
        if self.store.is_postgres() { "PostgreSQL" } else { "SQLite" }
    }

    fn spawn(&self, k: u32, n: u32, args: &[&str]) -> WorkerProc {
        WorkerBuilder::new(&self.arg).cwd(self.dir.path()).id(k).workers(n).args(args).spawn()
    }

    /// Videos `ids` whose source is the handler's argument.
    async fn seed(&self, rows: impl IntoIterator<Item = (i64, String)>) {
        let videos: Vec<NewVideo> =
            rows.into_iter().map(|(video_id, source)| NewVideo { video_id, source, payload: None }).collect();
        testing::insert_videos(&self.store, &videos).await.unwrap();
    }

    async fn status_count(&self, status: VideoStatus) -> usize {
        testing::videos(&self.store).await.unwrap().iter().filter(|v| v.status == status).count()
    }

    /// (video, worker id of the attempt's owner) for every `done` attempt.
    async fn done_by(&self) -> Vec<(i64, u32)> {
        testing::attempts(&self.store)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.outcome == "done")
            .map(|a| (a.video_id, shared::storage::owner_of(a.worker.as_deref().unwrap_or("")).unwrap().0))
            .collect()
    }

    /// Every video done, each with exactly one done attempt.
    async fn assert_each_done_once(&self, n: usize) {
        assert_eq!(self.status_count(VideoStatus::Done).await, n, "{}: every video done", self.name());
        let mut ids: Vec<i64> = self.done_by().await.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        let all = ids.len();
        ids.dedup();
        assert_eq!((all, ids.len()), (n, n), "{}: one done attempt per video", self.name());
    }
}

fn exec_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--exec", "sleep {source}", "--lease", "1s", "--poll", "50ms"];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_worker_was_killed_for_good_is_finished_by_the_others_once_each() {
    for db in Db::each().await {
        db.seed((1..=60).map(|id| (id, "0.05".to_string()))).await;
        let args = exec_args(&["--concurrency", "2", "--exit-when-done"]);
        let mut w0 = db.spawn(0, 3, &args);
        let w1 = db.spawn(1, 3, &args);
        let mut w2 = db.spawn(2, 3, &args);
        wait_for(LONG, "worker 1 to have finished a video", || async {
            db.done_by().await.iter().any(|&(_, by)| by == 1)
        })
        .await;
        w1.signal(Signal::SIGKILL);
        drop(w1);

        assert!(w0.wait_exit(LONG).success(), "{}", w0.log_text());
        assert!(w2.wait_exit(LONG).success(), "{}", w2.log_text());
        db.assert_each_done_once(60).await;
        let rescued = db.done_by().await.into_iter().filter(|&(id, by)| id % 3 == 1 && by != 1).count();
        assert!(rescued > 0, "{}: workers 0 and 2 finished shard 1", db.name());
        let logs = format!("{}\n{}", w0.log_text(), w2.log_text());
        assert!(logs.contains("shards helped changed"), "{logs}");
        assert!(logs.contains("took back videos whose lease lapsed"), "the killed worker's claims were swept: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helped_shard_goes_back_to_its_worker_the_moment_it_beats_again() {
    for db in Db::each().await {
        // Shard 0 is quick, shard 1 long enough to still be there when its worker comes.
        db.seed((1..=40).map(|id| (id, if id % 2 == 0 { "0.01" } else { "0.1" }.to_string()))).await;
        let w0 = db.spawn(0, 2, &exec_args(&["--concurrency", "1"]));
        let took = |w: &WorkerProc| {
            let url = w.url("/status");
            async move {
                let s: shared::status::WorkerStatus =
                    testkit::http().get(url).send().await.unwrap().json().await.unwrap();
                (s.took_from.get(&1).copied().unwrap_or(0), s.helping)
            }
        };
        wait_for(LONG, "worker 0 to take videos of the orphaned shard 1", || async { took(&w0).await.0 >= 2 }).await;

        let mut w1 = db.spawn(1, 2, &exec_args(&["--concurrency", "1", "--exit-when-done"]));
        wait_for(LONG, "worker 0 to leave shard 1", || async { took(&w0).await.1.is_empty() }).await;
        let handed_back_at = took(&w0).await.0;
        assert!(w1.wait_exit(LONG).success(), "{}", w1.log_text());
        assert_eq!(took(&w0).await.0, handed_back_at, "{}: nothing taken from shard 1 once it was back", db.name());
        db.assert_each_done_once(40).await;
        let by_owner = db.done_by().await.into_iter().filter(|&(id, by)| id % 2 == 1 && by == 1).count();
        assert!(by_owner > 0, "{}: worker 1 did the rest of its shard", db.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_strict_shards_a_dead_workers_shard_waits_for_it() {
    let db = Db::sqlite().await;
    db.seed((1..=10).map(|id| (id, "0.01".to_string()))).await;
    // Worker 1 never comes; worker 0 would take its shard after a lease (1s) with the
    // default --steal orphaned.
    let mut w0 = db.spawn(0, 2, &exec_args(&["--steal", "off", "--exit-when-done"]));
    // It exits, without waiting for shard 1, once its own is done: nothing runs after.
    assert!(w0.wait_exit(LONG).success(), "{}", w0.log_text());
    assert_eq!(db.status_count(VideoStatus::Pending).await, 5, "shard 1 untouched");
    assert!(db.done_by().await.iter().all(|&(id, by)| id % 2 == 0 && by == 0));
}

/// Makespan of a skewed workload with `--steal idle`: the first start to the last
/// finish, against the ideal (all job time over all slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_absorb_a_skewed_shard_within_the_makespan_bound() {
    for db in Db::each().await {
        // Shard 0's videos take 8 times as long as shard 1's.
        db.seed((1..=48).map(|id| (id, if id % 2 == 0 { "0.16" } else { "0.02" }.to_string()))).await;
        let args = exec_args(&["--steal", "idle", "--concurrency", "2", "--exit-when-done"]);
        let mut w0 = db.spawn(0, 2, &args);
        let mut w1 = db.spawn(1, 2, &args);
        assert!(w0.wait_exit(LONG).success(), "{}", w0.log_text());
        assert!(w1.wait_exit(LONG).success(), "{}", w1.log_text());
        db.assert_each_done_once(48).await;

        let attempts = testing::attempts(&db.store).await.unwrap();
        let start = attempts.iter().filter_map(|a| a.started_at).min().unwrap();
        let end = attempts.iter().filter_map(|a| a.finished_at).max().unwrap();
        let work: i64 = attempts.iter().map(|a| a.finished_at.unwrap() - a.started_at.unwrap()).sum();
        let longest = attempts.iter().map(|a| a.finished_at.unwrap() - a.started_at.unwrap()).max().unwrap();
        let ideal = work as f64 / 4.0;
        let makespan = (end - start) as f64;
        // Static shards: shard 0 alone takes 24 × 160 ms / 2 slots = 1.92 s against an
        // ideal of 1.08 s (1.78 times); the bound allows one long job of granularity.
        assert!(
            makespan <= 1.3 * ideal + longest as f64,
            "{}: makespan {makespan} ms against an ideal {ideal} ms (longest job {longest} ms)",
            db.name()
        );
        let helped = db.done_by().await.into_iter().filter(|&(id, by)| id % 2 == 0 && by == 1).count();
        assert!(helped > 0, "{}: worker 1 took long videos of shard 0", db.name());
    }
}

#[test]
fn an_unknown_steal_mode_is_one_clear_sentence_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let (code, out) = testkit::run_worker_to_end(
        &["--worker-id", "0", "--workers", "2", "--db", db.to_str().unwrap(), "--sleep", "1ms", "--steal", "sometimes"],
        dir.path(),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("invalid value 'sometimes' for '--steal"), "{out}");
    assert!(!Path::new(&db).exists(), "nothing was created");
}
