//! The license lifecycle in the appliance: the state machine, trusted time, and recording
//! the transitions.
//!
//! - this file: the **pure** state machine. [`evaluate`] maps ledger facts ([`Facts`]: the
//!   newest accepted receipt as its `checkin` entry recorded it, the instance's creation
//!   time and serial), the countdown lengths ([`Policy`]) and a trusted "now" to a
//!   [`State`] with its reason and deadlines. No clock, file or network is touched here.
//! - [`trusted`]: trusted time (pure).
//! - [`observe`]: the only impure part: reads the facts from the ledger, computes trusted
//!   time, and appends the transitions (and clock anomalies) the first observer sees.
//!
//! The rules (`docs/formats/status.md` has the table):
//! - a check-in is due by the newest receipt's `next_checkin_before` (for an instance that
//!   never checked in: [`FIRST_CHECKIN_WITHIN`] after its genesis); from that instant the
//!   check-in countdown runs (`checkin_overdue`); `grace_days` later the instance is
//!   `locked` (configuration changes blocked; the appliance keeps running);
//! - the SLA covers its whole end date (UTC): it has ended from 00:00:00.000Z of the next
//!   day. `warn_days` before that: `sla_warning`; after it: `sla_expired` with a countdown of
//!   `sla_grace_days`, then `disabled`;
//! - a receipt whose status is `disabled` disables at once (reason and verdict from the
//!   receipt). Only a later receipt from the service can lift `disabled`: nothing local can;
//! - once recorded in the ledger ([`Facts::disabled`], [`Facts::locked`]), `disabled`
//!   stays until a newer receipt lifts it and `locked` until a newer successful check-in,
//!   whatever the local settings say (they may only shorten the grace periods, see
//!   [`crate::config::license_max`], but this holds for ledgers written before too).
//!
//! Intervals are half-open: at the exact instant a deadline is reached, the later state
//! holds.

pub mod observe;
pub mod report;
pub mod trusted;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{Map, Value};

use crate::protocol::{Status, reason};
use crate::time;

/// How long a new instance may run before its first check-in is due.
pub const FIRST_CHECKIN_WITHIN: Duration = Duration::hours(24);

/// A license state. The words are part of the status format and the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Active,
    SlaWarning,
    CheckinOverdue,
    Locked,
    SlaExpired,
    Disabled,
    Unregistered,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Active,
        State::SlaWarning,
        State::CheckinOverdue,
        State::Locked,
        State::SlaExpired,
        State::Disabled,
        State::Unregistered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::SlaWarning => "sla_warning",
            State::CheckinOverdue => "checkin_overdue",
            State::Locked => "locked",
            State::SlaExpired => "sla_expired",
            State::Disabled => "disabled",
            State::Unregistered => "unregistered",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True when configuration changes are blocked (`gate` refuses, `watch` records).
    pub fn blocks_config(self) -> bool {
        matches!(self, State::Locked | State::Disabled)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reason words for the states (besides the service's verdict words in
/// [`crate::protocol::reason`], which `disabled` carries when the service disabled).
pub mod why {
    pub const CHECKIN_OVERDUE: &str = "checkin_overdue";
    pub const NEVER_CHECKED_IN: &str = "never_checked_in";
    pub const NO_SERIAL: &str = "no_serial";
    pub const UNKNOWN_SERIAL: &str = "unknown_serial";
    pub const SLA_ENDING: &str = "sla_ending";
    pub const SLA_EXPIRED: &str = crate::protocol::reason::SLA_EXPIRED;
    pub const DISABLED_BY_SERVICE: &str = "disabled_by_service";
}

/// The countdown lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub grace: Duration,
    pub warn: Duration,
    pub sla_grace: Duration,
}

impl From<crate::config::License> for Policy {
    fn from(l: crate::config::License) -> Policy {
        Policy {
            grace: Duration::days(l.grace_days.into()),
            warn: Duration::days(l.warn_days.into()),
            sla_grace: Duration::days(l.sla_grace_days.into()),
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        crate::config::License::default().into()
    }
}

/// What the newest accepted receipt said, as its `checkin` entry recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The receipt's hash (the `checkin` entry's `data.receipt`).
    pub receipt: String,
    /// The `checkin` entry's seq and `at`.
    pub seq: u64,
    pub checked_in_at: DateTime<Utc>,
    pub server_time: DateTime<Utc>,
    pub status: Status,
    pub reason: Option<String>,
    pub verdict: Option<String>,
    pub sla_ends: Option<NaiveDate>,
    pub next_checkin_before: DateTime<Utc>,
}

/// A `checkin` entry's `data` that does not describe a lease.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("checkin entry data.{field}: {message}")]
pub struct BadLease {
    pub field: &'static str,
    pub message: String,
}

impl Lease {
    /// Read a lease from a `checkin` entry (`seq`, `at`, `data`).
    pub fn from_checkin(seq: u64, at: &str, data: &Map<String, Value>) -> Result<Lease, BadLease> {
        let bad = |field: &'static str, message: &str| BadLease {
            field,
            message: message.to_string(),
        };
        let text = |field: &'static str| -> Result<&str, BadLease> {
            data.get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(field, "missing or not a string"))
        };
        let opt_text = |field: &'static str| -> Result<Option<String>, BadLease> {
            match data.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(field, "not a string")),
            }
        };
        let instant = |field: &'static str| -> Result<DateTime<Utc>, BadLease> {
            time::parse_at(text(field)?).map_err(|e| bad(field, &e.to_string()))
        };
        let status: Status = serde_json::from_value(Value::String(text("status")?.into()))
            .map_err(|_| bad("status", "unknown status"))?;
        let sla_ends = match opt_text("sla_ends")? {
            None => None,
            Some(d) => {
                Some(parse_date(&d).ok_or_else(|| bad("sla_ends", "not a YYYY-MM-DD date"))?)
            }
        };
        Ok(Lease {
            receipt: text("receipt")?.to_string(),
            seq,
            checked_in_at: time::parse_at(at).map_err(|e| bad("at", &e.to_string()))?,
            server_time: instant("server_time")?,
            status,
            reason: opt_text("reason")?,
            verdict: opt_text("verdict")?,
            sla_ends,
            next_checkin_before: instant("next_checkin_before")?,
        })
    }

    /// The instant the SLA ended or ends: 00:00 UTC of the day after `sla_ends`. A receipt
    /// whose status is `sla_expired` says the SLA had ended by its server time.
    pub fn sla_end(&self) -> Option<DateTime<Utc>> {
        let from_date = self.sla_ends.and_then(end_of_date);
        match (self.status, from_date) {
            (Status::SlaExpired, Some(d)) => Some(d.min(self.server_time)),
            (Status::SlaExpired, None) => Some(self.server_time),
            (_, d) => d,
        }
    }
}

/// Parse a `YYYY-MM-DD` date (exactly that form).
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    (d.format("%Y-%m-%d").to_string() == s).then_some(d)
}

/// 00:00:00 UTC of the day after `d`: the first instant `d` no longer covers.
pub fn end_of_date(d: NaiveDate) -> Option<DateTime<Utc>> {
    Some(d.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc())
}

/// The ledger facts the state depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub serial: Option<String>,
    /// The genesis entry's `at`: when this instance came to be.
    pub created_at: DateTime<Utc>,
    /// The newest accepted receipt, if any.
    pub lease: Option<Lease>,
    /// The reason of a `checkin_failed` newer than the lease in which the service itself
    /// answered (e.g. `unknown_serial`), shown while the instance is unregistered.
    pub refusal: Option<String>,
    /// The newest recorded transition into `disabled`.
    pub disabled: Option<Recorded>,
    /// The newest recorded transition into `locked`.
    pub locked: Option<Recorded>,
}

/// A transition the ledger recorded (its entry's seq and `data`): `disabled` and
/// `locked` stay once recorded, until a lease newer than the entry lifts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub seq: u64,
    pub reason: Option<String>,
    pub verdict: Option<String>,
}

impl Recorded {
    /// Read from a transition entry (`seq`, `data`).
    pub fn from_entry(seq: u64, data: &Map<String, Value>) -> Recorded {
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        Recorded {
            seq,
            reason: text("reason"),
            verdict: text("verdict"),
        }
    }
}

/// Which countdown runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountdownKind {
    /// Check-in overdue: ends in `locked`.
    Checkin,
    /// SLA ended: ends in `disabled`.
    Sla,
}

impl CountdownKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CountdownKind::Checkin => "checkin",
            CountdownKind::Sla => "sla",
        }
    }
}

/// A running countdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Countdown {
    pub kind: CountdownKind,
    pub started_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// The state at one instant, with everything a status page shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub state: State,
    pub reason: Option<String>,
    /// The countdown of this state (`checkin_overdue`: to the lock; `sla_expired`, or
    /// `locked` after the SLA ended: to the disable).
    pub countdown: Option<Countdown>,
    /// Whole days left (rounded up) until the countdown ends or, in `sla_warning`, the
    /// SLA ends.
    pub days_left: Option<u64>,
    /// When the next check-in is (or was) due.
    pub checkin_due_at: DateTime<Utc>,
    /// When the instance locks (or locked) without a check-in.
    pub lock_at: DateTime<Utc>,
    /// The SLA's end date and the instant it ends.
    pub sla_ends: Option<NaiveDate>,
    pub sla_end_at: Option<DateTime<Utc>>,
    /// When the instance is (or was) disabled after the SLA ended.
    pub disable_at: Option<DateTime<Utc>>,
    /// The service's verdict reference (`disabled` by the service).
    pub verdict: Option<String>,
}

/// Whole days from `now` to `until`, rounded up; 0 once reached.
pub fn days_until(now: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
    let ms = (until - now).num_milliseconds();
    if ms <= 0 {
        0
    } else {
        (ms as u64).div_ceil(86_400_000)
    }
}

/// The state at `now`.
pub fn evaluate(facts: &Facts, policy: &Policy, now: DateTime<Utc>) -> Evaluation {
    let lease = facts.lease.as_ref();
    let checkin_due_at = match lease {
        Some(l) => l.next_checkin_before,
        None => facts.created_at + FIRST_CHECKIN_WITHIN,
    };
    let lock_at = checkin_due_at + policy.grace;
    let sla_end_at = lease.and_then(Lease::sla_end);
    let disable_at = sla_end_at.map(|s| s + policy.sla_grace);
    let mut e = Evaluation {
        state: State::Active,
        reason: None,
        countdown: None,
        days_left: None,
        checkin_due_at,
        lock_at,
        sla_ends: lease.and_then(|l| l.sla_ends),
        sla_end_at,
        disable_at,
        verdict: None,
    };
    let sla_countdown = || {
        sla_end_at.zip(disable_at).map(|(s, d)| Countdown {
            kind: CountdownKind::Sla,
            started_at: s,
            ends_at: d,
        })
    };
    let checkin_countdown = Countdown {
        kind: CountdownKind::Checkin,
        started_at: checkin_due_at,
        ends_at: lock_at,
    };

    if let Some(l) = lease.filter(|l| l.status == Status::Disabled) {
        e.state = State::Disabled;
        e.reason = Some(
            l.reason
                .clone()
                .unwrap_or_else(|| why::DISABLED_BY_SERVICE.into()),
        );
        e.verdict = l.verdict.clone();
    } else if disable_at.is_some_and(|d| now >= d) {
        e.state = State::Disabled;
        e.reason = Some(reason::SLA_EXPIRED.into());
    } else if lease.is_none() {
        let why = if facts.serial.is_none() {
            why::NO_SERIAL
        } else if facts.refusal.as_deref() == Some(why::UNKNOWN_SERIAL) {
            why::UNKNOWN_SERIAL
        } else {
            why::NEVER_CHECKED_IN
        };
        e.reason = Some(why.into());
        if now >= lock_at {
            e.state = State::Locked;
        } else if now >= checkin_due_at {
            e.state = State::CheckinOverdue;
            e.countdown = Some(checkin_countdown);
        } else {
            e.state = State::Unregistered;
        }
    } else {
        let sla_ended = sla_end_at.is_some_and(|s| now >= s);
        if now >= lock_at {
            e.state = State::Locked;
            e.reason = Some(why::CHECKIN_OVERDUE.into());
            if sla_ended {
                e.countdown = sla_countdown();
            }
        } else if sla_ended {
            e.state = State::SlaExpired;
            e.reason = Some(why::SLA_EXPIRED.into());
            e.countdown = sla_countdown();
        } else if now >= checkin_due_at {
            e.state = State::CheckinOverdue;
            e.reason = Some(why::CHECKIN_OVERDUE.into());
            e.countdown = Some(checkin_countdown);
        } else if sla_end_at.is_some_and(|s| now >= s - policy.warn) {
            e.state = State::SlaWarning;
            e.reason = Some(why::SLA_ENDING.into());
        }
    }
    // What the ledger recorded stays until a newer lease lifts it: nothing local (a
    // setting, the clock) undoes a recorded `disabled` or `locked`.
    let unlifted = |r: &&Recorded| lease.is_none_or(|l| r.seq > l.seq);
    if let Some(r) = facts.disabled.as_ref().filter(unlifted)
        && e.state != State::Disabled
    {
        e.state = State::Disabled;
        e.reason = Some(
            r.reason
                .clone()
                .unwrap_or_else(|| why::DISABLED_BY_SERVICE.into()),
        );
        e.verdict = r.verdict.clone();
        e.countdown = None;
    } else if let Some(r) = facts.locked.as_ref().filter(unlifted)
        && !e.state.blocks_config()
    {
        e.state = State::Locked;
        e.reason = r.reason.clone().or(e.reason);
        e.countdown = e.countdown.filter(|c| c.kind == CountdownKind::Sla);
    }
    e.days_left = match (&e.countdown, e.state) {
        (Some(c), _) => Some(days_until(now, c.ends_at)),
        (None, State::SlaWarning) => sla_end_at.map(|s| days_until(now, s)),
        _ => None,
    };
    e
}

/// Every instant at which the state can change while the facts stay the same, in order.
pub fn breakpoints(facts: &Facts, policy: &Policy) -> Vec<DateTime<Utc>> {
    let e = evaluate(facts, policy, facts.created_at);
    let mut v = vec![e.checkin_due_at, e.lock_at];
    if let Some(s) = e.sla_end_at {
        v.extend([s - policy.warn, s, s + policy.sla_grace]);
    }
    v.sort();
    v.dedup();
    v
}

/// The ledger entry kinds that record a change of state, and which one a change uses.
pub mod transition {
    use super::State;

    pub const ACTIVATED: &str = "activated";
    pub const COUNTDOWN_STARTED: &str = "countdown_started";
    pub const COUNTDOWN_CLEARED: &str = "countdown_cleared";
    pub const LOCKED: &str = "locked";
    pub const UNLOCKED: &str = "unlocked";
    pub const SLA_WARNING: &str = "sla_warning";
    pub const SLA_RENEWED: &str = "sla_renewed";
    pub const DISABLED: &str = "disabled";
    pub const REENABLED: &str = "reenabled";
    pub const UNREGISTERED: &str = "unregistered";

    /// Every transition kind (their `data.to` is the state after).
    pub const KINDS: [&str; 10] = [
        ACTIVATED,
        COUNTDOWN_STARTED,
        COUNTDOWN_CLEARED,
        LOCKED,
        UNLOCKED,
        SLA_WARNING,
        SLA_RENEWED,
        DISABLED,
        REENABLED,
        UNREGISTERED,
    ];

    /// The entry kind recording a change from `from` to `to` (`from != to`).
    pub fn kind(from: State, to: State) -> &'static str {
        match (from, to) {
            (_, State::Disabled) => DISABLED,
            (State::Disabled, _) => REENABLED,
            (State::Locked, _) => UNLOCKED,
            (_, State::Locked) => LOCKED,
            (_, State::CheckinOverdue | State::SlaExpired) => COUNTDOWN_STARTED,
            (_, State::SlaWarning) => SLA_WARNING,
            (_, State::Unregistered) => UNREGISTERED,
            (State::Unregistered, State::Active) => ACTIVATED,
            (State::CheckinOverdue | State::SlaExpired, State::Active) => COUNTDOWN_CLEARED,
            (State::SlaWarning | State::Active, State::Active) => SLA_RENEWED,
        }
    }
}

#[cfg(test)]
mod tests;
