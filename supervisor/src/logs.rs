//! Worker logs on disk: `<log-dir>/worker-K.log`, rotated by size to `worker-K.log.1`
//! ... `.N`. The writer side is `LogFile` (used by `supervisor start`); the reader side
//! is `supervisor logs [--worker K] [--follow]`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn log_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("worker-{worker}.log"))
}

/// An append-only log file that rotates itself when it reaches `max_bytes`.
pub struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl LogFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        let written = file.metadata()?.len();
        Ok(LogFile { path, file, written, max_bytes, keep })
    }

    /// Appends one line (which must end with '\n') in one write, rotating first if it
    /// would pass the size limit.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(numbered(n), numbered(n + 1));
            }
            fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// The workers that have a log in `dir`, current or rotated (`worker-K.log.N`), by id.
pub fn logged_workers(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ks: Vec<u32> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let (k, rest) = name.to_str()?.strip_prefix("worker-")?.split_once(".log")?;
            let rotated = rest.strip_prefix('.').is_some_and(|n| n.parse::<u32>().is_ok());
            (rest.is_empty() || rotated).then(|| k.parse().ok())?
        })
        .collect();
    ks.sort_unstable();
    ks.dedup();
    Ok(ks)
}

/// Why `supervisor logs --worker K` has nothing to show: the workers it could show.
pub fn no_log(dir: &Path, worker: u32, logged: &[u32]) -> String {
    let there = match logged {
        [] => "it holds no worker's log".to_string(),
        [k] => format!("it holds worker {k}'s"),
        _ => {
            let ks: Vec<String> = logged.iter().map(u32::to_string).collect();
            format!("it holds the logs of workers {}", ks.join(", "))
        }
    };
    format!("no log of worker {worker} in {}: {there}", dir.display())
}

/// The last `n` lines of the given workers' logs, merged in time order (each line starts
/// with its timestamp) and prefixed `[worker-K]`.
pub fn tail(dir: &Path, workers: &[u32], n: usize) -> std::io::Result<Vec<String>> {
    let mut all = Vec::new();
    for &k in workers {
        let path = log_path(dir, k);
        let Ok(file) = File::open(&path) else { continue };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        let start = lines.len().saturating_sub(n);
        all.extend(lines[start..].iter().map(|l| (l.clone(), k)));
    }
    // Stable: lines of one worker keep their order when timestamps tie.
    all.sort_by(|a, b| a.0.get(..24).cmp(&b.0.get(..24)));
    let start = all.len().saturating_sub(n);
    Ok(all[start..].iter().map(|(l, k)| prefixed(*k, l)).collect())
}

fn prefixed(worker: u32, line: &str) -> String {
    match line.split_once(' ') {
        Some((ts, rest)) => format!("{ts} [worker-{worker}] {rest}"),
        None => format!("[worker-{worker}] {line}"),
    }
}

/// Prints new lines of the workers' logs as they are written, following rotation, until
/// the process is interrupted.
pub async fn follow(dir: &Path, workers: &[u32]) -> std::io::Result<()> {
    struct Cursor {
        worker: u32,
        path: PathBuf,
        offset: u64,
        inode: u64,
        partial: String,
    }
    use std::os::unix::fs::MetadataExt;
    let mut cursors: Vec<Cursor> = workers
        .iter()
        .map(|&k| {
            let path = log_path(dir, k);
            let (offset, inode) = fs::metadata(&path).map(|m| (m.len(), m.ino())).unwrap_or((0, 0));
            Cursor { worker: k, path, offset, inode, partial: String::new() }
        })
        .collect();
    let stdout = std::io::stdout();
    loop {
        for c in &mut cursors {
            let Ok(meta) = fs::metadata(&c.path) else { continue };
            if meta.ino() != c.inode || meta.len() < c.offset {
                // Rotated or truncated: the new file is read from its start.
                c.inode = meta.ino();
                c.offset = 0;
            }
            if meta.len() == c.offset {
                continue;
            }
            let mut f = File::open(&c.path)?;
            f.seek(SeekFrom::Start(c.offset))?;
            let mut buf = String::new();
            let read = f.read_to_string(&mut buf)?;
            c.offset += read as u64;
            c.partial.push_str(&buf);
            let mut out = stdout.lock();
            while let Some(i) = c.partial.find('\n') {
                let line: String = c.partial.drain(..=i).collect();
                writeln!(out, "{}", prefixed(c.worker, line.trim_end_matches('\n')))?;
            }
            out.flush()?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rotates_at_its_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(log_path(dir.path(), 0), 100, 2).unwrap();
        for i in 0..30 {
            log.write_line(&format!("2026-01-01T00:00:{i:02}.000Z line {i}\n")).unwrap();
        }
        let main = fs::read_to_string(log_path(dir.path(), 0)).unwrap();
        assert!(main.len() <= 100 && main.ends_with("line 29\n"), "{main}");
        assert!(dir.path().join("worker-0.log.1").exists());
        assert!(dir.path().join("worker-0.log.2").exists());
        assert!(!dir.path().join("worker-0.log.3").exists());
    }

    #[test]
    fn workers_with_a_log_are_found_by_their_current_or_rotated_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["worker-0.log", "worker-0.log.1", "worker-2.log.3", "worker-5.logx", "worker-x.log", "notes.log"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(logged_workers(dir.path()).unwrap(), [0, 2]);
        assert_eq!(
            no_log(dir.path(), 9, &[0, 2]),
            format!("no log of worker 9 in {}: it holds the logs of workers 0, 2", dir.path().display())
        );
    }

    #[test]
    fn tails_of_several_workers_merge_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(log_path(dir.path(), 0), "2026-01-01T00:00:01.000Z a\n2026-01-01T00:00:03.000Z c\n").unwrap();
        fs::write(log_path(dir.path(), 1), "2026-01-01T00:00:02.000Z b\n").unwrap();
        let lines = tail(dir.path(), &[0, 1], 2).unwrap();
        assert_eq!(lines, ["2026-01-01T00:00:02.000Z [worker-1] b", "2026-01-01T00:00:03.000Z [worker-0] c"]);
    }
}
