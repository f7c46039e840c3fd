//! Human units on the command line: sizes (`250M`), durations (`30s`), duration ranges
//! (`50ms..200ms`) and rates (`5/s`). Written by hand because the crates that parse these
//! disagree with PM2 on units or do not accept fractions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A number of bytes. Units are binary, as PM2 reads them: `250M` is 250 MiB, and the
/// decimal-looking `MB` is read the same way so that `--mem-limit 250MB` means what a PM2
/// user expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError::Size { input: input.to_string(), reason };
        let (value, unit) = number_and_unit(input).map_err(err)?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => {
                return Err(err("unknown unit; use B, K, M, G or T (binary, KiB/MiB/GiB also accepted)"));
            }
        };
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(err("it is too large"));
        }
        if unit.is_empty() && value.fract() != 0.0 {
            return Err(err("a plain byte count must be a whole number"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

impl fmt::Display for ByteSize {
    /// Shortest exact form, so that a printed size parses back to the same bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, m) in [("T", 1u64 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Splits `1.5GiB` into `(1.5, "GiB")`; the error says what is wrong with the number.
fn number_and_unit(input: &str) -> Result<(f64, &str), &'static str> {
    let s = input.trim();
    if s.is_empty() {
        return Err("it is empty");
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err("it does not start with a number");
    }
    let value = num.parse().map_err(|_| "the number is malformed")?;
    Ok((value, unit))
}

/// Formats bytes for people (`123.4 MiB`); not meant to be parsed back.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1.5s`, `250us`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    let err = |reason| ParseError::Duration { input: input.to_string(), reason };
    let (value, unit) = number_and_unit(input).map_err(err)?;
    let secs_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hours" => 3600.0,
        "d" | "days" => 86400.0,
        _ => return Err(err("unknown unit; use us, ms, s, m, h or d")),
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs > 100.0 * 365.0 * 86400.0 {
        return Err(err("it is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Prints a duration the way `parse_duration` reads it, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}us", d.as_micros());
    }
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A clap value parser for durations.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// A fixed duration or a uniform range, as `--sleep` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    /// A duration drawn uniformly from the range.
    pub fn sample(&self) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        let lo = self.min.as_nanos() as u64;
        let hi = self.max.as_nanos() as u64;
        Duration::from_nanos(rand::rng().random_range(lo..=hi))
    }
}

impl FromStr for DurationRange {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError::Range { input: input.to_string(), reason };
        match input.split_once("..") {
            None => {
                let d = parse_duration(input)?;
                Ok(DurationRange { min: d, max: d })
            }
            Some((a, b)) => {
                let min = parse_duration(a).map_err(|_| err("its lower end is not a duration"))?;
                let max = parse_duration(b).map_err(|_| err("its upper end is not a duration"))?;
                if min > max {
                    return Err(err("its lower end is above its upper end"));
                }
                Ok(DurationRange { min, max })
            }
        }
    }
}

impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", format_duration(self.min))
        } else {
            write!(f, "{}..{}", format_duration(self.min), format_duration(self.max))
        }
    }
}

/// At most `count` calls per `per`, as `--rate 5/s` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The spacing between two calls that keeps to this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl FromStr for Rate {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseError::Rate { input: input.to_string(), reason };
        let (count, per) = input.trim().split_once('/').ok_or_else(|| err("it has no '/'"))?;
        let count: u32 = count.trim().parse().map_err(|_| err("the count is not a whole number"))?;
        if count == 0 {
            return Err(err("the count must be at least 1"));
        }
        let per = match per.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => parse_duration(other).map_err(|_| err("the period is not a duration"))?,
        };
        if per.is_zero() {
            return Err(err("the period must be longer than zero"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_like_pm2() {
        assert_eq!("250M".parse::<ByteSize>().unwrap().0, 250 << 20);
        assert_eq!("250MiB".parse::<ByteSize>().unwrap().0, 250 << 20);
        assert_eq!("250MB".parse::<ByteSize>().unwrap().0, 250 << 20);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("64k".parse::<ByteSize>().unwrap().0, 64 << 10);
    }

    #[test]
    fn malformed_sizes_are_refused_with_the_input_named() {
        for bad in ["12Q", "", "M", "1.2.3M", "-5M", "1.5", "99999999999T"] {
            let e = bad.parse::<ByteSize>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn a_size_prints_in_a_form_that_parses_back() {
        for s in ["250M", "1G", "1536M", "100", "3K"] {
            let b: ByteSize = s.parse().unwrap();
            assert_eq!(b.to_string().parse::<ByteSize>().unwrap(), b);
        }
        assert_eq!(ByteSize(250 << 20).to_string(), "250M");
    }

    #[test]
    fn durations_accept_common_units_and_fractions() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn a_duration_prints_in_a_form_that_parses_back() {
        for s in ["30s", "5m", "1h", "250ms", "0s", "1500ms"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn ranges_sample_within_their_bounds() {
        let r: DurationRange = "50ms..200ms".parse().unwrap();
        for _ in 0..1000 {
            let d = r.sample();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(200));
        }
        assert!("200ms..50ms".parse::<DurationRange>().is_err());
        let fixed: DurationRange = "0".parse().unwrap();
        assert_eq!(fixed.sample(), Duration::ZERO);
    }

    #[test]
    fn rates_give_the_spacing_between_calls() {
        let r: Rate = "5/s".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(200));
        let r: Rate = "2/100ms".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(50));
        assert!("0/s".parse::<Rate>().is_err());
        assert!("5".parse::<Rate>().is_err());
    }
}
