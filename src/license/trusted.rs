//! Trusted time: the "now" the license state machine runs on.
//!
//! `now` is the latest of
//! 1. the system clock (which the owner, or `faketime`, can set to anything);
//! 2. the ledger's time (the largest `at`: the head's, since ledger time never runs back);
//! 3. the ledger head's `at` plus the time elapsed since it by the kernel's uptime, when the
//!    head was written during this boot (same boot id);
//! 4. the newest receipt's `server_time` plus the uptime elapsed since the `checkin` entry
//!    that recorded it, when that entry was written during this boot;
//! 5. the latest trusted time any earlier observation saw (`status`, `gate`, ... keep this
//!    unsigned high-water mark in the ledger database), so that time observed without
//!    writing an entry is not forgotten either.
//!
//! Sources 3 and 4 use `/proc/uptime` (`CLOCK_BOOTTIME`, which counts suspend), which the
//! usual time-faking tools do not move. Every source is a *lower bound* of the real time
//! (as long as the service's clock and past ledger times were right), so the maximum is
//! too: setting the clock back cannot move `now` back; setting it forward can only move
//! `now` forward. What remains possible is documented in `docs/time.md`.
//!
//! Everything here is pure: inputs are values, so tests need no clock.

use chrono::{DateTime, Duration, Utc};

use crate::time::KernelClock;

/// A past moment and the kernel's boot id and uptime when it was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub at: DateTime<Utc>,
    pub boot_id: String,
    pub uptime_ms: u64,
}

impl Reference {
    /// `at` advanced by the uptime elapsed since, when `kernel` is the same boot.
    pub fn advanced(&self, kernel: &KernelClock) -> Option<DateTime<Utc>> {
        if self.boot_id != kernel.boot_id
            || self.boot_id == "unknown"
            || kernel.uptime_ms < self.uptime_ms
        {
            return None;
        }
        let elapsed = i64::try_from(kernel.uptime_ms - self.uptime_ms).ok()?;
        self.at.checked_add_signed(Duration::milliseconds(elapsed))
    }
}

/// Everything trusted time is computed from.
#[derive(Clone, Debug)]
pub struct TimeInputs {
    /// The system clock's reading.
    pub system: DateTime<Utc>,
    /// The kernel's boot id and uptime now.
    pub kernel: KernelClock,
    /// The ledger head: its `at` (the ledger's time) and its boot id and uptime.
    pub head: Option<Reference>,
    /// The newest accepted receipt: `server_time`, and the boot id and uptime of the
    /// `checkin` entry that recorded it.
    pub receipt: Option<Reference>,
    /// The latest trusted time an earlier observation saw.
    pub observed: Option<DateTime<Utc>>,
}

/// Which source gave trusted time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    SystemClock,
    Ledger,
    LedgerUptime,
    ReceiptUptime,
    Observed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::SystemClock => "system_clock",
            Source::Ledger => "ledger",
            Source::LedgerUptime => "ledger_uptime",
            Source::ReceiptUptime => "receipt_uptime",
            Source::Observed => "observed",
        }
    }
}

/// Trusted time and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedNow {
    pub now: DateTime<Utc>,
    pub source: Source,
    /// The system clock's reading.
    pub system: DateTime<Utc>,
}

impl TrustedNow {
    /// How far the system clock is behind trusted time (zero when it is not).
    pub fn system_behind(&self) -> Duration {
        (self.now - self.system).max(Duration::zero())
    }
}

/// Compute trusted time. Ties go to the earlier source in the list above (the system
/// clock first), so an honest clock is reported as the source.
pub fn trusted_now(inputs: &TimeInputs) -> TrustedNow {
    let mut best = (inputs.system, Source::SystemClock);
    let mut consider = |t: Option<DateTime<Utc>>, source: Source| {
        if let Some(t) = t
            && t > best.0
        {
            best = (t, source);
        }
    };
    consider(inputs.head.as_ref().map(|h| h.at), Source::Ledger);
    consider(
        inputs
            .head
            .as_ref()
            .and_then(|h| h.advanced(&inputs.kernel)),
        Source::LedgerUptime,
    );
    consider(
        inputs
            .receipt
            .as_ref()
            .and_then(|r| r.advanced(&inputs.kernel)),
        Source::ReceiptUptime,
    );
    consider(inputs.observed, Source::Observed);
    TrustedNow {
        now: crate::time::truncate_ms(best.0),
        source: best.1,
        system: inputs.system,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_at;

    fn t(s: &str) -> DateTime<Utc> {
        parse_at(s).unwrap()
    }

    fn kernel(boot: &str, up: u64) -> KernelClock {
        KernelClock {
            boot_id: boot.into(),
            uptime_ms: up,
        }
    }

    fn reference(at: &str, boot: &str, up: u64) -> Reference {
        Reference {
            at: t(at),
            boot_id: boot.into(),
            uptime_ms: up,
        }
    }

    #[test]
    fn honest_clock_wins_ties_and_leads() {
        let i = TimeInputs {
            system: t("2026-12-04T10:00:00.000Z"),
            kernel: kernel("b1", 10_000),
            head: Some(reference("2026-12-04T10:00:00.000Z", "b1", 10_000)),
            receipt: None,
            observed: None,
        };
        let n = trusted_now(&i);
        assert_eq!(n.source, Source::SystemClock);
        assert_eq!(n.now, t("2026-12-04T10:00:00.000Z"));
        assert_eq!(n.system_behind(), Duration::zero());
    }

    #[test]
    fn clock_set_back_is_caught_by_ledger_and_uptime() {
        // Head written at 10:00 with uptime 10 s; now uptime 3 h later, clock set back a week.
        let i = TimeInputs {
            system: t("2026-11-27T10:00:00.000Z"),
            kernel: kernel("b1", 10_000 + 3 * 3_600_000),
            head: Some(reference("2026-12-04T10:00:00.000Z", "b1", 10_000)),
            receipt: None,
            observed: None,
        };
        let n = trusted_now(&i);
        assert_eq!(n.source, Source::LedgerUptime);
        assert_eq!(n.now, t("2026-12-04T13:00:00.000Z"));
        assert_eq!(n.system_behind(), Duration::days(7) + Duration::hours(3));
    }

    #[test]
    fn another_boot_falls_back_to_ledger_time() {
        let i = TimeInputs {
            system: t("2026-11-27T10:00:00.000Z"),
            kernel: kernel("b2", 5_000),
            head: Some(reference("2026-12-04T10:00:00.000Z", "b1", 10_000)),
            receipt: Some(reference("2026-12-04T11:00:00.000Z", "b1", 9_000)),
            observed: None,
        };
        let n = trusted_now(&i);
        assert_eq!(n.source, Source::Ledger);
        assert_eq!(n.now, t("2026-12-04T10:00:00.000Z"));
    }

    #[test]
    fn receipt_time_plus_uptime_beats_a_slow_ledger() {
        // The appliance's clock was 2 h slow when it checked in: the receipt's server time
        // plus elapsed uptime is the best lower bound.
        let i = TimeInputs {
            system: t("2026-12-04T08:30:00.000Z"),
            kernel: kernel("b1", 1_800_000),
            head: Some(reference("2026-12-04T08:00:00.000Z", "b1", 0)),
            receipt: Some(reference("2026-12-04T10:00:00.000Z", "b1", 0)),
            observed: None,
        };
        let n = trusted_now(&i);
        assert_eq!(n.source, Source::ReceiptUptime);
        assert_eq!(n.now, t("2026-12-04T10:30:00.000Z"));
    }

    #[test]
    fn unknown_boot_ids_and_uptime_going_back_are_ignored() {
        let i = TimeInputs {
            system: t("2026-12-01T00:00:00.000Z"),
            kernel: kernel("unknown", 99_000),
            head: Some(reference("2026-12-02T00:00:00.000Z", "unknown", 0)),
            receipt: Some(reference("2026-12-03T00:00:00.000Z", "b1", 100_000)),
            observed: None,
        };
        assert_eq!(trusted_now(&i).source, Source::Ledger);
        let i = TimeInputs {
            kernel: kernel("b1", 99_000),
            ..i
        };
        // Same boot id but uptime smaller than the reference's: not this boot after all.
        assert_eq!(trusted_now(&i).source, Source::Ledger);
        let i = TimeInputs {
            observed: Some(t("2026-12-05T00:00:00.000Z")),
            ..i
        };
        let n = trusted_now(&i);
        assert_eq!(
            (n.source, n.now),
            (Source::Observed, t("2026-12-05T00:00:00.000Z"))
        );
    }
}
