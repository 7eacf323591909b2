//! Comparing two hardware fingerprints: which components changed, appeared or
//! disappeared, whether the matching policy still holds, and a conclusion with its
//! explanation in words.
//!
//! Conclusions, decided in this order:
//! 1. `same`: no compared component changed, appeared or disappeared;
//! 2. `snapshot_or_clone`: the VM generation ID is the only change;
//! 3. `clone_suspected`: the SMBIOS UUID changed (or, when it cannot be compared, every
//!    compared MAC address changed) while everything that travels with a copy (image-class
//!    components, disk serials) is unchanged, with at least one such component (or the
//!    generation ID) compared equal. A changed generation ID does not rule it out, since
//!    Proxmox regenerates it on clone;
//! 4. `hardware_changed`: the policy holds (enough components match, no deal-breaker
//!    changed);
//! 5. `different_machine`: the policy does not hold.
//!
//! Components unavailable on either side are not compared (a run as a normal user cannot
//! read what root can: that is not a change). Pure logic: no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Class, Component, Fingerprint, Policy, describe, is_mac, travels_with_copy};

/// The verdict of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Same,
    HardwareChanged,
    CloneSuspected,
    SnapshotOrClone,
    DifferentMachine,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Same => "same",
            Conclusion::HardwareChanged => "hardware_changed",
            Conclusion::CloneSuspected => "clone_suspected",
            Conclusion::SnapshotOrClone => "snapshot_or_clone",
            Conclusion::DifferentMachine => "different_machine",
        }
    }
}

/// How a component differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Changed,
    Added,
    Removed,
}

/// One component that differs, explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub component: String,
    pub class: Class,
    pub change: ChangeKind,
    /// Values, for descriptive components only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_value: Option<String>,
    pub deal_breaker: bool,
    pub explanation: String,
}

/// A component that was not compared, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotCompared {
    pub component: String,
    pub reason: String,
}

/// How the policy was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    pub strategy: String,
    pub deal_breakers: Vec<String>,
    /// Components compared (present on both sides, or present on one side only).
    pub compared: usize,
    pub matched: usize,
    pub required: usize,
    /// Deal-breaker components that changed or disappeared.
    pub broken_deal_breakers: Vec<String>,
    pub satisfied: bool,
}

/// The result of comparing two fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub conclusion: Conclusion,
    pub explanation: String,
    pub changes: Vec<Change>,
    pub not_compared: Vec<NotCompared>,
    pub policy: PolicyOutcome,
}

/// Compare `old` with `new` under `policy`.
pub fn compare(old: &Fingerprint, new: &Fingerprint, policy: &Policy) -> Drift {
    compare_components(&old.components, &new.components, policy)
}

/// [`compare`] on bare component lists (as recorded in boot entries).
pub fn compare_components(old: &[Component], new: &[Component], policy: &Policy) -> Drift {
    let names: BTreeSet<&str> = old
        .iter()
        .chain(new.iter())
        .map(|c| c.name.as_str())
        .collect();
    let find = |list: &'_ [Component], n: &str| list.iter().find(|c| c.name == n).cloned();
    let mut changes = Vec::new();
    let mut not_compared = Vec::new();
    let (mut compared, mut matched) = (0usize, 0usize);
    // (name, equal) for components present on both sides
    let mut both: Vec<(String, bool)> = Vec::new();
    for name in names {
        let (o, n) = (find(old, name), find(new, name));
        let unavailable = |side: &str, c: &Option<Component>| {
            c.as_ref().filter(|c| !c.is_present()).map(|c| {
                format!(
                    "unavailable in the {side} fingerprint: {}",
                    c.reason.as_deref().unwrap_or("no digest")
                )
            })
        };
        if let Some(reason) = unavailable("old", &o).or_else(|| unavailable("new", &n)) {
            not_compared.push(NotCompared {
                component: name.to_string(),
                reason,
            });
            continue;
        }
        compared += 1;
        let class = o
            .as_ref()
            .or(n.as_ref())
            .map(|c| c.class)
            .unwrap_or(Class::Hypervisor);
        let deal_breaker = policy.is_deal_breaker(name);
        let what = describe(name);
        let kind = match (&o, &n) {
            (Some(a), Some(b)) if a.digest == b.digest => {
                matched += 1;
                both.push((name.to_string(), true));
                continue;
            }
            (Some(_), Some(_)) => {
                both.push((name.to_string(), false));
                ChangeKind::Changed
            }
            (Some(_), None) => ChangeKind::Removed,
            _ => ChangeKind::Added,
        };
        let old_value = o.as_ref().and_then(|c| c.value.clone());
        let new_value = n.as_ref().and_then(|c| c.value.clone());
        let mut explanation = match (kind, &old_value, &new_value) {
            (ChangeKind::Changed, Some(a), Some(b)) => {
                format!("{what} ({}) changed from {a:?} to {b:?}", class.describe())
            }
            (ChangeKind::Changed, _, _) => format!("{what} ({}) changed", class.describe()),
            (ChangeKind::Added, _, _) => format!(
                "{what} ({}) appeared: a device or setting was added",
                class.describe()
            ),
            (ChangeKind::Removed, _, _) => format!(
                "{what} ({}) disappeared: a device or setting was removed",
                class.describe()
            ),
        };
        if deal_breaker {
            explanation.push_str("; it is a deal-breaker in the policy");
        }
        changes.push(Change {
            component: name.to_string(),
            class,
            change: kind,
            old_value,
            new_value,
            deal_breaker,
            explanation,
        });
    }

    let broken_deal_breakers: Vec<String> = changes
        .iter()
        .filter(|c| c.deal_breaker && c.change != ChangeKind::Added)
        .map(|c| c.component.clone())
        .collect();
    let required = policy.strategy.required(compared);
    let satisfied = matched >= required && broken_deal_breakers.is_empty();
    let outcome = PolicyOutcome {
        strategy: policy.strategy.as_str().to_string(),
        deal_breakers: policy.deal_breakers.clone(),
        compared,
        matched,
        required,
        broken_deal_breakers,
        satisfied,
    };

    let (conclusion, explanation) = conclude(&changes, &both, &outcome);
    Drift {
        conclusion,
        explanation,
        changes,
        not_compared,
        policy: outcome,
    }
}

fn conclude(
    changes: &[Change],
    both: &[(String, bool)],
    p: &PolicyOutcome,
) -> (Conclusion, String) {
    if changes.is_empty() {
        return (
            Conclusion::Same,
            format!("No compared component changed ({} compared).", p.compared),
        );
    }
    if changes.len() == 1
        && changes[0].component == "vmgenid"
        && changes[0].change == ChangeKind::Changed
    {
        return (
            Conclusion::SnapshotOrClone,
            "Only the VM generation ID changed: the VM was reverted to a snapshot, restored from a backup, or copied by a tool that keeps every other identifier. Nothing else about the hardware changed.".into(),
        );
    }

    let changed = |n: &str| both.iter().any(|(name, eq)| name == n && !eq);
    let uuid_compared = both.iter().any(|(n, _)| n == "smbios.uuid");
    let macs: Vec<&(String, bool)> = both.iter().filter(|(n, _)| is_mac(n)).collect();
    let identity_changed = if uuid_compared {
        changed("smbios.uuid")
    } else {
        !macs.is_empty() && macs.iter().all(|(_, eq)| !eq)
    };
    let travel_changed: Vec<&str> = changes
        .iter()
        .filter(|c| {
            travels_with_copy(&c.component)
                && c.component != "vmgenid"
                && c.change != ChangeKind::Added
        })
        .map(|c| c.component.as_str())
        .collect();
    let travel_equal: Vec<&str> = both
        .iter()
        .filter(|(n, eq)| *eq && travels_with_copy(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if identity_changed && travel_changed.is_empty() && !travel_equal.is_empty() {
        let what = if uuid_compared && changed("smbios.uuid") {
            if macs.iter().any(|(_, eq)| !eq) {
                "The SMBIOS UUID and the MAC addresses changed"
            } else {
                "The SMBIOS UUID changed"
            }
        } else {
            "Every MAC address changed"
        };
        let kept: Vec<String> = travel_equal.iter().map(|n| describe(n)).collect();
        return (
            Conclusion::CloneSuspected,
            format!(
                "{what} while what travels with a copy of the VM stayed identical ({}): this looks like a copy of the VM (virt-clone, a Proxmox clone, a VMware copy). If the VM was re-created or moved on purpose, this is expected.",
                kept.join(", ")
            ),
        );
    }

    let n = changes.len();
    let names: Vec<&str> = changes.iter().map(|c| c.component.as_str()).collect();
    if p.satisfied {
        (
            Conclusion::HardwareChanged,
            format!(
                "{n} component(s) changed ({}), but {} of {} compared components match and the policy `{}` needs {}: the same machine with changed hardware.",
                names.join(", "),
                p.matched,
                p.compared,
                p.strategy,
                p.required
            ),
        )
    } else {
        let why = if p.broken_deal_breakers.is_empty() {
            format!(
                "only {} of {} compared components match and the policy `{}` needs {}",
                p.matched, p.compared, p.strategy, p.required
            )
        } else {
            format!(
                "the deal-breaker(s) {} changed",
                p.broken_deal_breakers.join(", ")
            )
        };
        (
            Conclusion::DifferentMachine,
            format!(
                "{n} component(s) changed ({}) and {why}: this looks like a different machine.",
                names.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Components, Source, SourceKind, Strategy};
    use super::*;

    fn fp(vals: &[(&str, &str)]) -> Fingerprint {
        let mut c = Components::new();
        for (n, v) in vals {
            if *v == "!" {
                c.unavailable(n, "permission denied", "x");
            } else if *n == "machine_id" {
                c.digest(n, super::super::machine_id_digest(v), "x");
            } else {
                c.value(n, v, "x");
            }
        }
        c.finish(Source {
            kind: SourceKind::Guest,
            path: "/".into(),
        })
    }

    const BASE: &[(&str, &str)] = &[
        ("smbios.uuid", "6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f"),
        ("net.eth0.mac", "52:54:00:aa:bb:01"),
        ("disk.vda.serial", "D1"),
        ("machine_id", "0123456789abcdef0123456789abcdef"),
        ("vmgenid", "11111111-2222-4333-8444-555555555555"),
        ("cpu.count", "2"),
        ("memory.mib", "2048"),
    ];

    fn with(changes: &[(&str, &str)]) -> Fingerprint {
        let mut v: Vec<(&str, &str)> = BASE.to_vec();
        for (n, val) in changes {
            match v.iter_mut().find(|(k, _)| k == n) {
                Some(e) => e.1 = val,
                None => v.push((n, val)),
            }
        }
        fp(&v)
    }

    #[test]
    fn conclusions() {
        let p = Policy::default();
        let a = fp(BASE);
        assert_eq!(compare(&a, &a, &p).conclusion, Conclusion::Same);
        let g = with(&[("vmgenid", "99999999-2222-4333-8444-555555555555")]);
        assert_eq!(compare(&a, &g, &p).conclusion, Conclusion::SnapshotOrClone);
        let clone = with(&[
            ("smbios.uuid", "00000000-1111-4111-8111-111111111111"),
            ("net.eth0.mac", "52:54:00:aa:bb:02"),
        ]);
        let d = compare(&a, &clone, &p);
        assert_eq!(d.conclusion, Conclusion::CloneSuspected, "{d:#?}");
        let nic = with(&[("net.eth1.mac", "52:54:00:aa:bb:09")]);
        let d = compare(&a, &nic, &p);
        assert_eq!(d.conclusion, Conclusion::HardwareChanged);
        assert_eq!(d.changes[0].change, ChangeKind::Added);
        let other = fp(&[
            ("smbios.uuid", "00000000-1111-4111-8111-111111111111"),
            ("net.eth0.mac", "52:54:00:aa:bb:02"),
            ("disk.vda.serial", "D2"),
            ("machine_id", "ffff"),
            ("cpu.count", "4"),
        ]);
        assert_eq!(
            compare(&a, &other, &p).conclusion,
            Conclusion::DifferentMachine
        );
        let strict = Policy::new(Strategy::All, vec![]).unwrap();
        assert_eq!(
            compare(&a, &nic, &strict).conclusion,
            Conclusion::DifferentMachine
        );
    }

    #[test]
    fn deal_breakers_and_unavailable() {
        let p = Policy::new(Strategy::Any, vec!["net.*.mac".into()]).unwrap();
        let a = fp(BASE);
        let b = with(&[("net.eth0.mac", "52:54:00:aa:bb:02")]);
        let d = compare(&a, &b, &p);
        assert_eq!(d.conclusion, Conclusion::DifferentMachine);
        assert_eq!(
            d.policy.broken_deal_breakers,
            vec!["net.eth0.mac".to_string()]
        );
        // a root-only component unreadable on one side is not a change
        let c = with(&[("smbios.uuid", "!")]);
        let d = compare(&a, &c, &Policy::default());
        assert_eq!(d.conclusion, Conclusion::Same);
        assert_eq!(d.not_compared[0].component, "smbios.uuid");
    }

    #[test]
    fn nic_swap_alone_is_not_a_clone() {
        let a = fp(BASE);
        let b = with(&[("net.eth0.mac", "52:54:00:aa:bb:02")]);
        assert_eq!(
            compare(&a, &b, &Policy::default()).conclusion,
            Conclusion::HardwareChanged
        );
    }
}
