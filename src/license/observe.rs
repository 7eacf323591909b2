//! Observing the license state: read the facts from the ledger, compute trusted time,
//! and append what the first observer must record: a `clock_anomaly` when the system
//! clock lags trusted time, and one transition entry per change of state (in order, each
//! with the instant it took effect), so that the ledger explains itself and its time
//! carries a lock forward across reboots.
//!
//! Every append made on behalf of the agent (boot, check-in, transitions, blocked changes)
//! goes through [`append_trusted`], which stamps entries with trusted time rather than the
//! raw system clock. Observation and appends hold the state dir's `.license.lock`, so two
//! commands observing at once record each transition once.
//!
//! This module never prints and never touches the network.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use rusqlite::OptionalExtension;
use serde_json::{Map, Value, json};

use super::trusted::{self, Reference, TimeInputs, TrustedNow};
use super::{Evaluation, Facts, Lease, Policy, Recorded, State, breakpoints, evaluate, transition};
use crate::identity::{Instance, StateDir};
use crate::ledger::{CLOCK_ANOMALY_THRESHOLD, Entry, Ledger, LedgerError};
use crate::time::{self, Clock, KernelClock};

/// Ledger entry kinds the agent writes besides the transitions in
/// [`super::transition::KINDS`].
pub mod kind {
    pub const BOOT: &str = "boot";
    pub const CHECKIN: &str = "checkin";
    pub const CHECKIN_FAILED: &str = "checkin_failed";
    pub const CLOCK_ANOMALY: &str = "clock_anomaly";
    pub const CONFIG_CHANGE_BLOCKED: &str = "config_change_blocked";
    pub const SERVICE_CONFIGURED: &str = "service_configured";
    pub const SERVICE_KEY_ANNOUNCED: &str = "service_key_announced";
    pub const SERVICE_KEY_ROTATED: &str = "service_key_rotated";
}

/// Errors while observing the license state.
#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "ledger {path}, seq {seq} (`{kind}`): {message}; run `vmledger ledger verify` and contact support"
    )]
    BadEntry {
        path: String,
        seq: u64,
        kind: String,
        message: String,
    },
}

/// An exclusive lock on the state dir's `.license.lock`, released on drop.
pub struct LicenseLock {
    _lock: Flock<std::fs::File>,
}

/// Take the license lock (waits for another holder).
pub fn lock(dir: &StateDir) -> Result<LicenseLock, LicenseError> {
    let path = dir.license_lock_path();
    let err = |source: std::io::Error| LicenseError::Lock {
        path: path.display().to_string(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno.into()))?;
    Ok(LicenseLock { _lock: lock })
}

/// A clock that never reads earlier than `floor` (trusted time); the kernel facts are the
/// real ones. Entries appended through it carry trusted time in their `at`.
pub struct AtLeast<'a> {
    pub clock: &'a dyn Clock,
    pub floor: DateTime<Utc>,
}

impl Clock for AtLeast<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now().max(self.floor)
    }
    fn kernel(&self) -> KernelClock {
        self.clock.kernel()
    }
}

/// What the ledger says, read in one place.
#[derive(Clone, Debug)]
pub struct LedgerFacts {
    pub facts: Facts,
    /// The newest entry.
    pub head: Entry,
    /// The `checkin` entry of the lease.
    pub checkin: Option<Entry>,
    /// The newest `checkin_failed` entry newer than the lease.
    pub failure: Option<Entry>,
    /// The newest transition entry.
    pub transition: Option<Entry>,
    /// The trusted time the latest earlier observation saw (unsigned high-water mark).
    pub observed: Option<DateTime<Utc>>,
}

impl LedgerFacts {
    /// The inputs of trusted time at the moment `clock` reads.
    pub fn time_inputs(&self, clock: &dyn Clock) -> TimeInputs {
        let head = time::parse_at(&self.head.body.at).ok().map(|at| Reference {
            at,
            boot_id: self.head.body.boot_id.clone(),
            uptime_ms: self.head.body.uptime_ms,
        });
        let receipt = self
            .facts
            .lease
            .as_ref()
            .zip(self.checkin.as_ref())
            .map(|(l, e)| Reference {
                at: l.server_time,
                boot_id: e.body.boot_id.clone(),
                uptime_ms: e.body.uptime_ms,
            });
        TimeInputs {
            system: clock.now(),
            kernel: clock.kernel(),
            head,
            receipt,
            observed: self.observed,
        }
    }
}

fn bad_entry(ledger: &Ledger, e: &Entry, message: String) -> LicenseError {
    LicenseError::BadEntry {
        path: ledger.path().display().to_string(),
        seq: e.body.seq,
        kind: e.body.kind.clone(),
        message,
    }
}

/// Read the license facts from the ledger (a few indexed lookups; O(log n)).
pub fn read_facts(inst: &Instance, ledger: &Ledger) -> Result<LedgerFacts, LicenseError> {
    let genesis = ledger.genesis()?;
    let created_at =
        time::parse_at(&genesis.body.at).map_err(|e| bad_entry(ledger, &genesis, e.to_string()))?;
    let head_seq = ledger.head()?.map_or(0, |h| h.seq);
    let head = ledger.entry(head_seq)?.unwrap_or_else(|| genesis.clone());
    let checkin = ledger.latest_of_kind(kind::CHECKIN)?;
    let lease = match &checkin {
        Some(e) => Some(
            Lease::from_checkin(e.body.seq, &e.body.at, &e.body.data)
                .map_err(|err| bad_entry(ledger, e, err.to_string()))?,
        ),
        None => None,
    };
    let lease_seq = checkin.as_ref().map(|e| e.body.seq);
    let failure = ledger
        .latest_of_kind(kind::CHECKIN_FAILED)?
        .filter(|f| lease_seq.is_none_or(|s| f.body.seq > s));
    let refusal = failure
        .as_ref()
        .and_then(|f| f.body.data.get("reason"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut last: Option<Entry> = None;
    // The newest transitions into `disabled` (always a `disabled` entry) and `locked` (a
    // `locked` entry, or `reenabled` when it went from disabled straight to locked).
    let mut disabled: Option<Recorded> = None;
    let mut locked: Option<Recorded> = None;
    for k in transition::KINDS {
        let Some(e) = ledger.latest_of_kind(k)? else {
            continue;
        };
        let into = state_of(&e);
        if k == transition::DISABLED {
            disabled = Some(Recorded::from_entry(e.body.seq, &e.body.data));
        }
        if matches!(k, transition::LOCKED | transition::REENABLED)
            && into == Some(State::Locked)
            && locked.as_ref().is_none_or(|l| e.body.seq > l.seq)
        {
            locked = Some(Recorded::from_entry(e.body.seq, &e.body.data));
        }
        if last.as_ref().is_none_or(|l| e.body.seq > l.body.seq) {
            last = Some(e);
        }
    }
    Ok(LedgerFacts {
        facts: Facts {
            serial: inst.settings.serial.clone(),
            created_at,
            lease,
            refusal,
            disabled,
            locked,
        },
        head,
        checkin,
        failure,
        transition: last,
        observed: meta_get(ledger, OBSERVED_KEY)?.and_then(|s| time::parse_at(&s).ok()),
    })
}

/// The result of one observation.
#[derive(Clone, Debug)]
pub struct Observation {
    pub evaluation: Evaluation,
    pub facts: LedgerFacts,
    pub time: TrustedNow,
    /// Entries this observation appended (a clock anomaly, transitions), in order.
    pub recorded: Vec<Entry>,
    /// When the current blocked run (locked or disabled) began: the `effective_at` of the
    /// transition into it. Identifies the lock episode (`watch` keeps one copy per episode).
    pub blocked_since: Option<String>,
}

impl Observation {
    pub fn state(&self) -> State {
        self.evaluation.state
    }
}

const ANOMALY_KEY: &str = "clock_anomaly_open";
const OBSERVED_KEY: &str = "time_high_water";
/// The high-water mark is rewritten only when it moved at least this much.
const OBSERVED_STEP: chrono::Duration = chrono::Duration::minutes(1);

fn meta_get(ledger: &Ledger, key: &str) -> Result<Option<String>, LicenseError> {
    ledger
        .connection()
        .query_row("SELECT value FROM agent_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|source| LicenseError::Sqlite {
            path: ledger.path().display().to_string(),
            source,
        })
}

fn meta_set(ledger: &Ledger, key: &str, value: Option<&str>) -> Result<(), LicenseError> {
    let c = ledger.connection();
    let r = match value {
        Some(v) => c.execute(
            "INSERT INTO agent_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, v],
        ),
        None => c.execute("DELETE FROM agent_meta WHERE key = ?1", [key]),
    };
    r.map(|_| ()).map_err(|source| LicenseError::Sqlite {
        path: ledger.path().display().to_string(),
        source,
    })
}

/// Compute trusted time and, when the system clock lags it by more than
/// [`CLOCK_ANOMALY_THRESHOLD`], record a `clock_anomaly` (once per episode and boot: again
/// after the clock has been seen sane, or after a reboot). Caller holds the license lock.
fn settle_time(
    inst: &Instance,
    ledger: &Ledger,
    lf: &LedgerFacts,
    clock: &dyn Clock,
    recorded: &mut Vec<Entry>,
) -> Result<TrustedNow, LicenseError> {
    let now = trusted::trusted_now(&lf.time_inputs(clock));
    let behind = now.system_behind();
    // The value is the boot id the open episode was recorded in: a reboot with the clock
    // still behind records a new anomaly; within one boot, one is enough.
    let open = meta_get(ledger, ANOMALY_KEY)?;
    let boot_id = clock.kernel().boot_id;
    if behind > CLOCK_ANOMALY_THRESHOLD && open.as_deref() != Some(boot_id.as_str()) {
        let mut d = Map::new();
        d.insert("system_clock".into(), json!(time::format_at(now.system)));
        d.insert("ledger_time".into(), json!(time::format_at(now.now)));
        d.insert("behind_ms".into(), json!(behind.num_milliseconds()));
        d.insert("trusted_source".into(), json!(now.source.as_str()));
        let at_least = AtLeast {
            clock,
            floor: now.now,
        };
        recorded.push(ledger.append(&inst.key, kind::CLOCK_ANOMALY, d, &at_least)?);
        meta_set(ledger, ANOMALY_KEY, Some(&boot_id))?;
    } else if behind <= CLOCK_ANOMALY_THRESHOLD && open.is_some() {
        meta_set(ledger, ANOMALY_KEY, None)?;
    }
    if lf.observed.is_none_or(|o| now.now >= o + OBSERVED_STEP) {
        meta_set(ledger, OBSERVED_KEY, Some(&time::format_at(now.now)))?;
    }
    Ok(now)
}

/// Append one entry stamped with trusted time (recording a clock anomaly first when one
/// is due). Returns everything appended, the requested entry last.
///
/// A `checkin` entry is stamped no earlier than its receipt's `server_time` (its
/// `data.server_time`): the service's clock is a lower bound of the real time, and the
/// ledger's time carries it forward after a reboot, when the receipt's uptime reference no
/// longer applies. A receipt is cited once: when the newest `checkin` entry already cites
/// the same receipt (`data.receipt`; two observers recording one receipt at once), that
/// entry is returned and nothing is appended.
pub fn append_trusted(
    inst: &Instance,
    ledger: &Ledger,
    kind: &str,
    data: Map<String, Value>,
    clock: &dyn Clock,
) -> Result<Vec<Entry>, LicenseError> {
    let _lock = lock(&inst.dir)?;
    let lf = read_facts(inst, ledger)?;
    let mut floor_extra = None;
    if kind == self::kind::CHECKIN {
        let receipt = data.get("receipt").and_then(Value::as_str);
        if let Some(c) = &lf.checkin
            && receipt.is_some()
            && data_str(c, "receipt") == receipt
        {
            return Ok(vec![c.clone()]);
        }
        floor_extra = data
            .get("server_time")
            .and_then(Value::as_str)
            .and_then(|t| time::parse_at(t).ok());
    }
    let mut out = Vec::new();
    let now = settle_time(inst, ledger, &lf, clock, &mut out)?;
    let at_least = AtLeast {
        clock,
        floor: now.now.max(floor_extra.unwrap_or(now.now)),
    };
    out.push(ledger.append(&inst.key, kind, data, &at_least)?);
    Ok(out)
}

fn state_of(e: &Entry) -> Option<State> {
    e.body
        .data
        .get("to")
        .and_then(Value::as_str)
        .and_then(State::parse)
}

fn data_str<'a>(e: &'a Entry, key: &str) -> Option<&'a str> {
    e.body.data.get(key).and_then(Value::as_str)
}

/// Observe the state at trusted now and record what changed since the last observation.
pub fn observe(
    inst: &Instance,
    ledger: &Ledger,
    policy: &Policy,
    clock: &dyn Clock,
) -> Result<Observation, LicenseError> {
    observe_with(inst, ledger, policy, clock, false)
}

/// [`observe`] just before a check-in (`boot`, `checkin`): what happened under the current
/// receipt (a lock that began while nothing ran, an SLA that ended) is recorded before the
/// check-in changes the facts, and the request then carries it to the service. Only a
/// check-in countdown that has not reached the lock is left to the observation after the
/// check-in, which records it if the check-in failed: a check-in that succeeds within the
/// grace period clears it, and a start and a clear for every check-in that is minutes
/// late (the daily timer's randomized delay makes about half of them late against a 24 h
/// lease) would only be noise.
pub fn observe_before_checkin(
    inst: &Instance,
    ledger: &Ledger,
    policy: &Policy,
    clock: &dyn Clock,
) -> Result<Observation, LicenseError> {
    observe_with(inst, ledger, policy, clock, true)
}

fn observe_with(
    inst: &Instance,
    ledger: &Ledger,
    policy: &Policy,
    clock: &dyn Clock,
    leave_overdue: bool,
) -> Result<Observation, LicenseError> {
    let _lock = lock(&inst.dir)?;
    let lf = read_facts(inst, ledger)?;
    let mut recorded = Vec::new();
    let now = settle_time(inst, ledger, &lf, clock, &mut recorded)?;
    let facts = &lf.facts;

    let mut current = lf
        .transition
        .as_ref()
        .and_then(state_of)
        .unwrap_or(State::Unregistered);
    let mut blocked_since = lf
        .transition
        .as_ref()
        .filter(|_| current.blocks_config())
        .and_then(|e| data_str(e, "blocked_since"))
        .map(str::to_string);
    let last_effective = lf
        .transition
        .as_ref()
        .and_then(|e| data_str(e, "effective_at").or(Some(e.body.at.as_str())))
        .and_then(|s| time::parse_at(s).ok());
    let since = [
        last_effective,
        facts.lease.as_ref().map(|l| l.checked_in_at),
        Some(facts.created_at),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(facts.created_at);

    let at_least = AtLeast {
        clock,
        floor: now.now,
    };
    let mut changes: Vec<(Evaluation, DateTime<Utc>)> = Vec::new();
    for b in breakpoints(facts, policy) {
        if b > since && b <= now.now {
            changes.push((evaluate(facts, policy, b), b));
        }
    }
    let evaluation = evaluate(facts, policy, now.now);
    changes.push((evaluation.clone(), now.now));
    if leave_overdue && evaluation.state == State::CheckinOverdue {
        changes.clear();
    }
    for (e, effective) in changes {
        if e.state == current {
            continue;
        }
        let from = current;
        let to = e.state;
        let effective_text = time::format_at(effective);
        blocked_since = if !to.blocks_config() {
            None
        } else if from.blocks_config() {
            blocked_since.or_else(|| Some(effective_text.clone()))
        } else {
            Some(effective_text.clone())
        };
        let mut d = Map::new();
        d.insert("from".into(), json!(from.as_str()));
        d.insert("to".into(), json!(to.as_str()));
        d.insert("reason".into(), json!(e.reason));
        d.insert("effective_at".into(), json!(effective_text));
        if let Some(c) = e.countdown {
            d.insert("countdown".into(), json!(c.kind.as_str()));
            d.insert(
                "countdown_ends_at".into(),
                json!(time::format_at(c.ends_at)),
            );
        }
        if let Some(s) = e.sla_ends {
            d.insert("sla_ends".into(), json!(s.format("%Y-%m-%d").to_string()));
        }
        if let Some(l) = &facts.lease {
            d.insert("receipt".into(), json!(l.receipt));
        }
        if let Some(v) = &e.verdict {
            d.insert("verdict".into(), json!(v));
        }
        if let Some(b) = &blocked_since {
            d.insert("blocked_since".into(), json!(b));
        }
        let entry = ledger.append(&inst.key, transition::kind(from, to), d, &at_least)?;
        recorded.push(entry);
        current = to;
    }
    // Re-read so that the caller sees the facts including what was just recorded.
    let facts = if recorded.is_empty() {
        lf
    } else {
        read_facts(inst, ledger)?
    };
    Ok(Observation {
        evaluation,
        facts,
        time: now,
        recorded,
        blocked_since,
    })
}
