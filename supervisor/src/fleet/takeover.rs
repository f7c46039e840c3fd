//! Who may start: a new run against the live runs on its database. Several supervisors
//! may drive one fleet, each its own worker ids (`--worker-ids`, usually one host each
//! on PostgreSQL); two live ones must never run the same id, and a dead one must never
//! keep its ids from being run.
//!
//! Whether a run is alive is `liveness.rs`'s to say. A supervisor that is in fact alive
//! but was cut off longer than `liveness::STALE_AFTER_MS` finds at its next heartbeat that it was
//! taken over, and stops its workers (their finishes are fenced meanwhile, so nothing is
//! recorded twice).

use shared::storage::FleetRun;

use crate::liveness::{describe, is_alive};

/// Why a run must not start: a live run in its way.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub why: String,
    pub by: Box<FleetRun>,
}

/// The live runs `run` takes over (dead ones whose ids it shares), or why it must not
/// start. Dead runs whose ids it does not share are left for their own ids' next start.
pub fn decide(run: &FleetRun, live: &[FleetRun], db_now: i64) -> Result<Vec<i64>, Refusal> {
    let mine = run.ids();
    let mut taken = Vec::new();
    for prev in live {
        let theirs = prev.ids();
        let shared = mine.overlap(&theirs);
        if !is_alive(prev, db_now) {
            // A dead run of another fleet size is in the way of every id: its shards
            // are not ours to split.
            if !shared.is_empty() || prev.workers != run.workers {
                taken.push(prev.run_id);
            }
            continue;
        }
        let who = describe(prev);
        if prev.worker_ids.is_none() && run.worker_ids.is_none() {
            // One supervisor per fleet, as on one host: said as it always was.
            let why = format!("a fleet is already running ({who}); stop it with `supervisor stop` first");
            return Err(Refusal { why, by: Box::new(prev.clone()) });
        }
        if prev.workers != run.workers {
            let why = format!(
                "a fleet of {} workers is running on this database ({who}); a fleet of {} cannot run beside it: \
                 stop it first with `supervisor stop`",
                prev.workers, run.workers
            );
            return Err(Refusal { why, by: Box::new(prev.clone()) });
        }
        if !shared.is_empty() {
            let ids =
                if shared.len() == 1 { format!("worker id {shared} is") } else { format!("worker ids {shared} are") };
            let why = format!(
                "{ids} already running ({who}, ids {theirs}); start the other ids with --worker-ids, or stop \
                 that supervisor first with `supervisor stop --worker-ids {theirs}`"
            );
            return Err(Refusal { why, by: Box::new(prev.clone()) });
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::STALE_AFTER_MS;

    const NOW: i64 = 1_700_000_000_000;

    fn run(host: &str, pid: i64, workers: i64, ids: Option<&str>, heartbeat_at: Option<i64>) -> FleetRun {
        FleetRun {
            run_id: pid,
            supervisor_pid: pid,
            host: Some(host.into()),
            started_at: NOW - 60_000,
            worker_ids: ids.map(Into::into),
            heartbeat_at,
            ..FleetRun::example(workers, 3001)
        }
    }

    fn here() -> String {
        shared::host::name().expect("this host has a name")
    }

    /// Another host's name, whatever this one is called.
    fn there() -> String {
        format!("not-{}", here())
    }

    #[test]
    fn disjoint_ids_of_one_fleet_run_side_by_side() {
        let live = [run(&there(), 7, 6, Some("0-2"), Some(NOW - 500))];
        assert_eq!(decide(&run(&here(), 1, 6, Some("3-5"), None), &live, NOW), Ok(vec![]));
    }

    #[test]
    fn overlapping_ids_of_a_live_run_on_another_host_are_refused_naming_the_ids_and_the_host() {
        let live = [run(&there(), 7, 6, Some("0-3"), Some(NOW - 500))];
        let why = decide(&run(&here(), 1, 6, Some("3-5"), None), &live, NOW).unwrap_err().why;
        assert!(
            why.contains("worker id 3 is already running") && why.contains(&format!("on host {}", there())),
            "{why}"
        );
    }

    #[test]
    fn a_run_on_another_host_whose_heartbeat_is_stale_is_taken_over() {
        let live = [run(&there(), 7, 6, Some("0-3"), Some(NOW - STALE_AFTER_MS - 1))];
        assert_eq!(decide(&run(&here(), 1, 6, Some("3-5"), None), &live, NOW), Ok(vec![7]));
    }

    #[test]
    fn a_run_on_this_host_whose_supervisor_is_gone_is_taken_over_at_once() {
        // A fresh heartbeat does not matter on this host: the pid is the truth.
        let live = [run(&here(), i32::MAX as i64, 2, None, Some(NOW))];
        assert_eq!(decide(&run(&here(), 1, 2, None, None), &live, NOW), Ok(vec![i32::MAX as i64]));
    }

    #[test]
    fn a_pid_reused_by_another_program_counts_as_a_gone_supervisor() {
        // A live process, but not a supervisor.
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i64::from(sleeper.id());
        // Until it execs, the child is a copy of this test binary, whose name holds
        // "supervisor".
        while !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep")) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let live = [run(&here(), pid, 2, None, Some(NOW))];
        let decided = decide(&run(&here(), 1, 2, None, None), &live, NOW);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(decided, Ok(vec![pid]));
    }

    #[test]
    fn a_live_fleet_of_another_size_refuses_any_ids() {
        let live = [run(&there(), 7, 4, Some("0-1"), Some(NOW))];
        let why = decide(&run(&here(), 1, 6, Some("4-5"), None), &live, NOW).unwrap_err().why;
        assert!(why.contains("a fleet of 4 workers is running"), "{why}");
    }

    #[test]
    fn a_run_on_another_host_that_never_beat_is_taken_for_alive() {
        let live = [run(&there(), 7, 2, None, None)];
        let why = decide(&run(&here(), 1, 2, None, None), &live, NOW).unwrap_err().why;
        assert!(why.contains("a fleet is already running"), "{why}");
    }

    #[test]
    fn one_fleet_over_another_is_refused_in_the_words_of_one_host() {
        let live = [run(&there(), 7, 2, None, Some(NOW))];
        let why = decide(&run(&here(), 1, 2, None, None), &live, NOW).unwrap_err().why;
        assert!(why.starts_with("a fleet is already running (supervisor pid 7 on host"), "{why}");
        assert!(why.ends_with("stop it with `supervisor stop` first"), "{why}");
    }

    #[test]
    fn a_dead_run_of_other_ids_is_left_to_its_own_next_start() {
        let live = [run(&there(), 7, 6, Some("0-2"), Some(NOW - STALE_AFTER_MS - 1))];
        assert_eq!(decide(&run(&here(), 1, 6, Some("3-5"), None), &live, NOW), Ok(vec![]));
    }
}
