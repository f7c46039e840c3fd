//! Sampling mode: every `--sample-interval` each worker's process tree is measured and
//! whatever breaks the limit is killed: the largest handler's process group, or the
//! worker if it is itself the bulk. In cgroup modes the kernel enforces the limit and
//! the same measurement only feeds the record.

use std::time::Duration;

use shared::storage::now_ms;
use shared::units::{ByteSize, human_bytes};

use super::Memory;
use crate::fleet::exit_cause::ExitCause;
use crate::fleet::probe;
use crate::fleet::records::Incident;
use crate::fleet::state::Fleet;
use crate::memory_mode::MemoryMode as Mode;
use crate::procfs::{self, TreeUsage};

/// How long the worker has to take note of a handler's memory kill before it happens.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_millis(200);

impl Memory {
    /// In sampling mode: what to kill, if `usage` breaks the limit.
    pub fn verdict(&self, usage: &TreeUsage) -> Option<Victim> {
        if self.mode != Mode::Sample || usage.total() <= self.limit {
            return None;
        }
        // A handler (a child of the worker, leading its own process group) is the usual
        // culprit; killing it fails one attempt and the worker carries on. Only when the
        // worker itself is the bulk of the tree is the worker killed.
        match usage.children.first() {
            Some(&(pid, rss)) if rss >= usage.root => {
                Some(Victim::Handler { pgid: pid as u32, rss, total: usage.total() })
            }
            _ => Some(Victim::Worker { total: usage.total() }),
        }
    }
}

/// Who the sampler kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    Handler { pgid: u32, rss: u64, total: u64 },
    Worker { total: u64 },
}

/// The error a handler killed by the sampler leaves on its attempt.
fn handler_reason(rss: u64, total: u64, limit: ByteSize) -> String {
    format!(
        "killed by the memory limit: its process group used {} (worker tree {}, limit {limit}, sampled)",
        human_bytes(rss),
        human_bytes(total),
    )
}

impl Fleet {
    /// Sampling mode: measures each worker's tree and kills what breaks the limit.
    pub(in crate::fleet) async fn sample(&mut self) {
        for i in 0..self.slots.len() {
            let k = self.slots[i].id;
            let Some(pid) = self.slots[i].pid() else { continue };
            if self.slots[i].is_being_killed() {
                continue;
            }
            let usage = procfs::tree_usage(pid as i32);
            self.slots[i].measured(Some(&usage));
            match self.memory.verdict(&usage) {
                None => {}
                Some(Victim::Handler { pgid, rss, total }) => {
                    let reason = handler_reason(rss, total, self.config.mem_limit);
                    // Tell the worker first, so the attempt is recorded with this reason.
                    let port = self.slots[i].port;
                    let told =
                        probe::announce_memory_kill(self.reach, port, &self.token, pgid, &reason, ANNOUNCE_TIMEOUT)
                            .await;
                    if let Err(e) = &told {
                        tracing::warn!("worker {k}: could not tell it about the memory kill: {e}");
                    }
                    shared::process::kill_group(pgid);
                    self.slots[i].count_memory_kill();
                    tracing::warn!("worker {k}: handler (process group {pgid}) {reason}");
                    self.list(Incident::handler_memory_kill(now_ms(), k, reason));
                }
                Some(Victim::Worker { total }) => {
                    let reason = ExitCause::SampledOverLimit { tree: total, limit: self.config.mem_limit };
                    tracing::warn!("worker {k}: {reason}; killing it");
                    self.slots[i].count_memory_kill();
                    if let Some(pid) = self.slots[i].kill(reason) {
                        shared::process::kill_group(pid);
                    }
                }
            }
        }
    }

    /// Cgroup modes: measures each worker's tree for the record only.
    pub(in crate::fleet) fn measure_for_record(&mut self) {
        for s in &mut self.slots {
            let usage = s.pid().map(|p| procfs::tree_usage(p as i32));
            s.measured(usage.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(limit: u64) -> Memory {
        Memory { mode: Mode::Sample, limit, root: None, why: String::new() }
    }

    #[test]
    fn a_tree_under_the_limit_is_left_alone() {
        let usage = TreeUsage { root: 10, children: vec![(5, 20)] };
        assert_eq!(sampler(100).verdict(&usage), None);
    }

    #[test]
    fn the_largest_handler_is_killed_before_the_worker() {
        let usage = TreeUsage { root: 10, children: vec![(7, 200), (8, 5)] };
        assert_eq!(sampler(100).verdict(&usage), Some(Victim::Handler { pgid: 7, rss: 200, total: 215 }));
    }

    #[test]
    fn a_worker_that_is_itself_too_big_is_killed() {
        let usage = TreeUsage { root: 300, children: vec![(7, 2)] };
        assert_eq!(sampler(100).verdict(&usage), Some(Victim::Worker { total: 302 }));
    }

    #[test]
    fn a_killed_handler_is_told_why_in_words_its_attempt_keeps() {
        assert_eq!(
            handler_reason(300 << 20, 310 << 20, ByteSize(250 << 20)),
            "killed by the memory limit: its process group used 300.0 MiB (worker tree 310.0 MiB, limit 250M, sampled)"
        );
    }
}
