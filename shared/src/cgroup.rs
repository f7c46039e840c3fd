//! Finding memory cgroups and reading their OOM-kill counters, for cgroup v2 and v1.
//! The supervisor creates one cgroup per worker here; the worker reads its own to tell
//! a handler killed for memory from one killed for any other reason.

use std::fs;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A memory cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub version: Version,
    pub dir: PathBuf,
}

impl MemoryCgroup {
    /// OOM kills inside this cgroup so far (`oom_kill` of v2's `memory.events`, or of
    /// v1's `memory.oom_control`, kernel 4.13 and later).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let text = fs::read_to_string(self.dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// The limit in force, if any.
    pub fn limit(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        };
        let text = fs::read_to_string(self.dir.join(file)).ok()?;
        text.trim().parse().ok().filter(|&n: &u64| n < (1 << 62))
    }
}

/// Mount points of the cgroup hierarchies: (v2 mount, v1 memory mount).
pub fn mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return (None, None) };
    let mut v2 = None;
    let mut v1 = None;
    for line in info.lines() {
        // mountinfo: ... mount_point ... - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mount_point = left.split_whitespace().nth(4).map(PathBuf::from);
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let options = r.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" if v2.is_none() => v2 = mount_point,
            "cgroup" if options.split(',').any(|o| o == "memory") => v1 = mount_point,
            _ => {}
        }
    }
    (v2, v1)
}

/// This process's cgroup paths: (v2 path, v1 memory path), from /proc/self/cgroup.
pub fn own_paths() -> (Option<String>, Option<String>) {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else { return (None, None) };
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// Whether a v2 cgroup directory offers the memory controller.
pub fn v2_has_memory(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
}

/// The memory cgroup this process lives in, if the host has one.
pub fn own_memory_cgroup() -> Option<MemoryCgroup> {
    let (v2_mount, v1_mount) = mounts();
    let (v2_path, v1_path) = own_paths();
    if let (Some(mount), Some(path)) = (&v1_mount, &v1_path) {
        let dir = mount.join(path.trim_start_matches('/'));
        if dir.is_dir() {
            return Some(MemoryCgroup { version: Version::V1, dir });
        }
    }
    if let (Some(mount), Some(path)) = (&v2_mount, &v2_path) {
        let dir = mount.join(path.trim_start_matches('/'));
        if dir.join("memory.events").exists() {
            return Some(MemoryCgroup { version: Version::V2, dir });
        }
    }
    None
}
