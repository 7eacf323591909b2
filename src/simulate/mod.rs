//! The fleet simulator: writes what a vendor would collect from a fleet of appliances,
//! real signed ledgers in the entry format of [`crate::ledger::entry`] exported as
//! `vmledger-export/v1` bundles, together with a ground-truth label file
//! (`vmledger-simulate-labels/v1`) and the operator's declared windows as a cross-check
//! policy file. Deterministic for a seed: every appliance has its own random stream and
//! keys derived from the seed, so the output does not depend on thread scheduling.
//!
//! Legitimate behaviour on every appliance: daily check-ins with jitter, reboots (some
//! in pairs, some with the clock coming up behind, which records `clock_anomaly`),
//! network outages of hours to days (`checkin_failed`, then `countdown_started`,
//! `locked`, `unlocked`), NTP clock steps of minutes, hardware changes at reboots, and
//! overlapping or duplicated exports. Scenarios per appliance ([`Scenario`]): one restore
//! from backup or a snapshot revert, an HA pair or a DR test declared by the operator,
//! a reinstall; violations: clones running concurrently, a clone that runs offline for
//! weeks and returns, a copy kept powered off for weeks and booted again, owners
//! switching between copies every few days, a second installation of the serial running
//! beside the first or alternating with it, and tampered exports.
//!
//! Ambiguity is avoided on purpose: in the concurrent scenarios neither copy reboots in
//! the first days after the second copy starts (a reboot as the old copy's first act
//! after another took over is what switching looks like in a ledger).
//!
//! Library code: writes only under the output directory, never prints.

mod score;

use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use score::{Confusion, Score, ScoreError, score};

use crate::crosscheck::Verdict;
use crate::crosscheck::policy::{POLICY_FORMAT, PolicyDoc, WindowDoc};
use crate::keys::SigningKey;
use crate::ledger::entry::{BODY_VERSION, Body, Entry, GENESIS_PREV};
use crate::ledger::export::{Bundle, EXPORT_FORMAT};
use crate::rules::Time;
use crate::time;

/// The label file's `format`.
pub const LABELS_FORMAT: &str = "vmledger-simulate-labels/v1";

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// What happens to one appliance (one serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Normal,
    Restore,
    SnapshotRevert,
    HaPair,
    DrTest,
    Reinstall,
    ConcurrentClone,
    OfflineCloneReturns,
    DormantCloneReturns,
    Switching,
    ConcurrentInstall,
    SwitchingInstalls,
    Tampered,
}

impl Scenario {
    /// Every scenario, in the order a fleet's first appliances get them.
    pub const ALL: [Scenario; 13] = [
        Scenario::Normal,
        Scenario::Restore,
        Scenario::SnapshotRevert,
        Scenario::HaPair,
        Scenario::DrTest,
        Scenario::Reinstall,
        Scenario::ConcurrentClone,
        Scenario::OfflineCloneReturns,
        Scenario::DormantCloneReturns,
        Scenario::Switching,
        Scenario::ConcurrentInstall,
        Scenario::SwitchingInstalls,
        Scenario::Tampered,
    ];

    /// Share per thousand appliances.
    fn weight(self) -> u32 {
        match self {
            Scenario::Normal => 875,
            Scenario::Restore => 30,
            Scenario::SnapshotRevert
            | Scenario::HaPair
            | Scenario::DrTest
            | Scenario::Reinstall
            | Scenario::ConcurrentClone
            | Scenario::Switching => 10,
            Scenario::OfflineCloneReturns
            | Scenario::DormantCloneReturns
            | Scenario::ConcurrentInstall
            | Scenario::SwitchingInstalls
            | Scenario::Tampered => 5,
        }
    }

    /// True for the scenarios that break the licensing rules (or the ledger).
    pub fn violation(self) -> bool {
        matches!(
            self,
            Scenario::ConcurrentClone
                | Scenario::OfflineCloneReturns
                | Scenario::DormantCloneReturns
                | Scenario::Switching
                | Scenario::ConcurrentInstall
                | Scenario::SwitchingInstalls
                | Scenario::Tampered
        )
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Appliances (serials); a reinstall adds a second instance id.
    pub appliances: u32,
    pub days: u32,
    pub seed: u64,
    pub start: Time,
    pub out: PathBuf,
}

/// Legitimate events an instance's ledger went through (for the label file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behaviours {
    /// Times a copy of the instance started running (genesis, restore, alternation).
    pub runs: u32,
    pub entries: u64,
    pub boots: u64,
    pub checkins: u64,
    pub checkins_failed: u64,
    pub outages: u32,
    pub longest_outage_hours: i64,
    pub clock_steps: u32,
    pub clock_anomalies: u64,
    pub hardware_changes: u32,
    pub exports: u32,
    pub duplicated_exports: u32,
}

/// The truth about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLabel {
    pub instance: String,
    pub serial: String,
    pub scenario: Scenario,
    pub expected: Verdict,
    pub behaviours: Behaviours,
}

/// The truth about one serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialLabel {
    pub serial: String,
    pub scenario: Scenario,
    pub expected: Verdict,
}

/// The label file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub format: String,
    pub seed: u64,
    pub appliances: u32,
    pub days: u32,
    pub start: String,
    pub end: String,
    /// Relative to the label file.
    pub exports: String,
    pub policy: String,
    pub scenarios: BTreeMap<Scenario, u32>,
    pub files: u64,
    pub entries: u64,
    pub instances: Vec<InstanceLabel>,
    pub serials: Vec<SerialLabel>,
}

/// What the simulator cannot do.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "{path} is not empty; choose a new directory for --out (the simulator never overwrites)"
    )]
    NotEmpty { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("--{what} must be at least {min}")]
    TooSmall { what: &'static str, min: u32 },
    #[error("cannot seal a simulated entry: {0}")]
    Seal(String),
}

fn derive(seed: u64, what: &str, a: u64, b: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vmledger-simulate/");
    h.update(what.as_bytes());
    h.update(seed.to_le_bytes());
    h.update(a.to_le_bytes());
    h.update(b.to_le_bytes());
    h.finalize().into()
}

fn ms(t: Time) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> String {
    time::format_at(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

/// Run the simulation: write `exports/`, `policy.json` and `labels.json` under
/// `opts.out`. Appliances are simulated in parallel; the output is the same for a seed.
pub fn run(opts: &Options) -> Result<Labels, SimError> {
    use rayon::prelude::*;
    if opts.appliances < 1 {
        return Err(SimError::TooSmall {
            what: "instances",
            min: 1,
        });
    }
    if opts.days < 14 {
        return Err(SimError::TooSmall {
            what: "days",
            min: 14,
        });
    }
    let out = &opts.out;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(SimError::NotEmpty {
            path: out.display().to_string(),
        });
    }
    let werr = |p: &Path| {
        let path = p.display().to_string();
        move |source| SimError::Write { path, source }
    };
    std::fs::create_dir_all(out.join("exports")).map_err(werr(out))?;
    let results: Vec<Result<Appliance, SimError>> = (0..opts.appliances)
        .into_par_iter()
        .map(|i| simulate_one(opts, i))
        .collect();
    let mut labels = Labels {
        format: LABELS_FORMAT.into(),
        seed: opts.seed,
        appliances: opts.appliances,
        days: opts.days,
        start: time::format_at(opts.start),
        end: at(ms(opts.start) + i64::from(opts.days) * DAY),
        exports: "exports".into(),
        policy: "policy.json".into(),
        scenarios: BTreeMap::new(),
        files: 0,
        entries: 0,
        instances: Vec::new(),
        serials: Vec::new(),
    };
    let mut windows = Vec::new();
    for r in results {
        let a = r?;
        *labels.scenarios.entry(a.scenario).or_default() += 1;
        labels.files += a.files;
        labels.entries += a
            .instances
            .iter()
            .map(|i| i.behaviours.entries)
            .sum::<u64>();
        let expected = a
            .instances
            .iter()
            .map(|i| i.expected)
            .max()
            .unwrap_or(Verdict::Clean);
        labels.serials.push(SerialLabel {
            serial: a.serial.clone(),
            scenario: a.scenario,
            expected,
        });
        labels.instances.extend(a.instances);
        windows.extend(a.windows);
    }
    let policy = PolicyDoc {
        format: POLICY_FORMAT.into(),
        clock_tolerance_minutes: None,
        restore_warn: None,
        restore_window_days: None,
        windows,
    };
    let write_json = |name: &str, v: &dyn erased::Json| -> Result<(), SimError> {
        let p = out.join(name);
        let mut bytes = v.to_vec();
        bytes.push(b'\n');
        std::fs::write(&p, bytes).map_err(werr(&p))
    };
    write_json("policy.json", &policy)?;
    write_json("labels.json", &labels)?;
    Ok(labels)
}

mod erased {
    /// Serialise either document without generics in the closure above.
    pub trait Json {
        fn to_vec(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).unwrap_or_default()
        }
    }
}

/// One appliance's results.
struct Appliance {
    serial: String,
    scenario: Scenario,
    instances: Vec<InstanceLabel>,
    windows: Vec<WindowDoc>,
    files: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Body,
    TipSignature,
    DropEntry,
    ForeignKeyBundle,
}

#[derive(Debug, Clone)]
enum Ev {
    Genesis(usize),
    Boot(usize),
    Resume(usize),
    Checkin(usize, u64),
    Stop(usize),
    Snapshot(usize, usize),
    ClockStep(usize, i64),
    Export(usize, ExportKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportKind {
    Final,
    /// A full export taken while the copy runs (overlaps the final one).
    Midway,
    /// Entries since the previous export (`ledger export --since`).
    Tail,
    /// The final export once more, later (identical entries).
    Duplicate,
}

/// One copy of an instance (a VM image).
#[derive(Clone)]
struct Copy {
    inst: usize,
    entries: Vec<Entry>,
    head_ms: i64,
    offset_ms: i64,
    rtc_offset_ms: i64,
    rtc_until: i64,
    boot_id: String,
    boot_ms: i64,
    running: bool,
    run_gen: u64,
    anomaly_open: bool,
    deadline: Option<i64>,
    countdown: bool,
    locked: bool,
    hw: u32,
    hw_digest_gen: u32,
    exported_seq: Option<u64>,
    exports: u32,
    offline: Vec<(i64, i64)>,
    no_reboot: Vec<(i64, i64)>,
    tamper: Option<Tamper>,
}

struct Install {
    id: String,
    key: SigningKey,
    stats: Behaviours,
}

struct Sim<'a> {
    opts: &'a Options,
    index: u32,
    rng: ChaCha8Rng,
    serial: String,
    end: i64,
    installs: Vec<Install>,
    copies: Vec<Copy>,
    queue: BinaryHeap<std::cmp::Reverse<(i64, u64)>>,
    events: Vec<Ev>,
    outages: Vec<(i64, i64)>,
    files: u64,
    dir: PathBuf,
}

fn simulate_one(opts: &Options, index: u32) -> Result<Appliance, SimError> {
    let mut rng = ChaCha8Rng::from_seed(derive(opts.seed, "appliance", u64::from(index), 0));
    let scenario = if (index as usize) < Scenario::ALL.len()
        && opts.appliances as usize >= 2 * Scenario::ALL.len()
    {
        Scenario::ALL[index as usize]
    } else {
        let mut pick = rng.random_range(0..1000u32);
        let mut chosen = Scenario::Normal;
        for s in Scenario::ALL {
            if pick < s.weight() {
                chosen = s;
                break;
            }
            pick -= s.weight();
        }
        chosen
    };
    let start = ms(opts.start);
    let end = start + i64::from(opts.days) * DAY;
    let mut sim = Sim {
        opts,
        index,
        rng,
        serial: format!("SN-{:08}", index + 1),
        end,
        installs: Vec::new(),
        copies: Vec::new(),
        queue: BinaryHeap::new(),
        events: Vec::new(),
        outages: Vec::new(),
        files: 0,
        dir: opts
            .out
            .join("exports")
            .join(format!("{:04}", index / 1000)),
    };
    std::fs::create_dir_all(&sim.dir).map_err(|source| SimError::Write {
        path: sim.dir.display().to_string(),
        source,
    })?;
    sim.noise_outages(start);
    let windows = sim.schedule(scenario, start);
    sim.process()?;
    let mut instances = Vec::new();
    for (k, inst) in sim.installs.iter().enumerate() {
        let expected = expected(scenario, k);
        let mut b = inst.stats.clone();
        b.outages = sim.outages.len() as u32;
        b.longest_outage_hours = sim
            .outages
            .iter()
            .map(|(a, z)| (z - a) / HOUR)
            .max()
            .unwrap_or(0);
        instances.push(InstanceLabel {
            instance: inst.id.clone(),
            serial: sim.serial.clone(),
            scenario,
            expected,
            behaviours: b,
        });
    }
    Ok(Appliance {
        serial: sim.serial,
        scenario,
        instances,
        windows,
        files: sim.files,
    })
}

/// The verdict the cross-check should give install `k` of a scenario.
fn expected(s: Scenario, k: usize) -> Verdict {
    match s {
        Scenario::Normal | Scenario::HaPair | Scenario::DrTest | Scenario::Reinstall => {
            Verdict::Clean
        }
        Scenario::Restore | Scenario::SnapshotRevert => Verdict::Restored,
        Scenario::ConcurrentClone
        | Scenario::OfflineCloneReturns
        | Scenario::DormantCloneReturns => Verdict::ConcurrentDuplicate,
        Scenario::Switching | Scenario::SwitchingInstalls => Verdict::Switching,
        // The older installation kept running after the newer one started.
        Scenario::ConcurrentInstall if k == 0 => Verdict::ConcurrentDuplicate,
        Scenario::ConcurrentInstall => Verdict::Clean,
        Scenario::Tampered => Verdict::Invalid,
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Sim<'_> {
    fn r(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn push(&mut self, t: i64, ev: Ev) {
        let n = self.events.len() as u64;
        self.events.push(ev);
        self.queue.push(std::cmp::Reverse((t, n)));
    }

    fn install(&mut self) -> usize {
        let k = self.installs.len() as u64;
        let seed = derive(self.opts.seed, "instance", u64::from(self.index), k);
        let key = SigningKey::from_seed(&derive(self.opts.seed, "key", u64::from(self.index), k));
        self.installs.push(Install {
            id: hex(&seed[..16]),
            key,
            stats: Behaviours::default(),
        });
        self.installs.len() - 1
    }

    fn new_copy(&mut self, inst: usize) -> usize {
        let offset = self.r(-10 * MIN, 10 * MIN);
        self.copies.push(Copy {
            inst,
            entries: Vec::new(),
            head_ms: 0,
            offset_ms: offset,
            rtc_offset_ms: 0,
            rtc_until: 0,
            boot_id: String::new(),
            boot_ms: 0,
            running: false,
            run_gen: 0,
            anomaly_open: false,
            deadline: None,
            countdown: false,
            locked: false,
            hw: 0,
            hw_digest_gen: 0,
            exported_seq: None,
            exports: 0,
            offline: Vec::new(),
            no_reboot: Vec::new(),
            tamper: None,
        });
        let c = self.copies.len() - 1;
        // NTP steps of minutes over the whole horizon.
        let start = ms(self.opts.start);
        let mut t = start;
        while t < self.end {
            t += self.r(5 * DAY, 30 * DAY);
            let step = self.r(-8 * MIN, 8 * MIN);
            self.push(t, Ev::ClockStep(c, step));
        }
        c
    }

    fn noise_outages(&mut self, start: i64) {
        let mut t = start + self.r(0, 20 * DAY);
        while t < self.end {
            let len = match self.r(0, 100) {
                0..70 => self.r(HOUR, 12 * HOUR),
                70..95 => self.r(DAY, 4 * DAY),
                _ => self.r(5 * DAY, 10 * DAY),
            };
            self.outages.push((t, t + len));
            t += len + self.r(10 * DAY, 40 * DAY);
        }
    }

    /// Copy `c` runs from `from` (genesis, boot or resume) until `until` (stopped before
    /// the end of the simulation) with reboots on the way, and exports when it stops.
    fn run_copy(&mut self, c: usize, from: i64, until: i64, how: Ev) {
        self.push(from, how);
        let mut t = from + self.r(DAY, 20 * DAY);
        while t < until - HOUR {
            let blocked = self.copies[c]
                .no_reboot
                .iter()
                .any(|(a, z)| *a - 2 * DAY <= t && t <= *z);
            if !blocked {
                self.push(t, Ev::Boot(c));
                if self.chance(0.25) {
                    // A second reboot minutes later (updates), sometimes with the clock
                    // coming up behind: a clock_anomaly entry.
                    let t2 = t + self.r(3 * MIN, 10 * MIN);
                    self.push(t2, Ev::Boot(c));
                }
            }
            t += self.r(2 * DAY, 25 * DAY);
        }
        if until < self.end {
            self.push(until, Ev::Stop(c));
        }
        let export_at = until.min(self.end) + self.r(HOUR, DAY);
        self.plan_exports(c, from, until.min(self.end), export_at);
    }

    fn plan_exports(&mut self, c: usize, from: i64, until: i64, final_at: i64) {
        if self.copies[c].tamper.is_some() {
            // One export only: another copy must not hide the tampering.
            self.push(final_at, Ev::Export(c, ExportKind::Final));
            return;
        }
        if self.chance(0.10) && until - from > 2 * DAY {
            let t = self.r(from + DAY, until - HOUR);
            self.push(t, Ev::Export(c, ExportKind::Midway));
        }
        if self.chance(0.05) {
            let mut t = from + 7 * DAY;
            while t < until {
                self.push(t, Ev::Export(c, ExportKind::Tail));
                t += 7 * DAY;
            }
        }
        self.push(final_at, Ev::Export(c, ExportKind::Final));
        if self.chance(0.03) {
            let t = final_at + self.r(HOUR, 2 * DAY);
            self.push(t, Ev::Export(c, ExportKind::Duplicate));
        }
    }

    /// Lay out the scenario's copies and runs. Returns the declared windows.
    fn schedule(&mut self, s: Scenario, start: i64) -> Vec<WindowDoc> {
        let end = self.end;
        let span = end - start;
        let t0 = start + self.r(0, 6 * HOUR);
        let a = self.install();
        let c0 = self.new_copy(a);
        let mut windows = Vec::new();
        match s {
            Scenario::Normal => self.run_copy(c0, t0, end, Ev::Genesis(c0)),
            Scenario::Tampered => {
                self.copies[c0].tamper = Some(match self.r(0, 4) {
                    0 => Tamper::Body,
                    1 => Tamper::TipSignature,
                    2 => Tamper::DropEntry,
                    _ => Tamper::ForeignKeyBundle,
                });
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
            }
            Scenario::Restore | Scenario::SnapshotRevert => {
                let b = t0 + self.r(3 * DAY, span / 2);
                let f = (b + self.r(DAY, (end - b) / 2)).min(end - 3 * DAY);
                let back = f + self.r(10 * MIN, 2 * DAY);
                self.run_copy(c0, t0, f, Ev::Genesis(c0));
                let c1 = self.new_copy(a);
                self.push(b, Ev::Snapshot(c0, c1));
                let how = if s == Scenario::Restore {
                    Ev::Boot(c1)
                } else {
                    Ev::Resume(c1)
                };
                self.run_copy(c1, back, end, how);
            }
            Scenario::HaPair => {
                let h = t0 + self.r(3 * DAY, span / 3);
                let c1 = self.new_copy(a);
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
                self.push(h, Ev::Snapshot(c0, c1));
                let up = h + self.r(10 * MIN, 2 * HOUR);
                self.run_copy(c1, up, end, Ev::Boot(c1));
                windows.push(self.window(a, h - DAY, end + 30 * DAY, "HA pair"));
            }
            Scenario::DrTest => {
                let h = t0 + self.r(3 * DAY, span - 10 * DAY);
                let c1 = self.new_copy(a);
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
                self.push(h, Ev::Snapshot(c0, c1));
                // Last night's backup boots at the DR site after production wrote again.
                let up = h + self.r(26 * HOUR, 50 * HOUR);
                let down = up + self.r(DAY, 5 * DAY);
                self.run_copy(c1, up, down.min(end), Ev::Boot(c1));
                windows.push(self.window(a, h - DAY, down + DAY, "DR test"));
            }
            Scenario::Reinstall => {
                let r1 = t0 + self.r(5 * DAY, span - 10 * DAY);
                self.run_copy(c0, t0, r1, Ev::Genesis(c0));
                let b = self.install();
                let c1 = self.new_copy(b);
                let up = r1 + self.r(HOUR, 3 * DAY);
                self.run_copy(c1, up, end, Ev::Genesis(c1));
            }
            Scenario::ConcurrentClone | Scenario::OfflineCloneReturns => {
                let c = t0 + self.r(3 * DAY, span - 50 * DAY.min(span / 2));
                let c1 = self.new_copy(a);
                let up = c + self.r(10 * MIN, DAY);
                for x in [c0, c1] {
                    self.copies[x].no_reboot.push((c, up + 3 * DAY));
                }
                if s == Scenario::OfflineCloneReturns {
                    let w = self.r(14 * DAY, 42 * DAY).min((end - up) / 2);
                    self.copies[c1].offline.push((up, up + w));
                }
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
                self.push(c, Ev::Snapshot(c0, c1));
                self.run_copy(c1, up, end, Ev::Boot(c1));
            }
            Scenario::DormantCloneReturns => {
                let c = t0 + self.r(3 * DAY, span / 3);
                let w = self.r(14 * DAY, 42 * DAY).min(end - c - 5 * DAY);
                let up = c + w;
                let c1 = self.new_copy(a);
                self.copies[c0].no_reboot.push((up - DAY, up + 3 * DAY));
                self.copies[c1].no_reboot.push((up, up + 3 * DAY));
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
                self.push(c, Ev::Snapshot(c0, c1));
                self.run_copy(c1, up, end, Ev::Boot(c1));
            }
            Scenario::Switching => {
                let c1 = self.new_copy(a);
                let s1 = t0 + self.r(3 * DAY, span / 4);
                let snap = s1 - self.r(HOUR, 12 * HOUR);
                self.push(snap, Ev::Snapshot(c0, c1));
                let segs = self.alternating(c0, c1, t0, s1, end);
                self.segments(&segs, &[c0, c1], &[true, false]);
            }
            Scenario::ConcurrentInstall => {
                let c = t0 + self.r(3 * DAY, span - 10 * DAY);
                self.copies[c0].no_reboot.push((c, c + 3 * DAY));
                self.run_copy(c0, t0, end, Ev::Genesis(c0));
                let b = self.install();
                let c1 = self.new_copy(b);
                self.run_copy(c1, c, end, Ev::Genesis(c1));
            }
            Scenario::SwitchingInstalls => {
                let b = self.install();
                let c1 = self.new_copy(b);
                let s1 = t0 + self.r(3 * DAY, span / 4);
                let segs = self.alternating(c0, c1, t0, s1, end);
                self.segments(&segs, &[c0, c1], &[true, true]);
            }
        }
        windows
    }

    /// Alternating runs: each copy's first run starts with genesis (`genesis[i]`) or a
    /// boot; later runs with a boot. Exports once each copy stopped for good.
    /// Owners switching: `c0` runs from `t0` to `s1`, then `c1` and `c0` take turns of
    /// two to six days, minutes to hours apart, until `end` (at least four turns).
    fn alternating(
        &mut self,
        c0: usize,
        c1: usize,
        t0: i64,
        s1: i64,
        end: i64,
    ) -> Vec<(usize, i64, i64)> {
        let mut segs = vec![(c0, t0, s1)];
        let mut t = s1;
        let mut who = c1;
        while t < end - 2 * DAY || segs.len() < 4 {
            let from = t + self.r(5 * MIN, 2 * HOUR);
            let until = (from + self.r(2 * DAY, 6 * DAY)).min(end);
            segs.push((who, from, until));
            who = if who == c0 { c1 } else { c0 };
            t = until;
            if t >= end {
                break;
            }
        }
        segs
    }

    fn segments(&mut self, segs: &[(usize, i64, i64)], copies: &[usize], genesis: &[bool]) {
        let mut first = vec![true; copies.len()];
        for &(c, from, until) in segs {
            let k = copies.iter().position(|x| *x == c).unwrap_or(0);
            let how = if first[k] && genesis[k] {
                Ev::Genesis(c)
            } else {
                Ev::Boot(c)
            };
            first[k] = false;
            self.push(from, how);
            if until < self.end {
                self.push(until, Ev::Stop(c));
            }
        }
        for &c in copies {
            let last = segs.iter().filter(|s| s.0 == c).map(|s| s.2).max();
            let firstt = segs.iter().filter(|s| s.0 == c).map(|s| s.1).min();
            if let (Some(l), Some(f)) = (last, firstt) {
                let t = l.min(self.end) + self.r(HOUR, DAY);
                self.plan_exports(c, f, l.min(self.end), t);
            }
        }
    }

    fn window(&self, inst: usize, from: i64, until: i64, reason: &str) -> WindowDoc {
        WindowDoc {
            instance: self.installs[inst].id.clone(),
            from: at(from),
            until: at(until),
            reason: reason.into(),
        }
    }

    fn process(&mut self) -> Result<(), SimError> {
        while let Some(std::cmp::Reverse((t, n))) = self.queue.pop() {
            let ev = self.events[n as usize].clone();
            match ev {
                Ev::Genesis(c) => {
                    self.genesis(c, t)?;
                    let b = t + self.r(5_000, 40_000);
                    self.push(b, Ev::Boot(c));
                }
                Ev::Boot(c) => self.boot(c, t)?,
                Ev::Resume(c) => {
                    let cp = &mut self.copies[c];
                    cp.running = true;
                    cp.run_gen += 1;
                    let g = cp.run_gen;
                    self.installs[cp.inst].stats.runs += 1;
                    let next = t + self.r(MIN, 20 * HOUR);
                    self.push(next, Ev::Checkin(c, g));
                }
                Ev::Checkin(c, g) => {
                    if self.copies[c].running && self.copies[c].run_gen == g && t < self.end {
                        self.checkin(c, t)?;
                        let next = t + DAY + self.r(-30 * MIN, 30 * MIN);
                        self.push(next, Ev::Checkin(c, g));
                    }
                }
                Ev::Stop(c) => {
                    self.copies[c].running = false;
                    self.copies[c].run_gen += 1;
                }
                Ev::Snapshot(src, dst) => {
                    let s = self.copies[src].clone();
                    let d = &mut self.copies[dst];
                    d.entries = s.entries;
                    d.head_ms = s.head_ms;
                    d.boot_id = s.boot_id;
                    d.boot_ms = s.boot_ms;
                    d.deadline = s.deadline;
                    d.countdown = s.countdown;
                    d.locked = s.locked;
                    d.anomaly_open = s.anomaly_open;
                    d.hw = s.hw;
                    d.hw_digest_gen = s.hw_digest_gen;
                }
                Ev::ClockStep(c, step) => {
                    let cp = &mut self.copies[c];
                    cp.offset_ms = (cp.offset_ms + step).clamp(-20 * MIN, 20 * MIN);
                    self.installs[cp.inst].stats.clock_steps += 1;
                }
                Ev::Export(c, kind) => self.export(c, t, kind)?,
            }
        }
        Ok(())
    }

    fn clock(&self, c: usize, t: i64) -> i64 {
        let cp = &self.copies[c];
        let rtc = if t < cp.rtc_until {
            cp.rtc_offset_ms
        } else {
            0
        };
        t + cp.offset_ms + rtc
    }

    fn seal(&mut self, c: usize, body: Body) -> Result<(), SimError> {
        let inst = self.copies[c].inst;
        let e = Entry::seal(body, &self.installs[inst].key)
            .map_err(|p| SimError::Seal(p.to_string()))?;
        let stats = &mut self.installs[inst].stats;
        match e.body.kind.as_str() {
            "boot" => stats.boots += 1,
            "checkin" => stats.checkins += 1,
            "checkin_failed" => stats.checkins_failed += 1,
            "clock_anomaly" => stats.clock_anomalies += 1,
            _ => {}
        }
        stats.entries += 1;
        let cp = &mut self.copies[c];
        cp.head_ms = time::parse_at(&e.body.at).map(ms).unwrap_or(cp.head_ms);
        cp.entries.push(e);
        Ok(())
    }

    fn body(&self, c: usize, t: i64, at_ms: i64, kind: &str, data: Map<String, Value>) -> Body {
        let cp = &self.copies[c];
        let head = cp.entries.last();
        Body {
            v: BODY_VERSION,
            instance: self.installs[cp.inst].id.clone(),
            seq: head.map_or(0, |h| h.body.seq + 1),
            prev: head.map_or(GENESIS_PREV.to_string(), |h| h.hash.clone()),
            kind: kind.into(),
            at: at(at_ms),
            boot_id: cp.boot_id.clone(),
            uptime_ms: u64::try_from(t - cp.boot_ms).unwrap_or(0),
            data,
        }
    }

    /// Append like the agent: `at` never runs backwards; a clock more than 5 minutes
    /// behind the ledger first records a `clock_anomaly`.
    fn append(
        &mut self,
        c: usize,
        t: i64,
        kind: &str,
        data: Map<String, Value>,
    ) -> Result<(), SimError> {
        let clock = self.clock(c, t);
        let head = self.copies[c].head_ms;
        let lagging = clock + 5 * MIN < head;
        if lagging && !self.copies[c].anomaly_open {
            let mut d = Map::new();
            d.insert("system_clock".into(), json!(at(clock)));
            d.insert("ledger_time".into(), json!(at(head)));
            d.insert("behind_ms".into(), json!(head - clock));
            let b = self.body(c, t, head, "clock_anomaly", d);
            self.seal(c, b)?;
            self.copies[c].anomaly_open = true;
        } else if !lagging {
            self.copies[c].anomaly_open = false;
        }
        let b = self.body(c, t, clock.max(self.copies[c].head_ms), kind, data);
        self.seal(c, b)
    }

    fn new_boot_id(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        let h = hex(&b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn genesis(&mut self, c: usize, t: i64) -> Result<(), SimError> {
        self.copies[c].boot_id = self.new_boot_id();
        self.copies[c].boot_ms = t - self.r(20_000, 120_000);
        let inst = self.copies[c].inst;
        let mut d = Map::new();
        d.insert("serial".into(), json!(self.serial));
        d.insert(
            "public_key".into(),
            json!(self.installs[inst].key.public_key_b64()),
        );
        let clock = self.clock(c, t);
        let b = self.body(c, t, clock, "genesis", d);
        self.seal(c, b)
    }

    fn hardware(&self, c: usize) -> Value {
        let cp = &self.copies[c];
        let names = [
            ("smbios.uuid", "hypervisor"),
            ("smbios.serial", "hypervisor"),
            ("net.eth0.mac", "hypervisor"),
            ("disk.vda.serial", "hypervisor"),
            ("machine_id", "image"),
            ("rootfs.uuid", "image"),
            ("cpu.model", "hypervisor"),
            ("memory.total", "hypervisor"),
        ];
        let comps: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, (n, class))| {
                // Component i changes at hardware change i (mod 8).
                let run_gen = (cp.hw_digest_gen + 8 - i as u32) / 8;
                let d = derive(
                    self.opts.seed,
                    n,
                    u64::from(self.index) << 8 | cp.inst as u64,
                    u64::from(run_gen),
                );
                json!({"name": n, "class": class, "digest": hex(&d)})
            })
            .collect();
        let digest = hex(&derive(
            self.opts.seed,
            "hw",
            u64::from(self.index),
            u64::from(cp.hw_digest_gen),
        ));
        json!({"digest": digest, "components": comps})
    }

    fn boot(&mut self, c: usize, t: i64) -> Result<(), SimError> {
        if t >= self.end {
            return Ok(());
        }
        let minutes_since = (t - self.copies[c].head_ms) / MIN;
        let changed = self.copies[c].running && self.chance(0.12);
        let rtc_behind = minutes_since < 30 && self.chance(0.5);
        let id = self.new_boot_id();
        let slew = self.r(10 * MIN, 40 * MIN);
        let cp = &mut self.copies[c];
        let first_run = !cp.running;
        cp.running = true;
        cp.run_gen += 1;
        let g = cp.run_gen;
        cp.boot_id = id;
        cp.boot_ms = t;
        if rtc_behind {
            cp.rtc_offset_ms = -slew;
            cp.rtc_until = t + HOUR;
        }
        let mut d = Map::new();
        if changed {
            cp.hw_digest_gen += 1;
            let inst = cp.inst;
            self.installs[inst].stats.hardware_changes += 1;
        }
        if first_run {
            let inst = self.copies[c].inst;
            self.installs[inst].stats.runs += 1;
        }
        let against = self.copies[c]
            .entries
            .iter()
            .rev()
            .find(|e| e.body.kind == "boot")
            .map(|e| e.body.seq);
        if let Some(seq) = against {
            d.insert(
                "hardware_drift".into(),
                if changed {
                    json!({"conclusion": "hardware_changed", "against_seq": seq,
                           "changed": ["memory.total"], "added": [], "removed": [],
                           "explanation": "memory.total changed (a hypervisor-class component): hardware changed; the image is the same"})
                } else {
                    json!({"conclusion": "same", "against_seq": seq, "changed": [], "added": [], "removed": [],
                           "explanation": "every component matches"})
                },
            );
        }
        d.insert("hardware".into(), self.hardware(c));
        d.insert("trees".into(), json!([]));
        self.append(c, t, "boot", d)?;
        // The boot command checks in at once; the daily timer continues from there.
        let ci = t + self.r(2_000, 30_000);
        self.push(ci, Ev::Checkin(c, g));
        Ok(())
    }

    fn offline(&self, c: usize, t: i64) -> bool {
        let inside = |v: &[(i64, i64)]| v.iter().any(|(a, z)| *a <= t && t < *z);
        inside(&self.outages) || inside(&self.copies[c].offline)
    }

    fn checkin(&mut self, c: usize, t: i64) -> Result<(), SimError> {
        if self.offline(c, t) {
            let mut d = Map::new();
            d.insert("reason".into(), json!("network"));
            d.insert(
                "detail".into(),
                json!("cannot reach https://license.vendor.example/v1/checkin: connection timed out after 5 s"),
            );
            d.insert("via".into(), json!("network"));
            d.insert(
                "url".into(),
                json!("https://license.vendor.example/v1/checkin"),
            );
            self.append(c, t, "checkin_failed", d)?;
            let deadline = self.copies[c].deadline.unwrap_or(t);
            if t > deadline && !self.copies[c].countdown {
                self.copies[c].countdown = true;
                let mut d = Map::new();
                d.insert("reason".into(), json!("checkin_overdue"));
                d.insert("lock_at".into(), json!(at(deadline + 7 * DAY)));
                self.append(c, t, "countdown_started", d)?;
            }
            if t > deadline + 7 * DAY && !self.copies[c].locked {
                self.copies[c].locked = true;
                let mut d = Map::new();
                d.insert("reason".into(), json!("checkin_overdue"));
                self.append(c, t, "locked", d)?;
            }
            return Ok(());
        }
        if self.copies[c].locked {
            self.copies[c].locked = false;
            let mut d = Map::new();
            d.insert("reason".into(), json!("checkin_ok"));
            self.append(c, t, "unlocked", d)?;
        }
        if self.copies[c].countdown {
            self.copies[c].countdown = false;
            let mut d = Map::new();
            d.insert("reason".into(), json!("checkin_ok"));
            self.append(c, t, "countdown_cleared", d)?;
        }
        let head = self.copies[c]
            .entries
            .last()
            .map(|e| (e.body.seq, e.hash.clone()));
        let (receipt, nonce): ([u8; 32], [u8; 16]) = (self.rng.random(), self.rng.random());
        let mut d = Map::new();
        d.insert("receipt".into(), json!(hex(&receipt)));
        d.insert("key_id".into(), json!("3f6c2a9be1d04a77"));
        d.insert("server_time".into(), json!(at(t + 150)));
        d.insert("status".into(), json!("active"));
        d.insert("reason".into(), Value::Null);
        d.insert("verdict".into(), Value::Null);
        d.insert("sla_ends".into(), json!("2029-12-31"));
        d.insert("next_checkin_before".into(), json!(at(t + 2 * DAY)));
        d.insert("acked_seq".into(), json!(head.as_ref().map(|h| h.0)));
        d.insert("acked_hash".into(), json!(head.map(|h| h.1)));
        d.insert("nonce".into(), json!(hex(&nonce)));
        d.insert("via".into(), json!("network"));
        self.append(c, t, "checkin", d)?;
        self.copies[c].deadline = Some(t + 2 * DAY);
        Ok(())
    }

    fn export(&mut self, c: usize, t: i64, kind: ExportKind) -> Result<(), SimError> {
        let cp = &self.copies[c];
        if cp.entries.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = match kind {
            ExportKind::Tail => {
                let from = cp.exported_seq.map_or(0, |s| s + 1);
                cp.entries
                    .iter()
                    .filter(|e| e.body.seq >= from)
                    .cloned()
                    .collect()
            }
            _ => cp.entries.clone(),
        };
        if entries.is_empty() {
            return Ok(());
        }
        let last_seq = entries.last().map(|e| e.body.seq);
        let inst = cp.inst;
        let tamper = cp.tamper;
        let mut bundle = Bundle {
            format: EXPORT_FORMAT.into(),
            serial: Some(self.serial.clone()),
            instance: self.installs[inst].id.clone(),
            public_key: self.installs[inst].key.public_key_b64(),
            exported_at: at(t),
            entries,
        };
        let mut extra = None;
        if kind == ExportKind::Final
            && let Some(how) = tamper
        {
            let n = bundle.entries.len();
            let mid = 1 + (n.saturating_sub(2)) / 2;
            match how {
                Tamper::Body => {
                    if let Some(e) = bundle.entries.get_mut(mid) {
                        e.body.data.insert("tampered".into(), json!(true));
                    }
                }
                Tamper::TipSignature => {
                    let other = SigningKey::from_seed(&derive(
                        self.opts.seed,
                        "forger",
                        u64::from(self.index),
                        0,
                    ));
                    if let Some(e) = bundle.entries.last_mut()
                        && let Ok(m) = e.body.message()
                    {
                        e.sig = crate::keys::b64_encode(&other.sign(&m));
                    }
                }
                Tamper::DropEntry => {
                    if mid < n {
                        bundle.entries.remove(mid);
                    }
                }
                Tamper::ForeignKeyBundle => {
                    let other = SigningKey::from_seed(&derive(
                        self.opts.seed,
                        "forger",
                        u64::from(self.index),
                        1,
                    ));
                    let mut b2 = bundle.clone();
                    b2.public_key = other.public_key_b64();
                    b2.entries = b2.entries.split_off(mid.min(n));
                    extra = Some(b2);
                }
            }
        }
        let id = bundle.instance.clone();
        self.copies[c].exports += 1;
        let k = self.copies[c].exports;
        self.write_bundle(&format!("{id}.c{c}.e{k}.json"), &bundle)?;
        if let Some(b2) = extra {
            self.write_bundle(&format!("{id}.c{c}.e{k}x.json"), &b2)?;
        }
        let stats = &mut self.installs[inst].stats;
        stats.exports += 1;
        if kind == ExportKind::Duplicate {
            stats.duplicated_exports += 1;
        }
        if kind == ExportKind::Tail || kind == ExportKind::Final {
            self.copies[c].exported_seq = last_seq;
        }
        Ok(())
    }

    fn write_bundle(&mut self, name: &str, b: &Bundle) -> Result<(), SimError> {
        let p = self.dir.join(name);
        let mut bytes = serde_json::to_vec(b).map_err(|e| SimError::Seal(e.to_string()))?;
        bytes.push(b'\n');
        std::fs::write(&p, bytes).map_err(|source| SimError::Write {
            path: p.display().to_string(),
            source,
        })?;
        self.files += 1;
        Ok(())
    }
}
