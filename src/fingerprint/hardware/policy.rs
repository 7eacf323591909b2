//! The matching policy for hardware fingerprints (`[hardware]` in the config file): a
//! strategy saying how many compared components must match (`any`, `two`, `most` =
//! at least ceil(n/2), `all`, as in Keygen's component matching) and deal-breakers,
//! component names or globs (`smbios.uuid`, `net.*.mac`) that must match whatever the count.
//!
//! Pure values: no I/O. Patterns are validated when the policy is built so a typo in the
//! config file is an error naming it, not a deal-breaker that silently never fires.

use std::fmt;
use std::str::FromStr;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::is_valid_name;

/// How many of the compared components must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// At least one.
    Any,
    /// At least two (all of them when fewer than two are compared).
    Two,
    /// At least ceil(n/2) of the n compared components.
    #[default]
    Most,
    /// Every compared component.
    All,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Any => "any",
            Strategy::Two => "two",
            Strategy::Most => "most",
            Strategy::All => "all",
        }
    }

    /// How many of `n` compared components must match.
    pub fn required(self, n: usize) -> usize {
        match self {
            Strategy::Any => n.min(1),
            Strategy::Two => n.min(2),
            Strategy::Most => n.div_ceil(2),
            Strategy::All => n,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Strategy, PolicyError> {
        match s {
            "any" => Ok(Strategy::Any),
            "two" => Ok(Strategy::Two),
            "most" => Ok(Strategy::Most),
            "all" => Ok(Strategy::All),
            other => Err(PolicyError::Strategy(other.to_string())),
        }
    }
}

/// A policy that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("strategy {0:?} is unknown: use any, two, most or all")]
    Strategy(String),
    #[error(
        "deal-breaker {pattern:?} {problem}: use component names such as smbios.uuid, net.*.mac, disk.*.serial, machine_id (see docs/formats/hardware.md)"
    )]
    DealBreaker { pattern: String, problem: String },
}

/// Example names every pattern is tried against: a wildcard pattern must match one of
/// them (or a well-formed name), so `smbios.uid*` is caught as a typo.
const EXAMPLES: &[&str] = &[
    "net.eth0.mac",
    "net.0.mac",
    "net.net0.mac",
    "disk.vda.serial",
    "disk.vda.source",
    "disk.sda.serial",
    "disk.scsi0.serial",
    "disk.scsi0.source",
];

/// A validated matching policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub strategy: Strategy,
    /// The deal-breaker patterns as written.
    pub deal_breakers: Vec<String>,
    set: GlobSet,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: Strategy::default(),
            deal_breakers: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.strategy == other.strategy && self.deal_breakers == other.deal_breakers
    }
}

impl Policy {
    /// Build a policy, validating every deal-breaker pattern.
    pub fn new(strategy: Strategy, deal_breakers: Vec<String>) -> Result<Policy, PolicyError> {
        let mut b = GlobSetBuilder::new();
        for p in &deal_breakers {
            let bad = |problem: &str| PolicyError::DealBreaker {
                pattern: p.clone(),
                problem: problem.to_string(),
            };
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| bad(&format!("is not a valid glob ({})", e.kind())))?;
            let m = glob.compile_matcher();
            let known = super::FIXED_NAMES
                .iter()
                .chain(EXAMPLES)
                .any(|n| m.is_match(n));
            if !known && !is_valid_name(p) {
                return Err(bad("matches no component"));
            }
            b.add(Glob::new(p).map_err(|e| bad(&format!("is not a valid glob ({})", e.kind())))?);
        }
        let set = b.build().map_err(|e| PolicyError::DealBreaker {
            pattern: deal_breakers.join(", "),
            problem: format!("cannot be compiled ({e})"),
        })?;
        Ok(Policy {
            strategy,
            deal_breakers,
            set,
        })
    }

    /// True when `name` is a deal-breaker.
    pub fn is_deal_breaker(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_counts() {
        assert_eq!(Strategy::Most.required(5), 3);
        assert_eq!(Strategy::Most.required(4), 2);
        assert_eq!(Strategy::Two.required(1), 1);
        assert_eq!(Strategy::Any.required(0), 0);
        assert_eq!(Strategy::All.required(7), 7);
    }

    #[test]
    fn patterns_are_validated() {
        let p = Policy::new(
            Strategy::All,
            vec!["smbios.uuid".into(), "net.*.mac".into()],
        )
        .unwrap();
        assert!(p.is_deal_breaker("net.ens3.mac"));
        assert!(p.is_deal_breaker("smbios.uuid"));
        assert!(!p.is_deal_breaker("disk.vda.serial"));
        assert!(Policy::new(Strategy::All, vec!["net.ens3.mac".into()]).is_ok());
        let e = Policy::new(Strategy::All, vec!["smbios.uid".into()]).unwrap_err();
        assert!(e.to_string().contains("smbios.uid"));
        assert!(Policy::new(Strategy::All, vec!["net.[.mac".into()]).is_err());
        assert!("sometimes".parse::<Strategy>().is_err());
    }
}
