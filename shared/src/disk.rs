//! The disk under a SQLite database: which filesystem holds it and how much is free,
//! for the one line that says a full disk is what the fleet waits for.

use std::path::Path;

use crate::units::human_bytes;

/// Free bytes below which a filesystem counts as full: SQLite needs room for a page
/// or two of WAL before a write can land.
const FULL_BELOW: u64 = 1024 * 1024;

/// The filesystem holding `path` and what is free on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Where it is mounted (`/`, `/var/lib/fleet`), as `/proc/self/mountinfo` says.
    pub mount: String,
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    pub size: u64,
}

impl Disk {
    /// The filesystem of `path` (a file or directory; for a file not yet there, its
    /// directory). None where it cannot be read.
    pub fn of(path: &Path) -> Option<Disk> {
        let dir = if path.is_dir() { path } else { path.parent().filter(|p| !p.as_os_str().is_empty())? };
        let dir = dir.canonicalize().ok()?;
        let st = nix::sys::statvfs::statvfs(&dir).ok()?;
        let frag = st.fragment_size() as u64;
        Some(Disk {
            mount: mount_point(&dir).unwrap_or_else(|| "/".into()),
            free: st.blocks_available() as u64 * frag,
            size: st.blocks() as u64 * frag,
        })
    }

    pub fn is_full(&self) -> bool {
        self.free < FULL_BELOW
    }

    /// "the filesystem at /data (12 KiB free of 8.0 MiB)".
    pub fn describe(&self) -> String {
        format!("the filesystem at {} ({} free of {})", self.mount, human_bytes(self.free), human_bytes(self.size))
    }
}

/// The longest mount point that holds `dir`.
fn mount_point(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| dir.starts_with(m))
        .max_by_key(|m| m.len())
}

/// mountinfo writes a space, tab, newline and backslash in a path as octal escapes.
fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_of_a_temp_file_is_found_with_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::of(&dir.path().join("fleet.db")).expect("a temp dir's disk can be read");
        assert!(disk.size > 0 && disk.free <= disk.size);
        assert!(disk.mount.starts_with('/'));
        assert!(disk.describe().contains("free of"));
    }

    #[test]
    fn an_escaped_mount_path_is_read_back() {
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
    }
}
