//! The duplicate-start guard's rules, as a pure function: the domain about to start, the
//! domains running here, and the appliance states its disks hold in; findings out.
//!
//! A writable disk of the starting domain X is refused when
//! 1. it is a file (or source) another running domain has open; or
//! 2. its content is an *appliance state*: a content root some domain reached after
//!    running (recorded when that domain's disk was found at rest after a stop, and
//!    different from what the run started from, or when a backup of the domain was
//!    manifested with `vmledger backup manifest`, even while it ran), and another domain
//!    that holds this state runs now: the domain that reached it, or one whose current run
//!    started from it. That is a copy of a live appliance.
//!
//! A pristine image (a template no domain ever ran) is no appliance's state, so domains
//! deployed from one template all start. When the state's domain is not running, the
//! start is allowed with a warning: a *restore* when that domain has run since (starting
//! this copy makes it the live one; the other must not run again), a *takeover* when it is
//! that domain's latest state. X's own older state is a restore from backup: noted.
//!
//! No I/O, no clock: [`super::engine`] gathers the inputs and applies the policy.

use serde::Serialize;

pub use super::state::RootSource;

/// A guarded disk of the domain about to start.
#[derive(Debug, Clone, Default)]
pub struct CandidateDisk {
    pub target: String,
    pub path: Option<String>,
    /// `dev:ino` / `block:MAJOR:MINOR`.
    pub id: Option<String>,
    pub source: Option<String>,
    pub root: Option<String>,
}

/// The domain about to start.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub instance: String,
    pub name: String,
    pub disks: Vec<CandidateDisk>,
}

/// A disk of a running domain.
#[derive(Debug, Clone, Default)]
pub struct RunningDisk {
    pub target: String,
    pub path: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    pub start_root: Option<String>,
}

/// A domain running on this host.
#[derive(Debug, Clone, Default)]
pub struct RunningDomain {
    pub instance: String,
    pub uuid: String,
    pub name: String,
    pub since: String,
    pub disks: Vec<RunningDisk>,
}

/// A state a domain reached after running, found among the candidate's roots.
#[derive(Debug, Clone, Default)]
pub struct ReachedState {
    pub root: String,
    pub instance: String,
    pub uuid: String,
    pub name: String,
    /// The entry that recorded it (`disk_at_rest` or `backup_manifest`), and when the run
    /// ended (for a backup: when its manifest was made).
    pub seq: u64,
    pub stopped_at: String,
    pub source: RootSource,
    /// Starts of that domain recorded after `seq` (plus one when the state was already
    /// superseded when recorded), and the last one's time when known.
    pub runs_since: u64,
    pub last_start: Option<String>,
}

impl ReachedState {
    /// "reached when it stopped at T" / "had when a backup of it was made at T".
    fn when(&self) -> String {
        match self.source {
            RootSource::AtRest => format!("reached when it stopped at {}", self.stopped_at),
            RootSource::Backup => format!(
                "had when a backup of it was manifested at {}",
                self.stopped_at
            ),
        }
    }

    /// " (last started T)" when known.
    fn last_start_words(&self) -> String {
        self.last_start
            .as_deref()
            .map(|t| format!(" (last started {t})"))
            .unwrap_or_default()
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The disk is open by another running domain.
    OpenElsewhere,
    /// The disk holds an appliance state another running domain holds too.
    DuplicateOfRunning,
    /// The state's domain is not running and has run since: starting this is a restore.
    Restore,
    /// The state is another, stopped domain's latest: this domain takes it over.
    Takeover,
    /// The domain's own older state (a restore from its own backup).
    OwnRestore,
}

/// The other domain a finding concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Other {
    pub instance: String,
    pub uuid: String,
    pub name: String,
}

/// The appliance state a finding concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct State {
    pub content_root: String,
    /// The other (or own) domain's entry that recorded it (`disk_at_rest`, or
    /// `backup_manifest`).
    pub seq: u64,
    pub stopped_at: String,
    /// `at_rest` or `backup`.
    pub source: RootSource,
}

/// One thing the guard found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// True when the rules refuse the start for it.
    pub refuse: bool,
    /// The disk's target (`vda`).
    pub disk: String,
    pub other: Option<Other>,
    pub state: Option<State>,
    /// Plain words for the admin.
    pub message: String,
}

fn other(r: &RunningDomain) -> Option<Other> {
    Some(Other {
        instance: r.instance.clone(),
        uuid: r.uuid.clone(),
        name: r.name.clone(),
    })
}

fn disk_words(d: &CandidateDisk) -> String {
    match d.path.as_deref().or(d.source.as_deref()) {
        Some(p) => format!("disk {} ({p})", d.target),
        None => format!("disk {}", d.target),
    }
}

/// Apply the rules. Findings come in disk order, refusals first within a disk.
pub fn decide(c: &Candidate, running: &[RunningDomain], reached: &[ReachedState]) -> Vec<Finding> {
    let mut out = Vec::new();
    let others: Vec<&RunningDomain> = running
        .iter()
        .filter(|r| r.instance != c.instance)
        .collect();
    for d in &c.disks {
        // 1. Open by another running domain.
        for r in &others {
            let hit = r.disks.iter().any(|o| {
                (d.id.is_some() && o.id == d.id)
                    || (d.path.is_some() && o.path == d.path)
                    || (d.path.is_none() && d.source.is_some() && o.source == d.source)
            });
            if hit {
                out.push(Finding {
                    kind: FindingKind::OpenElsewhere,
                    refuse: true,
                    disk: d.target.clone(),
                    other: other(r),
                    state: None,
                    message: format!(
                        "{} is open by domain {} ({}), which is running: two domains on one disk corrupt it and run one appliance twice; stop {} first",
                        disk_words(d),
                        r.name,
                        r.uuid,
                        r.name
                    ),
                });
            }
        }
        // 2. Appliance states.
        let Some(root) = &d.root else { continue };
        let states: Vec<&ReachedState> = reached.iter().filter(|s| &s.root == root).collect();
        if states.is_empty() {
            continue; // pristine or never seen at rest: no appliance's state
        }
        let mut duplicate = false;
        for r in &others {
            let reached_by_r = states.iter().find(|s| s.instance == r.instance);
            let started_from = r.disks.iter().any(|o| o.start_root.as_ref() == Some(root));
            if reached_by_r.is_none() && !started_from {
                continue;
            }
            duplicate = true;
            let s = reached_by_r.copied().or_else(|| states.first().copied());
            let why = match reached_by_r {
                Some(s) => format!("holds the state domain {} {}", r.name, s.when()),
                None => match s {
                    Some(s) => format!(
                        "holds the state domain {} {}, which domain {} started from",
                        s.name,
                        s.when(),
                        r.name
                    ),
                    None => format!("holds the state domain {} started from", r.name),
                },
            };
            out.push(Finding {
                kind: FindingKind::DuplicateOfRunning,
                refuse: true,
                disk: d.target.clone(),
                other: other(r),
                state: s.map(state_of),
                message: format!(
                    "{} {why}, and {} ({}) is running now: this is a copy of a live appliance, and running both gets one of them disabled; stop {} first if this copy is to replace it (a restore)",
                    disk_words(d),
                    r.name,
                    r.uuid,
                    r.name
                ),
            });
        }
        if duplicate {
            continue;
        }
        for s in &states {
            if s.instance == c.instance {
                if s.runs_since > 0 {
                    out.push(Finding {
                        kind: FindingKind::OwnRestore,
                        refuse: false,
                        disk: d.target.clone(),
                        other: None,
                        state: Some(state_of(s)),
                        message: format!(
                            "{} holds the state this domain {}, and it has run since: this start goes back to that older state (a restore from backup)",
                            disk_words(d),
                            s.when()
                        ),
                    });
                }
                continue;
            }
            let (kind, message) = if s.runs_since > 0 {
                (
                    FindingKind::Restore,
                    format!(
                        "{} holds the state domain {} ({}) {}; {} has run since{} and is not running: starting this copy is a restore and makes it the live appliance; {} must not run again on its current disk",
                        disk_words(d),
                        s.name,
                        s.uuid,
                        s.when(),
                        s.name,
                        s.last_start_words(),
                        s.name
                    ),
                )
            } else {
                (
                    FindingKind::Takeover,
                    format!(
                        "{} holds the latest state of domain {} ({}), which stopped at {} and is not running: starting this domain makes it that appliance; {} must not run again on its own copy",
                        disk_words(d),
                        s.name,
                        s.uuid,
                        s.stopped_at,
                        s.name
                    ),
                )
            };
            out.push(Finding {
                kind,
                refuse: false,
                disk: d.target.clone(),
                other: Some(Other {
                    instance: s.instance.clone(),
                    uuid: s.uuid.clone(),
                    name: s.name.clone(),
                }),
                state: Some(state_of(s)),
                message,
            });
        }
    }
    out
}

fn state_of(s: &ReachedState) -> State {
    State {
        content_root: s.root.clone(),
        seq: s.seq,
        stopped_at: s.stopped_at.clone(),
        source: s.source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const T: &str = "7777777777777777777777777777777777777777777777777777777777777777";

    fn cand(name: &str, root: &str, id: &str) -> Candidate {
        Candidate {
            instance: format!("{name:0>32}"),
            name: name.into(),
            disks: vec![CandidateDisk {
                target: "vda".into(),
                path: Some(format!("/img/{id}")),
                id: Some(id.into()),
                source: Some(format!("/img/{id}")),
                root: Some(root.into()),
            }],
        }
    }

    fn running(name: &str, id: &str, start_root: &str) -> RunningDomain {
        RunningDomain {
            instance: format!("{name:0>32}"),
            uuid: format!("uuid-{name}"),
            name: name.into(),
            since: "t".into(),
            disks: vec![RunningDisk {
                target: "vda".into(),
                path: Some(format!("/img/{id}")),
                id: Some(id.into()),
                source: Some(format!("/img/{id}")),
                start_root: Some(start_root.into()),
            }],
        }
    }

    fn reached(name: &str, root: &str, runs_since: u64) -> ReachedState {
        ReachedState {
            root: root.into(),
            instance: format!("{name:0>32}"),
            uuid: format!("uuid-{name}"),
            name: name.into(),
            seq: 5,
            stopped_at: "2026-12-04T10:00:00.000Z".into(),
            source: RootSource::AtRest,
            runs_since,
            last_start: Some("2026-12-04T11:00:00.000Z".into()),
        }
    }

    /// A state recorded by `backup manifest` while the domain ran (`runs_since` counts
    /// that run), with no start recorded since.
    fn backed_up_while_running(name: &str, root: &str) -> ReachedState {
        ReachedState {
            source: RootSource::Backup,
            runs_since: 1,
            last_start: None,
            ..reached(name, root, 1)
        }
    }

    fn kinds(f: &[Finding]) -> Vec<(FindingKind, bool)> {
        f.iter().map(|f| (f.kind, f.refuse)).collect()
    }

    #[test]
    fn a_copy_of_a_running_appliance_is_refused() {
        let f = decide(
            &cand("b", R1, "2:2"),
            &[running("a", "1:1", "9999")],
            &[reached("a", R1, 1)],
        );
        assert_eq!(kinds(&f), vec![(FindingKind::DuplicateOfRunning, true)]);
        assert!(f[0].message.contains("is running now"), "{}", f[0].message);
        assert_eq!(f[0].other.as_ref().unwrap().name, "a");
    }

    #[test]
    fn the_original_is_refused_while_a_copy_of_its_state_runs() {
        // b started from a's reached state; now a itself wants to start on that state.
        let f = decide(
            &cand("a", R1, "1:1"),
            &[running("b", "2:2", R1)],
            &[reached("a", R1, 0)],
        );
        assert_eq!(kinds(&f), vec![(FindingKind::DuplicateOfRunning, true)]);
    }

    #[test]
    fn the_same_file_open_elsewhere_is_refused() {
        let f = decide(&cand("b", T, "1:1"), &[running("a", "1:1", T)], &[]);
        assert_eq!(kinds(&f), vec![(FindingKind::OpenElsewhere, true)]);
    }

    #[test]
    fn pristine_templates_start_side_by_side() {
        let f = decide(&cand("c2", T, "3:3"), &[running("c1", "2:2", T)], &[]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn restore_and_takeover_warn() {
        let f = decide(&cand("b", R1, "2:2"), &[], &[reached("a", R1, 2)]);
        assert_eq!(kinds(&f), vec![(FindingKind::Restore, false)]);
        assert!(f[0].message.contains("must not run again"));
        let f = decide(&cand("b", R1, "2:2"), &[], &[reached("a", R1, 0)]);
        assert_eq!(kinds(&f), vec![(FindingKind::Takeover, false)]);
        // Its own older state: a note, never a refusal.
        let f = decide(&cand("a", R1, "1:1"), &[], &[reached("a", R1, 3)]);
        assert_eq!(kinds(&f), vec![(FindingKind::OwnRestore, false)]);
        // Its own latest state: nothing to say.
        assert!(decide(&cand("a", R1, "1:1"), &[], &[reached("a", R1, 0)]).is_empty());
    }

    #[test]
    fn a_restored_backup_taken_while_the_original_ran() {
        // The original runs: refused, in words that say it was a backup.
        let f = decide(
            &cand("b", R1, "2:2"),
            &[running("a", "1:1", T)],
            &[backed_up_while_running("a", R1)],
        );
        assert_eq!(kinds(&f), vec![(FindingKind::DuplicateOfRunning, true)]);
        assert!(f[0].message.contains("backup"), "{}", f[0].message);
        assert_eq!(f[0].state.as_ref().unwrap().source, RootSource::Backup);
        // The original stopped: a restore (it ran on past the backup), with a warning.
        let f = decide(
            &cand("b", R1, "2:2"),
            &[],
            &[backed_up_while_running("a", R1)],
        );
        assert_eq!(kinds(&f), vec![(FindingKind::Restore, false)]);
        assert!(
            f[0].message.contains("has run since and is not running"),
            "{}",
            f[0].message
        );
        // The original itself restored from its backup: a note.
        let f = decide(
            &cand("a", R1, "1:1"),
            &[],
            &[backed_up_while_running("a", R1)],
        );
        assert_eq!(kinds(&f), vec![(FindingKind::OwnRestore, false)]);
    }

    #[test]
    fn its_own_running_marker_is_not_another_domain() {
        let f = decide(
            &cand("a", R1, "1:1"),
            &[running("a", "1:1", R1)],
            &[reached("a", R1, 0)],
        );
        assert!(f.is_empty(), "{f:?}");
    }
}
