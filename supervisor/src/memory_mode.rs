//! How a run holds its workers under the memory limit, as one word: the run record
//! keeps it, `start` logs it, `status` and the batch summary tell it in words.

use std::fmt;
use std::str::FromStr;

/// The enforcement in force for a run. `Display` is the word the run record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMode {
    /// A cgroup v2 per worker (`memory.max`).
    CgroupV2,
    /// A cgroup v1 per worker (`memory.limit_in_bytes`).
    CgroupV1,
    /// The supervisor samples each worker's process tree.
    Sample,
}

impl MemoryMode {
    const ALL: [MemoryMode; 3] = [MemoryMode::CgroupV2, MemoryMode::CgroupV1, MemoryMode::Sample];

    /// The stored word.
    pub fn word(self) -> &'static str {
        match self {
            MemoryMode::CgroupV2 => "cgroup-v2",
            MemoryMode::CgroupV1 => "cgroup-v1",
            MemoryMode::Sample => "sample",
        }
    }

    /// What enforces the limit, in the words `status` and the summary print.
    pub fn enforced_by(self) -> &'static str {
        match self {
            MemoryMode::CgroupV2 => "cgroup v2 (memory.max)",
            MemoryMode::CgroupV1 => "cgroup v1 (memory.limit_in_bytes)",
            MemoryMode::Sample => "sampling each worker's process tree",
        }
    }

    /// What enforced the limit of a run whose record keeps `word`: "nothing" for a word
    /// this build does not know (a test's "none", a record from another version).
    pub fn enforced_by_word(word: &str) -> &'static str {
        word.parse::<MemoryMode>().map_or("nothing", MemoryMode::enforced_by)
    }
}

impl fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A word no mode has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown memory mode {0:?}")]
pub struct UnknownMode(String);

impl FromStr for MemoryMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryMode::ALL.into_iter().find(|m| m.word() == s).ok_or_else(|| UnknownMode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_reads_back_from_the_word_it_is_stored_as() {
        for mode in MemoryMode::ALL {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }

    #[test]
    fn a_recorded_word_this_build_does_not_know_is_told_as_nothing() {
        assert_eq!(MemoryMode::enforced_by_word("none"), "nothing");
        assert_eq!(MemoryMode::enforced_by_word("cgroup-v2"), "cgroup v2 (memory.max)");
    }
}
