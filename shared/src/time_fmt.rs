//! How every binary writes a span of time and a moment for people: one duration format
//! and one timestamp format, both humantime's, so the supervisor's messages, `status`,
//! the monitor and the logs read alike. (Flags that must read back, such as a worker's
//! `--backoff 60s`, use `units::format_duration` instead.)

use std::time::{Duration, UNIX_EPOCH};

/// humantime's units, largest first, in nanoseconds: a rounded duration keeps two of
/// them (`4m 12s`, `2h 5m`, `3days 4h`, `250ms`).
const UNITS: [u128; 9] = [
    31_557_600_000_000_000, // year (365.25 days)
    2_630_016_000_000_000,  // month (30.44 days)
    86_400_000_000_000,
    3_600_000_000_000,
    60_000_000_000,
    1_000_000_000,
    1_000_000,
    1_000,
    1,
];

/// A duration as people read it: its two largest units, rounded (`10s 949ms`,
/// `2m 5s`, `1h 2m`, `3days 4h`; `0s` for none).
pub fn duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let step = UNITS.iter().position(|&u| nanos >= u).and_then(|i| UNITS.get(i + 1)).copied().unwrap_or(1);
    let rounded = (nanos + step / 2) / step * step;
    let rounded = Duration::new((rounded / 1_000_000_000) as u64, (rounded % 1_000_000_000) as u32);
    humantime::format_duration(rounded).to_string()
}

/// How old something `ms` milliseconds old is, to the second: ages and uptimes have no
/// use for milliseconds.
pub fn age_ms(ms: i64) -> String {
    duration(Duration::from_secs((ms.max(0) / 1000) as u64))
}

/// The moment `ms` (Unix milliseconds) in UTC, RFC 3339 to the millisecond:
/// `2026-11-22T10:41:07.123Z`. A moment before 1970 is written as 1970's first.
pub fn timestamp_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_two_largest_units() {
        let cases = [
            (Duration::from_micros(10_948_955), "10s 949ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(125), "2m 5s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(3720), "1h 2m"),
            (Duration::from_secs(3749), "1h 2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(3 * 86_400 + 4 * 3600 + 59), "3days 4h"),
            (Duration::from_micros(400), "400us"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn rounding_carries_into_the_larger_unit() {
        assert_eq!(duration(Duration::from_micros(59_999_600)), "1m");
        assert_eq!(duration(Duration::from_millis(119_600)), "2m");
    }

    #[test]
    fn ages_are_told_to_the_second() {
        assert_eq!(age_ms(3_500), "3s");
        assert_eq!(age_ms(252_000), "4m 12s");
        assert_eq!(age_ms(-5), "0s");
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_to_the_millisecond() {
        assert_eq!(timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp_ms(1_795_342_718_727), "2026-11-22T10:18:38.727Z");
        assert_eq!(timestamp_ms(-1), "1970-01-01T00:00:00.000Z");
    }
}
