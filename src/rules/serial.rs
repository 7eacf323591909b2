//! Rule 4: the serial level. A serial licenses one running appliance; a reinstall gives it
//! a new instance id (after the activation limit has been checked by the caller). The
//! newly activated instance supersedes the serial's active one; an older instance that
//! writes again is judged as in rule 3: still running (`4-resumed`,
//! concurrent_duplicate, that instance disabled) or rebooted (`4-rebooted`, switching,
//! every instance of the serial disabled). Declared windows on either instance suspend it.
//!
//! Pure like the rest of [`crate::rules`]: values in, values out.

use serde::{Deserialize, Serialize};

use super::{EntryRef, Kind, Node, Policy, Rule, Time, Tolerance, stamp};
use crate::time;

/// An instance's standing within its serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MemberState {
    /// The serial's current instance.
    Active,
    /// Replaced by a newer instance (a reinstall).
    Superseded {
        #[serde(with = "stamp")]
        since: Time,
        by: String,
        /// The kernel boot id of its last entry at that moment.
        boot_id: String,
        /// When its first entry after the supersession was observed (late history is
        /// accepted only with that first delivery).
        #[serde(default, with = "super::opt_stamp")]
        first_seen_after: Option<Time>,
    },
    /// Disabled by a serial-level verdict.
    Disabled {
        reason: Kind,
        verdict: u32,
        #[serde(with = "stamp")]
        since: Time,
    },
}

impl MemberState {
    pub fn name(&self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Superseded { .. } => "superseded",
            MemberState::Disabled { .. } => "disabled",
        }
    }
}

/// One instance of a serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub instance: String,
    #[serde(with = "stamp")]
    pub activated: Time,
    pub state: MemberState,
    /// Its first observed entry.
    pub first: Option<EntryRef>,
    /// Its latest observed entry that carried a kernel boot id not seen before (updated
    /// on reboots only, so the state stays unchanged by routine check-ins): the boot id
    /// it had when it was superseded comes from here.
    pub last: Option<EntryRef>,
}

/// The rules' state for one serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub serial: String,
    pub members: Vec<Member>,
    /// Serial-level verdicts issued so far.
    pub verdicts: u32,
}

/// A serial-level verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialVerdict {
    /// Per-serial verdict number (1, 2, ...).
    pub number: u32,
    pub kind: Kind,
    pub rule: Rule,
    #[serde(with = "stamp")]
    pub observed: Time,
    /// Instances disabled by it.
    pub disabled: Vec<String>,
    /// The older instance that wrote again, and the entry it wrote.
    pub trigger_instance: String,
    pub trigger: EntryRef,
    /// The instance that had superseded it, and its first entry.
    pub witness_instance: String,
    pub witness: Option<EntryRef>,
    pub explanation: String,
}

/// What the serial-level rule made of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialDecision {
    /// From the serial's active instance (or a newly activated one).
    Accepted,
    /// From a superseded instance, without a verdict.
    Tolerated(Tolerance),
    /// From an instance already disabled at serial level.
    StillDisabled { reason: Kind, verdict: u32 },
    /// Rule 4 fired.
    Verdict(Box<SerialVerdict>),
}

impl SerialState {
    pub fn new(serial: &str) -> SerialState {
        SerialState {
            serial: serial.to_string(),
            members: Vec::new(),
            verdicts: 0,
        }
    }

    pub fn member(&self, instance: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.instance == instance)
    }

    fn index(&self, instance: &str) -> Option<usize> {
        self.members.iter().position(|m| m.instance == instance)
    }

    /// Activate `instance` at `observed` (its first accepted check-in; the cross-check
    /// uses its first entry). Supersedes the active instance(s). Returns the instances
    /// superseded; activating a known instance does nothing.
    pub fn activate(&mut self, instance: &str, observed: Time) -> Vec<String> {
        if self.index(instance).is_some() {
            return Vec::new();
        }
        let mut superseded = Vec::new();
        for m in self.members.iter_mut() {
            if m.state == MemberState::Active {
                m.state = MemberState::Superseded {
                    since: observed,
                    by: instance.to_string(),
                    boot_id: m
                        .last
                        .as_ref()
                        .map(|e| e.boot_id.clone())
                        .unwrap_or_default(),
                    first_seen_after: None,
                };
                superseded.push(m.instance.clone());
            }
        }
        self.members.push(Member {
            instance: instance.to_string(),
            activated: observed,
            state: MemberState::Active,
            first: None,
            last: None,
        });
        superseded
    }

    /// Feed one verified entry of `instance` (activating the instance if it is new).
    pub fn observe(
        &mut self,
        instance: &str,
        node: &Node,
        observed: Time,
        policy: &Policy,
    ) -> SerialDecision {
        if self.index(instance).is_none() {
            self.activate(instance, observed);
        }
        let i = self.index(instance).expect("activated above");
        let nref = EntryRef::new(node, observed);
        let m = &mut self.members[i];
        if m.first.is_none() {
            m.first = Some(nref.clone());
        }
        if m.last.as_ref().is_none_or(|l| l.boot_id != nref.boot_id) {
            m.last = Some(nref.clone());
        }
        match m.state.clone() {
            MemberState::Active => SerialDecision::Accepted,
            MemberState::Disabled {
                reason, verdict, ..
            } => SerialDecision::StillDisabled { reason, verdict },
            MemberState::Superseded {
                since,
                by,
                boot_id,
                first_seen_after,
            } => {
                let tol = policy.thresholds.clock_tolerance;
                let first = first_seen_after.unwrap_or(observed);
                if let MemberState::Superseded {
                    first_seen_after: f,
                    ..
                } = &mut self.members[i].state
                {
                    *f = Some(first);
                }
                let late = node.at <= since + tol && observed <= first + tol;
                let window = policy
                    .window(instance, observed)
                    .or_else(|| policy.window(&by, observed));
                if let Some(w) = window {
                    return SerialDecision::Tolerated(Tolerance::AllowConcurrent {
                        until: w.until,
                        reason: w.reason.clone(),
                    });
                }
                if late {
                    return SerialDecision::Tolerated(Tolerance::LateHistory);
                }
                let rebooted = node.is_boot() || (!boot_id.is_empty() && node.boot_id != boot_id);
                self.verdicts += 1;
                let number = self.verdicts;
                let (kind, rule, disabled): (Kind, Rule, Vec<String>) = if rebooted {
                    let live = self
                        .members
                        .iter()
                        .filter(|m| !matches!(m.state, MemberState::Disabled { .. }))
                        .map(|m| m.instance.clone())
                        .collect();
                    (Kind::Switching, Rule::SerialRebooted, live)
                } else {
                    (
                        Kind::ConcurrentDuplicate,
                        Rule::SerialResumed,
                        vec![instance.to_string()],
                    )
                };
                for m in self.members.iter_mut() {
                    if disabled.contains(&m.instance) {
                        m.state = MemberState::Disabled {
                            reason: kind,
                            verdict: number,
                            since: observed,
                        };
                    }
                }
                let witness = self.member(&by).and_then(|m| m.first.clone());
                let explanation = if rebooted {
                    format!(
                        "Instance {instance} of serial {} had been replaced by instance {by} at {}, then booted again and wrote entry seq {} (observed {}): the owner switched back to the old installation. Every instance of the serial is disabled.",
                        self.serial,
                        time::format_at(since),
                        nref.seq,
                        time::format_at(observed)
                    )
                } else {
                    format!(
                        "Instance {instance} of serial {} had been replaced by instance {by} at {}, yet kept running and wrote entry seq {} (observed {}): two installations ran at once. Instance {instance} is disabled; {by} continues.",
                        self.serial,
                        time::format_at(since),
                        nref.seq,
                        time::format_at(observed)
                    )
                };
                SerialDecision::Verdict(Box::new(SerialVerdict {
                    number,
                    kind,
                    rule,
                    observed,
                    disabled,
                    trigger_instance: instance.to_string(),
                    trigger: nref,
                    witness_instance: by,
                    witness,
                    explanation,
                }))
            }
        }
    }

    /// Operator override: `instance` becomes the serial's active instance again; other
    /// active instances are superseded at `at`. Returns false for an unknown instance.
    pub fn reinstate(&mut self, instance: &str, at: Time) -> bool {
        let Some(i) = self.index(instance) else {
            return false;
        };
        for (j, m) in self.members.iter_mut().enumerate() {
            if j == i {
                m.state = MemberState::Active;
            } else if m.state == MemberState::Active {
                m.state = MemberState::Superseded {
                    since: at,
                    by: instance.to_string(),
                    boot_id: m
                        .last
                        .as_ref()
                        .map(|e| e.boot_id.clone())
                        .unwrap_or_default(),
                    first_seen_after: None,
                };
            }
        }
        true
    }
}
