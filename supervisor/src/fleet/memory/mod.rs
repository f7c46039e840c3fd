//! Holding each worker's process tree under its memory limit.
//!
//! Where the kernel can do it, each worker runs in a cgroup of its own (v2 `memory.max`
//! with `memory.swap.max = 0`, or v1 `memory.limit_in_bytes` and, where present,
//! `memory.memsw.limit_in_bytes`); the worker joins it before it executes, so every
//! process it starts is counted. Elsewhere the supervisor samples the RSS of each
//! worker's tree and kills what breaks the limit (`sample.rs`).

mod sample;

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use shared::cgroup::{self, MemoryCgroup, Version};

use crate::cli::MemEnforce;
use crate::memory_mode::MemoryMode as Mode;

/// The enforcement in force for a run.
#[derive(Debug)]
pub struct Memory {
    pub mode: Mode,
    pub limit: u64,
    /// The run's parent cgroup (one child per worker), in cgroup modes.
    root: Option<PathBuf>,
    /// Why this mode and not a stronger one, for the log.
    pub why: String,
}

/// A worker's own cgroup.
#[derive(Debug, Clone)]
pub struct WorkerCgroup {
    pub cgroup: MemoryCgroup,
    /// `<dir>/cgroup.procs`, ready for the child to write "0" into before it executes.
    pub procs: CString,
}

impl Memory {
    /// Sets up the strongest enforcement `requested` allows on this host.
    pub fn setup(requested: MemEnforce, limit: u64, tag: &str) -> anyhow::Result<Memory> {
        if requested == MemEnforce::Sample {
            return Ok(Memory { mode: Mode::Sample, limit, root: None, why: "sampling was asked for".into() });
        }
        let mut reasons = Vec::new();
        match try_v2(tag) {
            Ok(root) => {
                return Ok(Memory {
                    mode: Mode::CgroupV2,
                    limit,
                    root: Some(root),
                    why: "cgroup v2 is available".into(),
                });
            }
            Err(e) => reasons.push(format!("cgroup v2: {e:#}")),
        }
        match try_v1(tag) {
            Ok(root) => {
                return Ok(Memory {
                    mode: Mode::CgroupV1,
                    limit,
                    root: Some(root),
                    why: format!("cgroup v1 is available ({})", reasons.join("; ")),
                });
            }
            Err(e) => reasons.push(format!("cgroup v1: {e:#}")),
        }
        if requested == MemEnforce::Cgroup {
            bail!("--mem-enforce cgroup: no usable memory cgroup on this host ({})", reasons.join("; "));
        }
        Ok(Memory {
            mode: Mode::Sample,
            limit,
            root: None,
            why: format!("no usable memory cgroup ({})", reasons.join("; ")),
        })
    }

    /// A fresh cgroup for worker `k` with the limit set, in cgroup modes.
    pub fn prepare_worker(&self, k: u32) -> anyhow::Result<Option<WorkerCgroup>> {
        let Some(root) = &self.root else { return Ok(None) };
        let dir = root.join(format!("worker-{k}"));
        if dir.exists() {
            empty_and_remove(&dir);
        }
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let version = if self.mode == Mode::CgroupV2 { Version::V2 } else { Version::V1 };
        let limit = self.limit.to_string();
        match version {
            Version::V2 => {
                write(&dir.join("memory.max"), &limit)?;
                // Swap would let a handler exceed the limit slowly instead of dying.
                let _ = write(&dir.join("memory.swap.max"), "0");
            }
            Version::V1 => {
                write(&dir.join("memory.limit_in_bytes"), &limit)?;
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limit)?;
                }
            }
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())?;
        Ok(Some(WorkerCgroup { cgroup: MemoryCgroup { version, dir }, procs }))
    }

    /// Removes a worker's cgroup once its process is gone, killing any straggler.
    pub fn release_worker(&self, cg: &WorkerCgroup) {
        empty_and_remove(&cg.cgroup.dir);
    }

    /// Removes the run's parent cgroup.
    pub fn cleanup(&self) {
        if let Some(root) = &self.root {
            if let Ok(entries) = fs::read_dir(root) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        empty_and_remove(&e.path());
                    }
                }
            }
            let _ = fs::remove_dir(root);
        }
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    fs::write(path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
}

fn empty_and_remove(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    // The kernel needs a moment to reap what was just killed before the directory can go.
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!("could not remove cgroup {}", dir.display());
}

/// Removes the cgroups of earlier runs whose supervisor is gone (killed before it could
/// clean up), and any process left in them.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("shardfleet-").and_then(|p| p.parse::<i64>().ok()) else { continue };
        if pid == std::process::id() as i64 || crate::procfs::is_running(pid, "supervisor") {
            continue;
        }
        if let Ok(children) = fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                empty_and_remove(&c.path());
            }
        }
        empty_and_remove(&e.path());
        tracing::info!("removed the cgroup of an earlier run: {}", e.path().display());
    }
}

fn try_v2(tag: &str) -> anyhow::Result<PathBuf> {
    let (mount, _) = cgroup::mounts();
    let mount = mount.context("no cgroup2 hierarchy is mounted")?;
    let (path, _) = cgroup::own_paths();
    let own = mount.join(path.context("this process has no cgroup2 path")?.trim_start_matches('/'));
    if !cgroup::v2_has_memory(&own) {
        bail!("the memory controller is not available in {}", own.display());
    }
    // Children get the memory controller only if our cgroup delegates it; that fails
    // when our cgroup holds processes itself (the "no internal processes" rule). The
    // cgroup systemd delegates to a service (Delegate=memory) holds the supervisor
    // alone: it moves into a leaf of its own and tries again.
    let control = fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    if !control.split_whitespace().any(|c| c == "memory")
        && let Err(e) = write(&own.join("cgroup.subtree_control"), "+memory")
    {
        move_into_leaf(&own).map_err(|_| e).context("cannot delegate the memory controller")?;
        write(&own.join("cgroup.subtree_control"), "+memory").context("cannot delegate the memory controller")?;
    }
    remove_stale(&own);
    let root = own.join(tag);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    if let Err(e) = write(&root.join("cgroup.subtree_control"), "+memory") {
        let _ = fs::remove_dir(&root);
        return Err(e);
    }
    Ok(root)
}

/// The leaf below its own cgroup that the supervisor moves into, as systemd 254's
/// `DelegateSubgroup=supervisor` would have placed it (deploy/README.md).
const LEAF: &str = "supervisor";

/// Moves this process into `own/supervisor`, so that `own` holds no process and may
/// pass controllers on; only when this process is alone in `own`, since moving out of a
/// cgroup that others share (a login session's) would not free it and is not ours to do.
fn move_into_leaf(own: &Path) -> anyhow::Result<()> {
    let me = std::process::id().to_string();
    let procs = fs::read_to_string(own.join("cgroup.procs"))?;
    if procs.split_whitespace().any(|p| p != me) {
        bail!("other processes share {}", own.display());
    }
    let leaf = own.join(LEAF);
    fs::create_dir_all(&leaf).with_context(|| format!("cannot create {}", leaf.display()))?;
    write(&leaf.join("cgroup.procs"), &me)?;
    tracing::info!("moved into {} so that its parent can give the workers' cgroups memory limits", leaf.display());
    Ok(())
}

fn try_v1(tag: &str) -> anyhow::Result<PathBuf> {
    let (_, mount) = cgroup::mounts();
    let mount = mount.context("no cgroup v1 memory hierarchy is mounted")?;
    let (_, path) = cgroup::own_paths();
    let own = mount.join(path.context("this process has no memory cgroup path")?.trim_start_matches('/'));
    remove_stale(&own);
    let root = own.join(tag);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Prove we can set a limit before relying on it.
    let probe = root.join("memory.limit_in_bytes");
    if let Err(e) = fs::write(&probe, u64::MAX.to_string()).or_else(|_| fs::write(&probe, "-1")) {
        let _ = fs::remove_dir(&root);
        bail!("cannot set a limit in {}: {e}", root.display());
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_moves_into_a_leaf_only_when_it_is_alone_in_its_cgroup() {
        let alone = tempfile::tempdir().unwrap();
        fs::write(alone.path().join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        move_into_leaf(alone.path()).unwrap();
        let moved = fs::read_to_string(alone.path().join("supervisor/cgroup.procs")).unwrap();
        assert_eq!(moved, std::process::id().to_string());

        let shared = tempfile::tempdir().unwrap();
        fs::write(shared.path().join("cgroup.procs"), format!("1\n{}\n", std::process::id())).unwrap();
        let e = move_into_leaf(shared.path()).unwrap_err();
        assert!(e.to_string().starts_with("other processes share"), "{e}");
        assert!(!shared.path().join("supervisor").exists(), "a shared cgroup is left as it was");
    }
}
