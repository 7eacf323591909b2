//! The detection rules: how a witness of an instance's signed ledger tells a restore from
//! a running duplicate or from switching between copies. One implementation, used by the
//! licensing service (observation time = the service's arrival time of each entry) and by
//! the offline cross-check (observation time = each entry's own `at`, entries replayed in
//! `at` order).
//!
//! This module is a pure state machine. It never does I/O, never reads a clock and never
//! touches storage: every input (entries, the time each was observed, the operator's
//! declarations, the thresholds) arrives as a value, and every output is a value. The
//! caller verifies hashes, signatures and links *before* handing entries in.
//!
//! # Model
//! An instance's verified entries form a tree rooted at its genesis. The tree is kept as
//! *branches*: branch 0 starts at genesis; an entry whose predecessor already has a child
//! starts a new branch (a *fork*: two validly signed entries with the same `prev`, which is
//! self-standing proof that two copies of the instance exist). Each entry's location is a
//! [`Loc`] (its branch and seq). The state keeps, per branch, only its fork point, first
//! entry, tip and [`BranchState`], so it stays small however long the ledger grows; the
//! caller stores each entry's branch and hands the parent's [`Loc`] back in.
//!
//! Ledger time never runs backwards along a chain, so a branch's tip carries the largest
//! `at` of the branch. That makes every rule below a comparison of a few tips.
//!
//! # Rules (the "Detection rules", with the fairness choices spelled out)
//! 1. An entry that extends the primary branch is accepted ([`Decision::Extended`]).
//! 2. An entry that forks (its `prev` already has a child) starts a new branch:
//!    - when every live (not disabled) branch's tip is no later than the new entry's `at`
//!      plus [`Thresholds::clock_tolerance`], the other copies had stopped before this one
//!      started: a **restore** (`restored`, rule `2-restore`). The new branch becomes
//!      primary, the previous primary is superseded. More than
//!      [`Thresholds::restore_warn`] restores within [`Thresholds::restore_window`] sets
//!      [`Verdict::review`]; restores never disable anything. A snapshot revert without a
//!      reboot looks exactly the same and is judged the same.
//!    - otherwise a live copy wrote an entry after this copy had started: both ran after
//!      they diverged: **concurrent_duplicate** (rule `2-overlap`); the new branch (the copy
//!      that reported second) is disabled, the primary continues.
//!    - a fork from history that only disabled branches contain is born disabled (a copy of
//!      a disabled copy stays disabled; [`Decision::StillDisabled`]).
//! 3. An entry that extends a superseded branch is judged unless it is *late history*:
//!    written (by its `at`) no later than the superseding copy's first entry plus the
//!    clock tolerance, and delivered with the first report after the supersession (the
//!    copy's pending tail, e.g. the `checkin` entry it wrote after its last receipt). A
//!    copy that reports again later is judged whatever its clock says, so holding a clock
//!    back buys nothing. Judged entries:
//!    - not a reboot (the old copy kept running): **concurrent_duplicate** (rule
//!      `3-resumed`): the superseded branch is disabled, the primary continues;
//!    - a reboot (a `boot` entry, or a kernel boot id other than the one the branch had when
//!      it was superseded): **switching** (rule `3-rebooted`): every branch is disabled.
//! 4. Serial level ([`SerialState`]): a newly activated instance supersedes the serial's
//!    active one; the older instance's later entries are judged as in rule 3 (rules
//!    `4-resumed`, `4-rebooted`), every instance disabled on switching.
//! 5. A declared window ([`Window`], `admin allow-concurrent`) suspends rules 2-4 for its
//!    instance while it lasts: forks and superseded branches become [`BranchState::Concurrent`]
//!    and are accepted. After the window an entry on such a branch is judged like a fork
//!    (rule `5-resumed`): a takeover (restore) when nothing live is later, else
//!    concurrent_duplicate for that branch only. A declared pair never causes `switching`.
//! 6. Every verdict carries its evidence: the fork point, the two entries with the same
//!    `prev`, the entry that triggered the rule, the entry on the other side that proves the
//!    timing, and a snapshot of the branches involved (the caller adds the signed entries
//!    and the timelines with observation times, see `service::evidence`).
//!
//! Only proof that two copies both ran after they diverged disables anything. Legitimate
//! events stay clean: one restore (or several, only reported), network outages (entries
//! arrive late but extend their own branch), clock steps within the tolerance, declared
//! HA/DR pairs, and re-sent entries (the caller skips hashes it already holds;
//! [`Graph`] reports them as [`Decision::Known`]).

mod graph;
mod serial;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::ledger::entry::{Entry, GENESIS_PREV};
use crate::time;
pub use graph::Graph;
pub use serial::{Member, MemberState, SerialDecision, SerialState, SerialVerdict};

/// A point in time (UTC, millisecond precision). Serialised in the ledger's format.
pub type Time = DateTime<Utc>;

/// A branch number within one instance (0 is the branch that starts at genesis).
pub type BranchId = u32;

/// Serde for [`Time`] in the ledger's exact timestamp format.
pub mod stamp {
    use super::Time;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Time, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_at(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let text = String::deserialize(d)?;
        crate::time::parse_at(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Option<Time>` in the ledger's timestamp format.
pub mod opt_stamp {
    use super::Time;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Time>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&crate::time::format_at(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => crate::time::parse_at(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Thresholds of the rules (the service's `[server]` config, the cross-check's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Clock differences up to this much never count as overlap: NTP steps and skew
    /// between copies' clocks. Default 60 minutes.
    pub clock_tolerance: Duration,
    /// Restores tolerated within [`Thresholds::restore_window`] before a restore is marked
    /// for review (never disabled). Default 2.
    pub restore_warn: u32,
    /// Default 30 days.
    pub restore_window: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            clock_tolerance: Duration::minutes(60),
            restore_warn: 2,
            restore_window: Duration::days(30),
        }
    }
}

/// An operator's declaration that an instance may run as several copies at once (HA/DR
/// pair, DR test) from `from` until `until` (inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub instance: String,
    #[serde(with = "stamp")]
    pub from: Time,
    #[serde(with = "stamp")]
    pub until: Time,
    pub reason: String,
}

/// Everything besides the entries that the rules depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub thresholds: Thresholds,
    /// Declared concurrency windows (any instance; each rule looks up its own).
    pub windows: Vec<Window>,
}

impl Policy {
    /// The declared window covering `instance` at `t`, if any (the one lasting longest).
    pub fn window(&self, instance: &str, t: Time) -> Option<&Window> {
        self.windows
            .iter()
            .filter(|w| w.instance == instance && w.from <= t && t <= w.until)
            .max_by_key(|w| w.until)
    }
}

/// What the rules need to know about one verified entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub hash: String,
    pub prev: String,
    pub seq: u64,
    pub kind: String,
    pub at: Time,
    pub boot_id: String,
}

impl Node {
    /// The rules' view of a (verified) ledger entry.
    pub fn from_entry(e: &Entry) -> Result<Node, RuleError> {
        let at = time::parse_at(&e.body.at).map_err(|_| RuleError::BadTime {
            hash: e.hash.clone(),
            at: e.body.at.clone(),
        })?;
        Ok(Node {
            hash: e.hash.clone(),
            prev: e.body.prev.clone(),
            seq: e.body.seq,
            kind: e.body.kind.clone(),
            at,
            boot_id: e.body.boot_id.clone(),
        })
    }

    /// True for a `boot` entry: the copy (re)started.
    pub fn is_boot(&self) -> bool {
        self.kind == "boot"
    }
}

/// A compact reference to an entry, with the time it was observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    pub hash: String,
    pub seq: u64,
    pub kind: String,
    #[serde(with = "stamp")]
    pub at: Time,
    pub boot_id: String,
    /// When the witness observed it (service: arrival time; cross-check: its `at`).
    #[serde(with = "stamp")]
    pub observed: Time,
}

impl EntryRef {
    pub fn new(n: &Node, observed: Time) -> EntryRef {
        EntryRef {
            hash: n.hash.clone(),
            seq: n.seq,
            kind: n.kind.clone(),
            at: n.at,
            boot_id: n.boot_id.clone(),
            observed,
        }
    }
}

/// Where an entry sits in an instance's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Loc {
    pub branch: BranchId,
    pub seq: u64,
}

/// Where a branch leaves its parent: the last entry it shares with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkPoint {
    pub branch: BranchId,
    pub seq: u64,
    pub hash: String,
}

/// The verdict words (the same in receipts, `admin show` and the cross-check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Restored,
    ConcurrentDuplicate,
    Switching,
}

impl Kind {
    /// The word used in receipts (`protocol::reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Restored => crate::protocol::reason::RESTORED,
            Kind::ConcurrentDuplicate => crate::protocol::reason::CONCURRENT_DUPLICATE,
            Kind::Switching => crate::protocol::reason::SWITCHING,
        }
    }

    /// True when the verdict disables something.
    pub fn disables(self) -> bool {
        !matches!(self, Kind::Restored)
    }
}

/// Which rule fired (stable codes, used in evidence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// A fork that started after every live copy's last entry.
    #[serde(rename = "2-restore")]
    Restore,
    /// A fork while another copy kept writing later entries.
    #[serde(rename = "2-overlap")]
    Overlap,
    /// A superseded branch wrote again without rebooting.
    #[serde(rename = "3-resumed")]
    Resumed,
    /// A superseded branch wrote again after a reboot.
    #[serde(rename = "3-rebooted")]
    Rebooted,
    /// An older instance of the serial wrote again without rebooting.
    #[serde(rename = "4-resumed")]
    SerialResumed,
    /// An older instance of the serial wrote again after a reboot.
    #[serde(rename = "4-rebooted")]
    SerialRebooted,
    /// A branch of a declared pair wrote after its window ended.
    #[serde(rename = "5-resumed")]
    WindowEnded,
}

impl Rule {
    pub fn code(self) -> &'static str {
        match self {
            Rule::Restore => "2-restore",
            Rule::Overlap => "2-overlap",
            Rule::Resumed => "3-resumed",
            Rule::Rebooted => "3-rebooted",
            Rule::SerialResumed => "4-resumed",
            Rule::SerialRebooted => "4-rebooted",
            Rule::WindowEnded => "5-resumed",
        }
    }
}

/// A branch's standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BranchState {
    /// The branch the instance continues on.
    Primary,
    /// Replaced by a restore (or by an operator's `primary`). New entries are judged by
    /// rule 3.
    Superseded {
        /// When it was superseded (observation time).
        #[serde(with = "stamp")]
        since: Time,
        /// The branch that superseded it.
        by: BranchId,
        /// The ledger time (`at`) from which the superseding copy ran: its first entry's
        /// `at` (or the override's time). This branch's entries written before it (within
        /// the clock tolerance) are late history, not a returning copy.
        #[serde(with = "stamp")]
        by_at: Time,
        /// The kernel boot id of its tip at that moment.
        boot_id: String,
        /// When the first entry of this branch was observed after the supersession: late
        /// history is accepted only then (the copy's pending tail, delivered at once),
        /// never from a copy that keeps reporting with a clock held back.
        #[serde(default, with = "opt_stamp")]
        first_seen_after: Option<Time>,
    },
    /// Running under a declared window (rule 5).
    Concurrent {
        #[serde(with = "stamp")]
        since: Time,
        #[serde(with = "stamp")]
        until: Time,
    },
    /// Permanently disabled by a verdict (until an operator reinstates it).
    Disabled {
        reason: Kind,
        /// The instance-level verdict number.
        verdict: u32,
        #[serde(with = "stamp")]
        since: Time,
    },
}

impl BranchState {
    pub fn is_disabled(&self) -> bool {
        matches!(self, BranchState::Disabled { .. })
    }
    pub fn name(&self) -> &'static str {
        match self {
            BranchState::Primary => "primary",
            BranchState::Superseded { .. } => "superseded",
            BranchState::Concurrent { .. } => "concurrent",
            BranchState::Disabled { .. } => "disabled",
        }
    }
}

/// One branch of an instance's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub id: BranchId,
    /// `None` for branch 0 (which starts at genesis).
    pub fork: Option<ForkPoint>,
    /// The fork point's child that already existed when this branch forked: with
    /// [`Branch::first`], two entries with the same `prev`.
    pub sibling: Option<EntryRef>,
    pub first: EntryRef,
    pub tip: EntryRef,
    /// Number of entries that belong to this branch (after its fork point).
    pub entries: u64,
    pub state: BranchState,
}

/// The rules' state for one instance. Small (one record per branch); serialisable so
/// that the service stores it beside the entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub instance: String,
    pub branches: Vec<Branch>,
    /// The primary branch (meaningless while `branches` is empty).
    pub primary: BranchId,
    /// Observation times of restores (for [`Thresholds::restore_warn`]).
    #[serde(default)]
    pub restores: Vec<String>,
    /// Verdicts issued so far (the next one is numbered `verdicts + 1`).
    pub verdicts: u32,
}

/// Why an entry on a non-primary branch was accepted without a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum Tolerance {
    /// A declared window covers it (rule 5).
    AllowConcurrent {
        #[serde(with = "stamp")]
        until: Time,
        reason: String,
    },
    /// It extends a superseded branch but was observed within the clock tolerance of the
    /// supersession: history written before the other copy started, told apart only by
    /// clocks that may disagree by that much.
    LateHistory,
}

/// A snapshot of one branch, as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchSummary {
    pub branch: BranchId,
    pub fork: Option<ForkPoint>,
    pub first: EntryRef,
    pub tip: EntryRef,
    pub entries: u64,
    /// Its state before the verdict.
    pub state_before: String,
    /// Its state after the verdict.
    pub state_after: String,
}

/// The fork that proves two copies exist: two entries with the same `prev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The last entry both copies share.
    pub point: ForkPoint,
    /// The two entries whose `prev` is the fork point: the existing one and the new one.
    pub children: [EntryRef; 2],
}

/// A verdict of the rules, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Per-instance verdict number (1, 2, ...).
    pub number: u32,
    pub kind: Kind,
    pub rule: Rule,
    /// When it was decided (the observation time of the trigger).
    #[serde(with = "stamp")]
    pub observed: Time,
    /// The primary branch after the verdict.
    pub primary: BranchId,
    /// Branches disabled by this verdict.
    pub disabled: Vec<BranchId>,
    /// Branches superseded by this verdict.
    pub superseded: Vec<BranchId>,
    /// A restore beyond `restore_warn` within `restore_window`: report for review.
    pub review: bool,
    /// The fork behind the verdict (for rule 3: the fork where the superseded branch left
    /// the primary's line).
    pub fork: Option<Fork>,
    /// The entry that made the rule fire.
    pub trigger: EntryRef,
    /// The entry on the other side that proves the timing: the live tip later than the
    /// new branch's start (overlap), or the superseding branch's first entry (rule 3).
    pub witness: Option<EntryRef>,
    /// The branches involved, before and after.
    pub branches: Vec<BranchSummary>,
    /// Plain words for support engineers and owners.
    pub explanation: String,
}

/// What the rules made of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The instance's first entry.
    Genesis,
    /// Rule 1: it extends the primary branch.
    Extended,
    /// Already known (only [`Graph`] reports this: re-sent entries are idempotent).
    Known,
    /// Accepted on a non-primary branch without a verdict.
    Tolerated(Tolerance),
    /// On (or forked from) a disabled lineage: stored, no new verdict.
    StillDisabled { reason: Kind, verdict: u32 },
    /// A rule fired.
    Verdict(Box<Verdict>),
}

/// An entry's location and what the rules made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub loc: Loc,
    pub decision: Decision,
}

/// The standing of a copy whose newest entry is at some [`Loc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// On the primary line.
    Primary,
    /// On a live but non-primary line (superseded or declared concurrent).
    Live,
    /// Every line through it is disabled.
    Disabled { reason: Kind, verdict: u32 },
}

/// Inputs the rules cannot work with (the caller's bookkeeping is inconsistent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("entry {hash}: `at` {at} is not a ledger timestamp")]
    BadTime { hash: String, at: String },
    #[error(
        "entry {hash} (seq {seq}) has no known predecessor; the instance's first entry must be its genesis (seq 0)"
    )]
    NotGenesis { hash: String, seq: u64 },
    #[error("entry {hash}: the instance already has a genesis entry")]
    SecondGenesis { hash: String },
    #[error("entry {hash}: predecessor location names branch {branch}, which does not exist")]
    UnknownBranch { hash: String, branch: BranchId },
    #[error("entry {hash}: seq {found} does not follow its predecessor's seq {parent}")]
    Seq {
        hash: String,
        parent: u64,
        found: u64,
    },
    #[error("entry {hash}: predecessor {prev} is unknown")]
    UnknownParent { hash: String, prev: String },
    #[error("entry {hash}: a fork needs the predecessor's existing child (sibling)")]
    MissingSibling { hash: String },
    #[error("no branch contains entry {hash}")]
    UnknownEntry { hash: String },
}

fn restore_counts(restores: &[String], now: Time, window: Duration) -> u32 {
    restores
        .iter()
        .filter_map(|t| time::parse_at(t).ok())
        .filter(|t| *t + window >= now)
        .count() as u32
}

impl InstanceState {
    /// A fresh state for `instance` (no entries yet).
    pub fn new(instance: &str) -> InstanceState {
        InstanceState {
            instance: instance.to_string(),
            branches: Vec::new(),
            primary: 0,
            restores: Vec::new(),
            verdicts: 0,
        }
    }

    /// The branch `id`.
    pub fn branch(&self, id: BranchId) -> Option<&Branch> {
        self.branches.get(id as usize)
    }

    /// The primary branch's tip, if the instance has entries.
    pub fn primary_tip(&self) -> Option<&EntryRef> {
        self.branch(self.primary).map(|b| &b.tip)
    }

    /// True when an entry whose predecessor is at `parent` (with hash `prev`) would fork,
    /// so the caller must pass the predecessor's existing child as `sibling` to
    /// [`InstanceState::observe`].
    pub fn would_fork(&self, parent: Loc, prev: &str) -> bool {
        self.branch(parent.branch)
            .is_some_and(|b| !(b.tip.hash == prev && b.tip.seq == parent.seq))
    }

    /// True while some branch is not disabled.
    pub fn any_live(&self) -> bool {
        self.branches.iter().any(|b| !b.state.is_disabled())
    }

    /// Branches whose chain contains the entry at `loc`: its own branch and every branch
    /// that forked from it at or after `loc.seq`, recursively.
    pub fn lineage(&self, loc: Loc) -> Vec<BranchId> {
        let mut out = vec![loc.branch];
        let mut i = 0;
        while i < out.len() {
            let (b, min_seq) = if i == 0 {
                (loc.branch, loc.seq)
            } else {
                (out[i], 0)
            };
            for br in &self.branches {
                if let Some(f) = &br.fork
                    && f.branch == b
                    && f.seq >= min_seq
                    && !out.contains(&br.id)
                {
                    out.push(br.id);
                }
            }
            i += 1;
        }
        out
    }

    /// The standing of a copy whose newest entry is at `loc`.
    pub fn standing(&self, loc: Loc) -> Standing {
        let lineage = self.lineage(loc);
        if lineage.contains(&self.primary)
            && self
                .branch(self.primary)
                .is_some_and(|b| !b.state.is_disabled())
        {
            return Standing::Primary;
        }
        let mut disabled = None;
        for id in &lineage {
            match self.branch(*id).map(|b| &b.state) {
                Some(BranchState::Disabled {
                    reason, verdict, ..
                }) => {
                    disabled = disabled.or(Some((*reason, *verdict)));
                }
                Some(_) => return Standing::Live,
                None => {}
            }
        }
        match disabled {
            Some((reason, verdict)) => Standing::Disabled { reason, verdict },
            None => Standing::Live,
        }
    }

    fn summaries(&self, ids: &[BranchId], before: &InstanceState) -> Vec<BranchSummary> {
        ids.iter()
            .filter_map(|id| {
                let b = self.branch(*id)?;
                let state_before = before
                    .branch(*id)
                    .map_or("new", |x| x.state.name())
                    .to_string();
                Some(BranchSummary {
                    branch: b.id,
                    fork: b.fork.clone(),
                    first: b.first.clone(),
                    tip: b.tip.clone(),
                    entries: b.entries,
                    state_before,
                    state_after: b.state.name().to_string(),
                })
            })
            .collect()
    }

    /// The line of branch `id` as (branch, shared up to seq, the child branch that left
    /// it there), from `id` up to branch 0.
    fn ancestry(&self, id: BranchId) -> Vec<(BranchId, u64, Option<BranchId>)> {
        let mut out = vec![(id, u64::MAX, None)];
        let mut cur = self.branch(id);
        while let Some(b) = cur {
            match &b.fork {
                Some(f) if out.len() <= self.branches.len() => {
                    out.push((f.branch, f.seq, Some(b.id)));
                    cur = self.branch(f.branch);
                }
                _ => break,
            }
        }
        out
    }

    /// The fork where the lines of branches `x` and `y` diverged, as proof: the fork
    /// point and two entries whose `prev` it is.
    pub fn fork_between(&self, x: BranchId, y: BranchId) -> Option<Fork> {
        if x == y {
            return None;
        }
        let ay = self.ancestry(y);
        for (b, sx, vx) in self.ancestry(x) {
            let Some((_, sy, vy)) = ay.iter().find(|(c, _, _)| *c == b).copied() else {
                continue;
            };
            let leaver = if sx < sy {
                vx
            } else if sy < sx {
                vy
            } else {
                vx.or(vy)
            }?;
            let br = self.branch(leaver)?;
            return Some(Fork {
                point: br.fork.clone()?,
                children: [br.sibling.clone()?, br.first.clone()],
            });
        }
        None
    }

    fn next_verdict(&mut self) -> u32 {
        self.verdicts += 1;
        self.verdicts
    }

    /// Feed one verified entry.
    ///
    /// - `parent`: the location of the entry's predecessor (`None` only for genesis);
    /// - `sibling`: when [`InstanceState::would_fork`] says so, an existing child of the
    ///   predecessor (the other half of the fork proof), else `None`;
    /// - `observed`: when the witness observed it (service: arrival; cross-check: `at`).
    ///
    /// The caller has checked hash, signature and link, and skips entries it already holds.
    pub fn observe(
        &mut self,
        node: &Node,
        parent: Option<Loc>,
        sibling: Option<&EntryRef>,
        observed: Time,
        policy: &Policy,
    ) -> Result<Outcome, RuleError> {
        let nref = EntryRef::new(node, observed);
        let Some(parent) = parent else {
            if !self.branches.is_empty() {
                return Err(RuleError::SecondGenesis {
                    hash: node.hash.clone(),
                });
            }
            if node.seq != 0 || node.prev != GENESIS_PREV {
                return Err(RuleError::NotGenesis {
                    hash: node.hash.clone(),
                    seq: node.seq,
                });
            }
            self.branches.push(Branch {
                id: 0,
                fork: None,
                sibling: None,
                first: nref.clone(),
                tip: nref,
                entries: 1,
                state: BranchState::Primary,
            });
            self.primary = 0;
            return Ok(Outcome {
                loc: Loc { branch: 0, seq: 0 },
                decision: Decision::Genesis,
            });
        };
        let Some(pb) = self.branch(parent.branch) else {
            return Err(RuleError::UnknownBranch {
                hash: node.hash.clone(),
                branch: parent.branch,
            });
        };
        if node.seq != parent.seq + 1 {
            return Err(RuleError::Seq {
                hash: node.hash.clone(),
                parent: parent.seq,
                found: node.seq,
            });
        }
        if pb.tip.hash == node.prev && pb.tip.seq == parent.seq {
            self.extend(parent.branch, nref, node, observed, policy)
        } else {
            let Some(sibling) = sibling else {
                return Err(RuleError::MissingSibling {
                    hash: node.hash.clone(),
                });
            };
            self.fork(parent, sibling.clone(), nref, node, observed, policy)
        }
    }

    fn extend(
        &mut self,
        id: BranchId,
        nref: EntryRef,
        node: &Node,
        observed: Time,
        policy: &Policy,
    ) -> Result<Outcome, RuleError> {
        let loc = Loc {
            branch: id,
            seq: node.seq,
        };
        let idx = id as usize;
        // The common case (extending the primary, or a disabled branch) needs no snapshot
        // of the state: decide it before cloning anything.
        match &self.branches[idx].state {
            BranchState::Primary => {
                self.branches[idx].tip = nref;
                self.branches[idx].entries += 1;
                return Ok(Outcome {
                    loc,
                    decision: Decision::Extended,
                });
            }
            BranchState::Disabled {
                reason, verdict, ..
            } => {
                let decision = Decision::StillDisabled {
                    reason: *reason,
                    verdict: *verdict,
                };
                self.branches[idx].tip = nref;
                self.branches[idx].entries += 1;
                return Ok(Outcome { loc, decision });
            }
            _ => {}
        }
        let before = self.clone();
        self.branches[idx].tip = nref.clone();
        self.branches[idx].entries += 1;
        let window = policy.window(&self.instance, observed).cloned();
        let decision = match self.branches[idx].state.clone() {
            BranchState::Primary => Decision::Extended,
            BranchState::Disabled {
                reason, verdict, ..
            } => Decision::StillDisabled { reason, verdict },
            BranchState::Concurrent { .. } if window.is_some() => {
                let w = window.expect("checked");
                Decision::Tolerated(Tolerance::AllowConcurrent {
                    until: w.until,
                    reason: w.reason,
                })
            }
            BranchState::Concurrent { .. } => {
                // Rule 5, after the window: judged like a fork of its own.
                self.judge_start(id, &nref, observed, policy, Rule::WindowEnded, &before)
            }
            BranchState::Superseded {
                since,
                by,
                by_at,
                boot_id,
                first_seen_after,
            } => {
                let tol = policy.thresholds.clock_tolerance;
                let first = first_seen_after.unwrap_or(observed);
                if let BranchState::Superseded {
                    first_seen_after: f,
                    ..
                } = &mut self.branches[idx].state
                {
                    *f = Some(first);
                }
                let late = node.at <= by_at + tol && observed <= first + tol;
                let _ = since;
                if let Some(w) = window {
                    self.branches[idx].state = BranchState::Concurrent {
                        since: observed,
                        until: w.until,
                    };
                    Decision::Tolerated(Tolerance::AllowConcurrent {
                        until: w.until,
                        reason: w.reason,
                    })
                } else if late {
                    Decision::Tolerated(Tolerance::LateHistory)
                } else {
                    let rebooted = node.is_boot() || node.boot_id != boot_id;
                    self.rule3(id, by, nref, rebooted, observed, &before)
                }
            }
        };
        Ok(Outcome { loc, decision })
    }

    /// Rule 3: superseded branch `id` wrote `nref` after it was superseded by `by`.
    fn rule3(
        &mut self,
        id: BranchId,
        by: BranchId,
        nref: EntryRef,
        rebooted: bool,
        observed: Time,
        before: &InstanceState,
    ) -> Decision {
        let number = self.next_verdict();
        let primary = self.primary;
        let (kind, rule, disabled): (Kind, Rule, Vec<BranchId>) = if rebooted {
            let live: Vec<BranchId> = self
                .branches
                .iter()
                .filter(|b| !b.state.is_disabled())
                .map(|b| b.id)
                .collect();
            (Kind::Switching, Rule::Rebooted, live)
        } else {
            (Kind::ConcurrentDuplicate, Rule::Resumed, vec![id])
        };
        for d in &disabled {
            self.branches[*d as usize].state = BranchState::Disabled {
                reason: kind,
                verdict: number,
                since: observed,
            };
        }
        let witness = self.branch(by).map(|b| b.first.clone());
        let fork = self.fork_between(id, by);
        let mut involved = vec![primary, id];
        if by != primary {
            involved.push(by);
        }
        for d in &disabled {
            if !involved.contains(d) {
                involved.push(*d);
            }
        }
        let explanation = if rebooted {
            format!(
                "Branch {id} had been superseded by branch {by} at {}, then booted again and wrote entry seq {} at {} (observed {}): the owner switched back to the old copy. Both copies ran after they diverged, one after the other; every branch of the instance is disabled.",
                time::format_at(
                    before
                        .branch(id)
                        .and_then(|b| match &b.state {
                            BranchState::Superseded { since, .. } => Some(*since),
                            _ => None,
                        })
                        .unwrap_or(observed)
                ),
                nref.seq,
                time::format_at(nref.at),
                time::format_at(nref.observed),
            )
        } else {
            format!(
                "Branch {id} had been superseded by branch {by}, yet kept running without a reboot and wrote entry seq {} at {} (observed {}): two copies ran at the same time. Branch {id} is disabled; branch {primary} continues.",
                nref.seq,
                time::format_at(nref.at),
                time::format_at(nref.observed),
            )
        };
        Decision::Verdict(Box::new(Verdict {
            number,
            kind,
            rule,
            observed,
            primary,
            superseded: vec![],
            review: false,
            fork,
            witness,
            branches: self.summaries(&involved, before),
            disabled,
            trigger: nref,
            explanation,
        }))
    }

    fn fork(
        &mut self,
        parent: Loc,
        sibling: EntryRef,
        nref: EntryRef,
        node: &Node,
        observed: Time,
        policy: &Policy,
    ) -> Result<Outcome, RuleError> {
        let before = self.clone();
        let id = self.branches.len() as BranchId;
        let point = ForkPoint {
            branch: parent.branch,
            seq: parent.seq,
            hash: node.prev.clone(),
        };
        let lineage = self.lineage(parent);
        let all_disabled = lineage
            .iter()
            .all(|b| self.branch(*b).is_some_and(|br| br.state.is_disabled()));
        let inherited = lineage.iter().find_map(|b| match &self.branch(*b)?.state {
            BranchState::Disabled {
                reason, verdict, ..
            } => Some((*reason, *verdict)),
            _ => None,
        });
        self.branches.push(Branch {
            id,
            fork: Some(point.clone()),
            sibling: Some(sibling.clone()),
            first: nref.clone(),
            tip: nref.clone(),
            entries: 1,
            state: BranchState::Concurrent {
                since: observed,
                until: observed,
            },
        });
        let loc = Loc {
            branch: id,
            seq: node.seq,
        };
        if all_disabled && let Some((reason, verdict)) = inherited {
            self.branches[id as usize].state = BranchState::Disabled {
                reason,
                verdict,
                since: observed,
            };
            return Ok(Outcome {
                loc,
                decision: Decision::StillDisabled { reason, verdict },
            });
        }
        if let Some(w) = policy.window(&self.instance, observed) {
            self.branches[id as usize].state = BranchState::Concurrent {
                since: observed,
                until: w.until,
            };
            return Ok(Outcome {
                loc,
                decision: Decision::Tolerated(Tolerance::AllowConcurrent {
                    until: w.until,
                    reason: w.reason.clone(),
                }),
            });
        }
        let mut decision = self.judge_start(id, &nref, observed, policy, Rule::Restore, &before);
        if let Decision::Verdict(v) = &mut decision {
            v.fork = Some(Fork {
                point,
                children: [sibling, nref],
            });
        }
        Ok(Outcome { loc, decision })
    }

    /// Rule 2 (and rule 5 after a window): branch `id` started (or resumed) with `nref`.
    /// A restore when no other live branch has a later entry (beyond the tolerance);
    /// otherwise both ran after they diverged and `id` is disabled.
    fn judge_start(
        &mut self,
        id: BranchId,
        nref: &EntryRef,
        observed: Time,
        policy: &Policy,
        restore_rule: Rule,
        before: &InstanceState,
    ) -> Decision {
        let th = policy.thresholds;
        let later = self
            .branches
            .iter()
            .filter(|b| b.id != id && !b.state.is_disabled())
            .filter(|b| b.tip.at > nref.at + th.clock_tolerance)
            .max_by_key(|b| b.tip.at)
            .map(|b| (b.id, b.tip.clone()));
        let number = self.next_verdict();
        let old_primary = self.primary;
        match later {
            None => {
                let mut superseded = Vec::new();
                for b in self.branches.iter_mut() {
                    if b.id == id {
                        b.state = BranchState::Primary;
                    } else if matches!(
                        b.state,
                        BranchState::Primary | BranchState::Concurrent { .. }
                    ) {
                        b.state = BranchState::Superseded {
                            since: observed,
                            by: id,
                            by_at: nref.at,
                            boot_id: b.tip.boot_id.clone(),
                            first_seen_after: None,
                        };
                        superseded.push(b.id);
                    }
                }
                self.primary = id;
                self.restores.push(time::format_at(observed));
                let count = restore_counts(&self.restores, observed, th.restore_window);
                let review = count > th.restore_warn;
                let witness = self.branch(old_primary).map(|b| b.tip.clone());
                let mut involved = vec![id];
                involved.extend(superseded.iter().copied());
                let explanation = format!(
                    "Branch {id} started at {} (entry seq {}), after the last entry of every other live copy{}: a restore from backup (or a snapshot revert). It becomes the primary branch; {} superseded. Allowed{}.",
                    time::format_at(nref.at),
                    nref.seq,
                    witness
                        .as_ref()
                        .map(|w| format!(" (latest: seq {} at {})", w.seq, time::format_at(w.at)))
                        .unwrap_or_default(),
                    if superseded.is_empty() {
                        "nothing is".to_string()
                    } else {
                        format!(
                            "branch {} is",
                            superseded
                                .iter()
                                .map(|b| b.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                    if review {
                        format!(
                            "; {count} restores within {} days exceeds {}: reported for review",
                            th.restore_window.num_days(),
                            th.restore_warn
                        )
                    } else {
                        String::new()
                    }
                );
                Decision::Verdict(Box::new(Verdict {
                    number,
                    kind: Kind::Restored,
                    rule: restore_rule,
                    observed,
                    primary: id,
                    disabled: vec![],
                    branches: self.summaries(&involved, before),
                    superseded,
                    review,
                    fork: None,
                    trigger: nref.clone(),
                    witness,
                    explanation,
                }))
            }
            Some((other, tip)) => {
                self.branches[id as usize].state = BranchState::Disabled {
                    reason: Kind::ConcurrentDuplicate,
                    verdict: number,
                    since: observed,
                };
                let rule = if restore_rule == Rule::WindowEnded {
                    Rule::WindowEnded
                } else {
                    Rule::Overlap
                };
                let mut involved = vec![self.primary, id];
                if !involved.contains(&other) {
                    involved.push(other);
                }
                let explanation = format!(
                    "Branch {id} started at {} (entry seq {}), but branch {other} kept writing afterwards (entry seq {} at {}): both copies ran after they diverged. Branch {id}, the copy that reported second, is disabled; branch {} continues.",
                    time::format_at(nref.at),
                    nref.seq,
                    tip.seq,
                    time::format_at(tip.at),
                    self.primary,
                );
                Decision::Verdict(Box::new(Verdict {
                    number,
                    kind: Kind::ConcurrentDuplicate,
                    rule,
                    observed,
                    primary: self.primary,
                    disabled: vec![id],
                    superseded: vec![],
                    review: false,
                    fork: None,
                    trigger: nref.clone(),
                    witness: Some(tip),
                    branches: self.summaries(&involved, before),
                    explanation,
                }))
            }
        }
    }

    /// Operator override: make `id` the primary branch (re-enabling it if disabled). The
    /// previous primary, unless disabled, is superseded at `at`.
    pub fn set_primary(&mut self, id: BranchId, at: Time) -> Result<(), RuleError> {
        if self.branch(id).is_none() {
            return Err(RuleError::UnknownBranch {
                hash: String::new(),
                branch: id,
            });
        }
        if id == self.primary {
            self.branches[id as usize].state = BranchState::Primary;
            return Ok(());
        }
        let old = self.primary as usize;
        if let Some(b) = self.branches.get_mut(old)
            && !b.state.is_disabled()
        {
            b.state = BranchState::Superseded {
                since: at,
                by: id,
                by_at: at,
                boot_id: b.tip.boot_id.clone(),
                first_seen_after: None,
            };
        }
        self.branches[id as usize].state = BranchState::Primary;
        self.primary = id;
        Ok(())
    }

    /// Operator override: lift every disabled state. The primary branch becomes primary
    /// again; other disabled branches become superseded at `at` (so a copy that keeps
    /// running is judged again by rule 3). Returns the branches re-enabled.
    pub fn reinstate(&mut self, at: Time) -> Vec<BranchId> {
        let primary = self.primary;
        let mut out = Vec::new();
        for b in self.branches.iter_mut() {
            if b.state.is_disabled() {
                out.push(b.id);
                b.state = if b.id == primary {
                    BranchState::Primary
                } else {
                    BranchState::Superseded {
                        since: at,
                        by: primary,
                        by_at: at,
                        boot_id: b.tip.boot_id.clone(),
                        first_seen_after: None,
                    }
                };
            }
        }
        out
    }

    /// The branch whose first or tip entry is `hash`, if any.
    pub fn branch_by_hash(&self, hash: &str) -> Option<BranchId> {
        self.branches
            .iter()
            .find(|b| b.tip.hash == hash || b.first.hash == hash)
            .map(|b| b.id)
    }
}
