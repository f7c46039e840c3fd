//! Reading /proc: whether a pid is still the process we started, and the RSS of a
//! process tree.
//!
//! Written by hand rather than with sysinfo: the sampler measures one tree ten times a
//! second, and walking `/proc/<pid>/task/<tid>/children` touches only that tree where a
//! sysinfo refresh reads every process on the host.

use std::fs;

/// Whether `pid` is alive and its command line mentions `name` (guards against a
/// recycled pid).
pub fn is_running(pid: i64, name: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        // A leader that has exited has no memory left to read its command line from, so
        // it reads empty while its other threads may still hold the process's files; a
        // pid recycled that fast would be a kernel thread, whose parent is kthreadd (2).
        Ok(cmd) if cmd.is_empty() => any_thread_alive(pid) && !is_kernel_thread(pid),
        Ok(cmd) => String::from_utf8_lossy(&cmd).contains(name) && any_thread_alive(pid),
        Err(_) => false,
    }
}

fn is_kernel_thread(pid: i64) -> bool {
    let ppid = |stat: String| stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i64>().ok();
    pid == 2 || fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(ppid) == Some(2)
}

/// Whether some thread of `pid` is not yet a zombie. The leader of a threaded process
/// turns zombie as soon as it exits, while its other threads may still be tearing down
/// and holding its files, listening sockets included: counting the process gone at that
/// moment let a new worker find its port still taken.
fn any_thread_alive(pid: i64) -> bool {
    let not_zombie = |stat: String| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z');
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.flatten().any(|t| fs::read_to_string(t.path().join("stat")).is_ok_and(not_zombie)),
        Err(_) => fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(not_zombie),
    }
}

fn page_size() -> u64 {
    use std::sync::OnceLock;
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map(|v| v as u64).unwrap_or(4096)
    })
}

/// Resident memory of one process, in bytes.
pub fn rss(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The direct children of `pid`, from every one of its threads.
///
/// Listing `/proc/<pid>/task` is not atomic. A thread that exits just as it is listed
/// ends that read early, and the kernel resumes the listing by position, so the live
/// thread after it is skipped, and its children with it; and the children of a thread
/// that exits go to another thread, perhaps one already read. The test harness lost a
/// child this way in CI; a worker's tokio threads come and go the same way. So the
/// threads are read until a reading finds no thread and no child the earlier ones did
/// not (at least twice, at most five times), and the readings are merged.
pub fn children(pid: i32) -> Vec<i32> {
    let mut tids = std::collections::HashSet::new();
    let mut out = std::collections::BTreeSet::new();
    for pass in 0..5 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { break };
        let mut new = false;
        for t in tasks.flatten() {
            let Ok(list) = fs::read_to_string(t.path().join("children")) else { continue };
            new |= tids.insert(t.file_name());
            for child in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                new |= out.insert(child);
            }
        }
        if pass > 0 && !new {
            break;
        }
    }
    out.into_iter().collect()
}

/// A process and its descendants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeUsage {
    /// RSS of the root alone.
    pub root: u64,
    /// Each direct child with the RSS of its whole subtree, largest first.
    pub children: Vec<(i32, u64)>,
}

impl TreeUsage {
    pub fn total(&self) -> u64 {
        self.root + self.children.iter().map(|c| c.1).sum::<u64>()
    }
}

/// Measures `root` and the subtree of each of its children.
pub fn tree_usage(root: i32) -> TreeUsage {
    let mut children: Vec<(i32, u64)> = children(root).into_iter().map(|c| (c, subtree_rss(c, 0))).collect();
    children.sort_by_key(|c| std::cmp::Reverse(c.1));
    TreeUsage { root: rss(root).unwrap_or(0), children }
}

fn subtree_rss(pid: i32, depth: u32) -> u64 {
    // Deep trees are pathological; the bound keeps a fork bomb from stalling us.
    if depth > 64 {
        return 0;
    }
    rss(pid).unwrap_or(0) + children(pid).into_iter().map(|c| subtree_rss(c, depth + 1)).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_found_and_measured() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        // Until it has executed, the child still shows our own command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_running(child.id() as i64, "sleep") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let me = std::process::id() as i32;
        let usage = tree_usage(me);
        assert!(usage.root > 0);
        assert!(usage.children.iter().any(|(pid, rss)| *pid == child.id() as i32 && *rss > 0), "{usage:?}");
        assert!(is_running(child.id() as i64, "sleep"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_running(child.id() as i64, "sleep"));
    }

    #[test]
    fn a_child_is_found_while_other_threads_of_its_parent_come_and_go() {
        // Threads that exit while /proc/<pid>/task is being listed shift the listing, and
        // a live thread listed after them (here, the child's parent) could be skipped.
        // Tokio's blocking pool and the test harness both churn threads like this.
        use std::sync::mpsc;
        // Threads listed before the parent, exiting while it is listed: one at a time,
        // and in bursts of twenty, as an idle blocking pool's threads leave.
        let churn: Vec<_> = (0..400u64)
            .map(|i| if i < 200 { 100 + i * 2000 } else { 100 + (i % 10) * 40_000 })
            .map(|us| std::thread::spawn(move || std::thread::sleep(std::time::Duration::from_micros(us))))
            .collect();
        // The parent thread is created after the churning ones, so it is listed after them.
        let (pid_tx, pid_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let parent = std::thread::spawn(move || {
            let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
            pid_tx.send(child.id() as i32).unwrap();
            let _ = done_rx.recv();
            child.kill().unwrap();
            child.wait().unwrap();
        });
        let child = pid_rx.recv().unwrap();
        let me = std::process::id() as i32;
        let missed = (0..3000).filter(|_| !children(me).contains(&child)).count();
        churn.into_iter().for_each(|t| t.join().unwrap());
        done_tx.send(()).unwrap();
        parent.join().unwrap();
        assert_eq!(missed, 0, "the child was missed in {missed} of 3000 listings");
    }

    #[test]
    fn a_process_whose_main_thread_exited_is_running_until_its_last_thread_ends() {
        // The main thread leaves with pthread_exit while another sleeps on: the leader is
        // a zombie with an empty command line, and the process still holds its files.
        let script = "import threading, time, ctypes\n\
                      threading.Thread(target=lambda: time.sleep(1.0)).start()\n\
                      ctypes.CDLL(None).pthread_exit(None)\n";
        let mut child = std::process::Command::new("python3").args(["-c", script]).spawn().unwrap();
        let pid = child.id() as i64;
        let leader_gone = || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !leader_gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(leader_gone(), "the main thread never exited");
        assert!(is_running(pid, "python3"), "a process with a live thread was counted gone");
        child.wait().unwrap();
        assert!(!is_running(pid, "python3"));
    }
}
