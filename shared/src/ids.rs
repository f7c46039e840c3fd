//! Which worker ids a supervisor runs: `--worker-ids 3-5` on one host, `0-2` on another,
//! for one fleet of 6 shards. Written and read in the run records as the same text.
//! And which shard a video is in (`shard_of`), the rule those ids divide the work by.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The shard of video `video_id` in a fleet of `workers`: `video_id % workers`. A
/// negative id belongs to no shard (import refuses it, and the claims never see it);
/// nor does any id in a fleet of no workers.
pub fn shard_of(video_id: i64, workers: u32) -> Option<u32> {
    if video_id < 0 || workers == 0 {
        return None;
    }
    // The remainder is below `workers`, so it fits.
    Some((video_id % i64::from(workers)) as u32)
}

/// A non-empty set of worker ids, written as ranges and single ids: `3-5`, `0,2,4`,
/// `0-1,4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIds(BTreeSet<u32>);

impl WorkerIds {
    /// Every id of a fleet of `workers`: 0..workers-1.
    pub fn all(workers: u32) -> WorkerIds {
        WorkerIds((0..workers).collect())
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.contains(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest id.
    pub fn max(&self) -> u32 {
        self.0.last().copied().unwrap_or(0)
    }

    /// Whether these are all the ids of a fleet of `workers`.
    pub fn is_all(&self, workers: u32) -> bool {
        self.0.len() == workers as usize && self.max() + 1 == workers
    }

    /// The ids both sets hold.
    pub fn overlap(&self, other: &WorkerIds) -> WorkerIds {
        WorkerIds(self.0.intersection(&other.0).copied().collect())
    }

    /// The ids `from..to`, which must not be empty.
    pub fn range(from: u32, to: u32) -> WorkerIds {
        WorkerIds((from..to).collect())
    }

    /// Splits the ids of a fleet of `workers` into one contiguous range per share, as
    /// near to the shares' proportions as whole ids allow, each range at least one id.
    /// None when there are fewer ids than shares.
    pub fn split(workers: u32, shares: &[usize]) -> Option<Vec<WorkerIds>> {
        let n = u32::try_from(shares.len()).ok()?;
        if n == 0 || workers < n {
            return None;
        }
        let total = shares.iter().sum::<usize>().max(1) as u64;
        let extra = u64::from(workers - n);
        let mut counts: Vec<u32> = shares.iter().map(|&s| 1 + (extra * s as u64 / total) as u32).collect();
        let mut left = workers - counts.iter().sum::<u32>();
        // The ids rounding left over go to the largest remainders.
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(extra * shares[i] as u64 % total));
        for &i in order.iter().cycle() {
            if left == 0 {
                break;
            }
            counts[i] += 1;
            left -= 1;
        }
        let mut from = 0;
        Some(
            counts
                .into_iter()
                .map(|c| {
                    from += c;
                    WorkerIds::range(from - c, from)
                })
                .collect(),
        )
    }

    /// Refuses ids a fleet of `workers` does not have.
    pub fn check(&self, workers: u32) -> Result<(), String> {
        if self.max() >= workers {
            return Err(format!(
                "--worker-ids {self} names worker {}, but a fleet of {workers} has ids 0-{}",
                self.max(),
                workers.saturating_sub(1)
            ));
        }
        Ok(())
    }
}

impl FromStr for WorkerIds {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkerIds, String> {
        let bad = |why: &str| format!("invalid worker ids {s:?}: {why} (examples: 3-5, 0,2,4, 0-1,4)");
        let mut ids = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            let number = |t: &str| t.trim().parse::<u32>().map_err(|_| bad(&format!("{t:?} is not a worker id")));
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if a > b {
                        return Err(bad(&format!("the range {a}-{b} runs backwards")));
                    }
                    if b - a > 100_000 {
                        return Err(bad("the range is larger than any fleet"));
                    }
                    ids.extend(a..=b);
                }
                None => {
                    ids.insert(number(part)?);
                }
            }
        }
        Ok(WorkerIds(ids))
    }
}

/// Ranges of consecutive ids joined by commas: `0-2,5`.
impl fmt::Display for WorkerIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut ids = self.0.iter().copied().peekable();
        while let Some(start) = ids.next() {
            let mut end = start;
            while ids.peek() == Some(&(end + 1)) {
                end = ids.next().unwrap_or(end);
            }
            parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_is_in_the_shard_of_its_id_modulo_the_fleet_size() {
        assert_eq!(shard_of(7, 3), Some(1));
        assert_eq!(shard_of(0, 3), Some(0));
        assert_eq!(shard_of(i64::MAX, 1024), Some((i64::MAX % 1024) as u32));
    }

    #[test]
    fn a_negative_id_belongs_to_no_shard() {
        assert_eq!(shard_of(-1, 3), None);
        assert_eq!(shard_of(-3, 3), None);
        assert_eq!(shard_of(5, 0), None);
    }

    #[test]
    fn a_new_fleet_size_is_split_among_hosts_in_proportion_to_what_they_ran() {
        let text = |v: Vec<WorkerIds>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(text(WorkerIds::split(4, &[3, 3]).unwrap()), ["0-1", "2-3"]);
        assert_eq!(text(WorkerIds::split(6, &[1, 1, 1]).unwrap()), ["0-1", "2-3", "4-5"]);
        assert_eq!(text(WorkerIds::split(5, &[1, 3]).unwrap()), ["0-1", "2-4"]);
        assert_eq!(text(WorkerIds::split(3, &[8]).unwrap()), ["0-2"]);
        assert_eq!(WorkerIds::split(2, &[3, 3, 3]), None, "every host keeps at least one id");
    }

    #[test]
    fn ids_read_as_ranges_and_lists_and_write_back_in_their_shortest_form() {
        let ids: WorkerIds = "5,3-4, 0".parse().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [0, 3, 4, 5]);
        assert_eq!(ids.to_string(), "0,3-5");
        assert_eq!(WorkerIds::all(3).to_string(), "0-2");
        assert!(WorkerIds::all(3).is_all(3));
        assert!(!"0-1".parse::<WorkerIds>().unwrap().is_all(3));
    }

    #[test]
    fn overlapping_sets_say_which_ids_they_share() {
        let a: WorkerIds = "0-3".parse().unwrap();
        let b: WorkerIds = "3-5".parse().unwrap();
        assert_eq!(a.overlap(&b).to_string(), "3");
        assert!(a.overlap(&"4-5".parse().unwrap()).is_empty());
    }

    #[test]
    fn bad_ids_are_named() {
        for (input, why) in [
            ("", "\"\" is not a worker id"),
            ("3-", "\"\" is not a worker id"),
            ("5-3", "the range 5-3 runs backwards"),
            ("a", "\"a\" is not a worker id"),
            ("-1", "\"\" is not a worker id"),
        ] {
            let e = input.parse::<WorkerIds>().unwrap_err();
            assert!(e.contains(why), "{input}: {e}");
        }
        let e = "3-6".parse::<WorkerIds>().unwrap().check(6).unwrap_err();
        assert_eq!(e, "--worker-ids 3-6 names worker 6, but a fleet of 6 has ids 0-5");
    }
}
