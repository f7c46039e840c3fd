//! Telling a handler killed for memory from one killed for any other reason.
//!
//! In cgroup mode the kernel's OOM killer acts inside this worker's memory cgroup and
//! bumps its `oom_kill` counter; in sampling mode the supervisor tells us (POST
//! /memory-kill/{pgid}) just before it kills a handler's process group.

use std::collections::HashMap;
use std::sync::Mutex;

use shared::cgroup::MemoryCgroup;

#[derive(Debug)]
pub struct MemoryKills {
    /// Process groups the supervisor announced it is killing, with its reason.
    marked: Mutex<HashMap<u32, String>>,
    /// This worker's memory cgroup, if it has one with an OOM counter.
    cgroup: Option<MemoryCgroup>,
    /// The limit, for messages.
    limit: Option<u64>,
}

impl MemoryKills {
    /// Looks up this process's memory cgroup. Only a cgroup with a limit counts: the
    /// host's own cgroup OOM-killing us is not the fleet's limit.
    pub fn detect(limit: Option<u64>) -> MemoryKills {
        let cgroup = shared::cgroup::own_memory_cgroup().filter(|c| c.limit().is_some() && c.oom_kills().is_some());
        MemoryKills { marked: Mutex::new(HashMap::new()), cgroup, limit }
    }

    /// The cgroup's OOM-kill count now (0 without a cgroup).
    pub fn oom_count(&self) -> u64 {
        self.cgroup.as_ref().and_then(|c| c.oom_kills()).unwrap_or(0)
    }

    /// The supervisor is about to kill process group `pgid` for memory.
    pub fn mark(&self, pgid: u32, reason: String) {
        self.marked.lock().unwrap_or_else(|e| e.into_inner()).insert(pgid, reason);
    }

    /// Why a handler whose process group `pgid` died of SIGKILL was killed, if it was
    /// for memory. `oom_before` is the OOM count when the handler started.
    pub fn explain(&self, pgid: u32, oom_before: u64) -> Option<String> {
        if let Some(reason) = self.marked.lock().unwrap_or_else(|e| e.into_inner()).remove(&pgid) {
            return Some(reason);
        }
        let limit = self.cgroup.as_ref().and_then(|c| c.limit()).or(self.limit);
        (self.oom_count() > oom_before).then(|| match limit {
            Some(l) => format!(
                "killed by the memory limit ({} for the worker and its handlers; the kernel's OOM killer acted in its cgroup)",
                shared::units::ByteSize(l)
            ),
            None => "killed by the kernel's OOM killer in the worker's cgroup".to_string(),
        })
    }
}
