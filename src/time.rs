//! Time as vmledger sees it: the system clock (read through the standard clock calls, so
//! `faketime` moves it), the kernel's boot id and uptime (which process-level time faking
//! does not move), and the one timestamp format every signed document uses:
//! RFC 3339 UTC with exactly three fractional digits and `Z`, e.g.
//! `2026-12-04T15:37:06.123Z`.
//!
//! Code that needs "now" takes a [`Clock`], so tests inject time instead of sleeping.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// The kernel's view of this boot: informational `boot_id`, and `uptime_ms` from
/// `/proc/uptime` (time since boot including suspend, not a process clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelClock {
    pub boot_id: String,
    pub uptime_ms: u64,
}

/// A source of wall-clock time and kernel boot facts.
pub trait Clock: Send + Sync {
    /// The system's wall clock, truncated to milliseconds.
    fn now(&self) -> DateTime<Utc>;
    /// The current boot id and uptime.
    fn kernel(&self) -> KernelClock;
}

/// The real clocks: `clock_gettime(CLOCK_REALTIME)` through chrono, and `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_ms(Utc::now())
    }

    fn kernel(&self) -> KernelClock {
        read_kernel_clock()
    }
}

/// A fixed clock for tests: `now` and the kernel facts are whatever was set.
#[derive(Clone, Debug)]
pub struct FixedClock {
    pub now: DateTime<Utc>,
    pub kernel: KernelClock,
}

impl FixedClock {
    /// A clock fixed at `at` (an RFC 3339 string), boot id `test-boot`, uptime 1 s.
    pub fn at(at: &str) -> FixedClock {
        FixedClock {
            now: parse_rfc3339(at).expect("FixedClock::at needs an RFC 3339 time"),
            kernel: KernelClock {
                boot_id: "test-boot".into(),
                uptime_ms: 1000,
            },
        }
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_ms(self.now)
    }
    fn kernel(&self) -> KernelClock {
        self.kernel.clone()
    }
}

/// Read `/proc/sys/kernel/random/boot_id` and `/proc/uptime`. Unreadable files (not Linux,
/// a restricted container) give boot id `unknown` and uptime 0: both are informational in
/// the ledger and only ever used to *advance* trusted time, never to hold it back.
pub fn read_kernel_clock() -> KernelClock {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let uptime_ms = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| parse_proc_uptime(&s))
        .unwrap_or(0);
    KernelClock { boot_id, uptime_ms }
}

/// Parse the first field of `/proc/uptime` ("12345.67 ...") into milliseconds without
/// going through floating point.
pub fn parse_proc_uptime(s: &str) -> Option<u64> {
    let first = s.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut ms = 0u64;
    for (i, c) in frac.chars().take(3).enumerate() {
        let d = c.to_digit(10)? as u64;
        ms += d * 10u64.pow(2 - i as u32);
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

/// Drop sub-millisecond precision, so that a time survives a format/parse round trip.
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

/// Format a time the way every signed vmledger document does:
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A timestamp that is not in the ledger's exact format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a UTC time of the form 2026-12-04T15:37:06.123Z")]
pub struct BadTime(pub String);

/// Parse a timestamp in the ledger's exact format (and only that format: the signed text
/// must round-trip byte for byte).
pub fn parse_at(s: &str) -> Result<DateTime<Utc>, BadTime> {
    let t = parse_rfc3339(s).ok_or_else(|| BadTime(s.to_string()))?;
    if format_at(t) != s {
        return Err(BadTime(s.to_string()));
    }
    Ok(t)
}

/// Parse any RFC 3339 timestamp (for user input such as `--until`).
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_format_round_trips_exactly() {
        let t = parse_at("2026-12-04T15:37:06.123Z").unwrap();
        assert_eq!(format_at(t), "2026-12-04T15:37:06.123Z");
        for bad in [
            "2026-12-04T15:37:06Z",
            "2026-12-04T15:37:06.1234Z",
            "2026-12-04T15:37:06.123+00:00",
            "2026-12-04 15:37:06.123Z",
            "",
        ] {
            assert!(parse_at(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn proc_uptime_parses_without_floats() {
        assert_eq!(parse_proc_uptime("12345.67 999.00\n"), Some(12_345_670));
        assert_eq!(parse_proc_uptime("0.5 1"), Some(500));
        assert_eq!(parse_proc_uptime("7 1"), Some(7000));
        assert_eq!(parse_proc_uptime("x"), None);
    }
}
