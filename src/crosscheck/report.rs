//! The cross-check's report model (`vmledger-crosscheck/v1`, schema
//! `schemas/crosscheck.schema.json`, spec `docs/formats/crosscheck.md`) and its two
//! streaming renderings: one JSON document and a human table. Both are written serial by
//! serial as results come, so a fleet's report never has to fit in memory.
//!
//! This module only formats: it never reads files or judges anything, and it writes only
//! to the writer it is given.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::input::FileNote;

/// The report's `format`.
pub const REPORT_FORMAT: &str = "vmledger-crosscheck/v1";

/// A verdict of the cross-check, per instance and per serial. Ordered by severity: the
/// verdict of a group is the most severe of its parts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// One history, nothing wrong.
    #[default]
    Clean,
    /// Restored from a backup (or a snapshot reverted): allowed, reported.
    Restored,
    /// Some input failed its checks (bad hash, signature, link, key): reported with the
    /// reason; the rest was judged.
    Invalid,
    /// Two copies ran at the same time.
    ConcurrentDuplicate,
    /// The owner switched between copies.
    Switching,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Clean,
        Verdict::Restored,
        Verdict::Invalid,
        Verdict::ConcurrentDuplicate,
        Verdict::Switching,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Restored => "restored",
            Verdict::Invalid => "invalid",
            Verdict::ConcurrentDuplicate => "concurrent_duplicate",
            Verdict::Switching => "switching",
        }
    }

    /// True for the verdicts that make the cross-check exit 1.
    pub fn flagged(self) -> bool {
        matches!(
            self,
            Verdict::Invalid | Verdict::ConcurrentDuplicate | Verdict::Switching
        )
    }

    pub fn from_kind(k: crate::rules::Kind) -> Verdict {
        match k {
            crate::rules::Kind::Restored => Verdict::Restored,
            crate::rules::Kind::ConcurrentDuplicate => Verdict::ConcurrentDuplicate,
            crate::rules::Kind::Switching => Verdict::Switching,
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something in the input that failed a check. The entry (and everything that descends
/// from it) is left out of the judgement; the rest is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file it was read from (`None` for problems of the instance as a whole).
    pub file: Option<String>,
    pub seq: Option<u64>,
    pub hash: Option<String>,
    pub problem: String,
    /// Other entries left out because they descend from this one.
    pub excluded: u64,
}

/// A point of an entry, for spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub seq: u64,
    pub at: String,
    pub hash: String,
}

/// Where a branch left its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkAt {
    pub branch: u32,
    pub seq: u64,
    pub hash: String,
    pub at: String,
}

/// One branch of an instance, as judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchReport {
    pub branch: u32,
    /// `primary`, `superseded`, `concurrent` or `disabled` at the end of the replay.
    pub state: String,
    pub fork: Option<ForkAt>,
    pub first: Point,
    pub tip: Point,
    pub entries: u64,
    /// `at` of every `boot` entry on the branch.
    pub boots: Vec<String>,
    pub checkins: u64,
    pub checkins_failed: u64,
}

/// Entries accepted on non-primary branches without a verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tolerated {
    pub late_history: u64,
    pub allow_concurrent: u64,
    pub still_disabled: u64,
}

/// One instance's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance: String,
    pub serial: Option<String>,
    pub verdict: Verdict,
    /// A restore beyond `restore_warn` within `restore_window`: for review.
    pub review: bool,
    pub public_key: Option<String>,
    pub files: Vec<String>,
    /// Entries read, counting every copy in every file.
    pub entries_read: u64,
    /// Distinct entries judged.
    pub entries: u64,
    /// Identical copies of an entry in overlapping exports (harmless).
    pub duplicates: u64,
    pub signatures_checked: u64,
    pub branches: Vec<BranchReport>,
    pub tolerated: Tolerated,
    /// Instance-level verdicts, each a `vmledger-evidence/v1` document.
    pub verdicts: Vec<Value>,
    /// Serial-level verdicts that concern this instance (their ids).
    pub serial_verdicts: Vec<String>,
    pub problems: Vec<Problem>,
    /// Remarks that do not change the verdict: exports of it that could not be read, a
    /// serial that could not be verified.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Lanes and marks for the HTML report (kept only when one is written).
    #[serde(skip)]
    pub timeline: Option<super::html::Timeline>,
}

/// One serial's result (instances exported without a serial are each their own group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialReport {
    pub serial: Option<String>,
    pub verdict: Verdict,
    pub instances: Vec<InstanceReport>,
    /// Serial-level verdicts (rule 4), each a `vmledger-evidence/v1` document.
    pub verdicts: Vec<Value>,
    /// One lane per instance for the HTML report, when it has a serial-level verdict
    /// (kept only when one is written).
    #[serde(skip)]
    pub timeline: Option<super::html::Timeline>,
}

/// Counts per verdict (every verdict present, zeros included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub clean: u64,
    pub restored: u64,
    pub invalid: u64,
    pub concurrent_duplicate: u64,
    pub switching: u64,
}

impl Counts {
    fn slot(&mut self, v: Verdict) -> &mut u64 {
        match v {
            Verdict::Clean => &mut self.clean,
            Verdict::Restored => &mut self.restored,
            Verdict::Invalid => &mut self.invalid,
            Verdict::ConcurrentDuplicate => &mut self.concurrent_duplicate,
            Verdict::Switching => &mut self.switching,
        }
    }
    pub fn add(&mut self, v: Verdict) {
        *self.slot(v) += 1;
    }
    pub fn get(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Clean => self.clean,
            Verdict::Restored => self.restored,
            Verdict::Invalid => self.invalid,
            Verdict::ConcurrentDuplicate => self.concurrent_duplicate,
            Verdict::Switching => self.switching,
        }
    }
    pub fn total(&self) -> u64 {
        Verdict::ALL.iter().map(|v| self.get(*v)).sum()
    }
    /// True when some verdict that makes the cross-check exit 1 was counted.
    pub fn any_flagged(&self) -> bool {
        Verdict::ALL.iter().any(|v| v.flagged() && self.get(*v) > 0)
    }
}

/// The echo of the policy the report was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEcho {
    pub clock_tolerance_minutes: i64,
    pub restore_warn: u32,
    pub restore_window_days: i64,
    pub windows: Vec<crate::rules::Window>,
}

/// What is known before the first serial is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub paths: Vec<String>,
    pub policy: PolicyEcho,
    /// `tips_and_forks` (default) or `full`.
    pub signatures: String,
    pub skipped: Vec<FileNote>,
    pub unreadable: Vec<FileNote>,
}

/// Totals, written last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// Files that could not be read as bundles (at the scan or when read whole).
    pub unreadable: u64,
    pub entries_read: u64,
    pub entries: u64,
    pub duplicates: u64,
    pub excluded: u64,
    pub signatures_checked: u64,
    pub instances: Counts,
    pub serials: Counts,
    /// Instances with a flagged verdict.
    pub flagged: u64,
    /// 1 something flagged (whatever else happened), else 2 when some input could not be
    /// read or no export bundle was found at all, else 0.
    pub exit_code: u8,
}

impl Summary {
    /// Account for one serial's result.
    pub fn add(&mut self, s: &SerialReport) {
        self.serials.add(s.verdict);
        for i in &s.instances {
            self.instances.add(i.verdict);
            self.flagged += u64::from(i.verdict.flagged());
            self.entries_read += i.entries_read;
            self.entries += i.entries;
            self.duplicates += i.duplicates;
            self.signatures_checked += i.signatures_checked;
            self.excluded += i
                .problems
                .iter()
                .map(|p| p.excluded + u64::from(p.seq.is_some()))
                .sum::<u64>();
        }
    }

    /// Decide the exit code: a violation or invalid ledger (1) over unreadable input or
    /// no bundles at all (2) over nothing flagged (0).
    pub fn decide(&mut self) {
        self.exit_code = if self.serials.any_flagged() {
            1
        } else if self.unreadable > 0 || self.nothing_found() {
            2
        } else {
            0
        };
    }

    /// No export bundle was found (an empty directory, only other documents).
    pub fn nothing_found(&self) -> bool {
        self.files == 0 && self.unreadable == 0
    }

    /// The one-line result, in words.
    pub fn result(&self) -> String {
        let unreadable = |s: &str| match self.unreadable {
            0 => String::new(),
            n => format!("{s}{n} file(s) could not be read"),
        };
        match self.exit_code {
            0 => "nothing flagged".into(),
            1 => format!(
                "violations or invalid ledgers found{} (exit 1)",
                unreadable("; also, ")
            ),
            _ if self.nothing_found() => format!(
                "no export bundles were found ({} other file(s) skipped); name the files or \
                 directories that hold the {} exports (exit 2)",
                self.skipped,
                crate::ledger::export::EXPORT_FORMAT
            ),
            _ => format!("{}; nothing flagged in the rest (exit 2)", unreadable("")),
        }
    }
}

/// Receives the report as it is made.
pub trait Sink {
    fn begin(&mut self, head: &Head) -> io::Result<()>;
    fn serial(&mut self, s: &SerialReport) -> io::Result<()>;
    fn finish(&mut self, head: &Head, summary: &Summary) -> io::Result<()>;
}

/// Writes one `vmledger-crosscheck/v1` JSON document, one serial per line.
pub struct JsonSink<W: Write> {
    w: W,
    first: bool,
}

impl<W: Write> JsonSink<W> {
    pub fn new(w: W) -> Self {
        JsonSink { w, first: true }
    }
    pub fn into_inner(self) -> W {
        self.w
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        write!(self.w, "{{\"format\":\"{REPORT_FORMAT}\",\n\"paths\":")?;
        serde_json::to_writer(&mut self.w, &head.paths)?;
        write!(self.w, ",\n\"policy\":")?;
        serde_json::to_writer(&mut self.w, &head.policy)?;
        write!(self.w, ",\n\"signatures\":")?;
        serde_json::to_writer(&mut self.w, &head.signatures)?;
        write!(self.w, ",\n\"skipped\":")?;
        serde_json::to_writer(&mut self.w, &head.skipped)?;
        write!(self.w, ",\n\"serials\":[")?;
        Ok(())
    }

    fn serial(&mut self, s: &SerialReport) -> io::Result<()> {
        self.w.write_all(if self.first { b"\n" } else { b",\n" })?;
        self.first = false;
        serde_json::to_writer(&mut self.w, s)?;
        Ok(())
    }

    fn finish(&mut self, head: &Head, summary: &Summary) -> io::Result<()> {
        write!(self.w, "\n],\n\"unreadable\":")?;
        serde_json::to_writer(&mut self.w, &head.unreadable)?;
        write!(self.w, ",\n\"summary\":")?;
        serde_json::to_writer(&mut self.w, summary)?;
        writeln!(self.w, "}}")?;
        self.w.flush()
    }
}

/// Writes the human table: flagged and restored instances (every instance with `all`),
/// each with the reasons, then the unreadable files and the totals.
pub struct TextSink<W: Write> {
    w: W,
    all: bool,
    header: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(w: W, all: bool) -> Self {
        TextSink {
            w,
            all,
            header: false,
        }
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        writeln!(
            self.w,
            "cross-check of {} (signatures: {}, clock tolerance {} min, {} declared window(s))",
            head.paths.join(" "),
            head.signatures,
            head.policy.clock_tolerance_minutes,
            head.policy.windows.len()
        )
    }

    fn serial(&mut self, s: &SerialReport) -> io::Result<()> {
        let show: Vec<&InstanceReport> = s
            .instances
            .iter()
            .filter(|i| self.all || i.verdict != Verdict::Clean || !i.notes.is_empty())
            .collect();
        if show.is_empty() && s.verdicts.is_empty() {
            return Ok(());
        }
        if !self.header {
            self.header = true;
            writeln!(
                self.w,
                "\n{:<21} {:<16} {:<32} {:>3} {:>7}",
                "VERDICT", "SERIAL", "INSTANCE", "BR", "ENTRIES"
            )?;
        }
        let serial = s.serial.as_deref().unwrap_or("-");
        for i in show {
            let verdict = if i.review {
                format!("{} (review)", i.verdict)
            } else {
                i.verdict.to_string()
            };
            writeln!(
                self.w,
                "{:<21} {:<16} {:<32} {:>3} {:>7}",
                verdict,
                short(serial, 16),
                i.instance,
                i.branches.len(),
                i.entries
            )?;
            for v in &i.verdicts {
                writeln!(
                    self.w,
                    "    {} {} ({}): {}",
                    v["kind"].as_str().unwrap_or_default(),
                    v["rule"].as_str().unwrap_or_default(),
                    v["verdict"].as_str().unwrap_or_default(),
                    v["explanation"].as_str().unwrap_or_default()
                )?;
            }
            for p in &i.problems {
                let mut loc = String::new();
                if let Some(f) = &p.file {
                    loc.push_str(f);
                }
                if let Some(seq) = p.seq {
                    loc.push_str(&format!(" seq {seq}"));
                }
                writeln!(
                    self.w,
                    "    invalid:{}{} {}{}",
                    if loc.is_empty() { "" } else { " " },
                    loc.trim(),
                    p.problem,
                    if p.excluded > 0 {
                        format!(" ({} later entries left out)", p.excluded)
                    } else {
                        String::new()
                    }
                )?;
            }
            for n in &i.notes {
                writeln!(self.w, "    note: {n}")?;
            }
        }
        for v in &s.verdicts {
            writeln!(
                self.w,
                "    serial {}: {} {} ({}): {}",
                serial,
                v["kind"].as_str().unwrap_or_default(),
                v["rule"].as_str().unwrap_or_default(),
                v["verdict"].as_str().unwrap_or_default(),
                v["explanation"].as_str().unwrap_or_default()
            )?;
        }
        Ok(())
    }

    fn finish(&mut self, head: &Head, summary: &Summary) -> io::Result<()> {
        if !head.unreadable.is_empty() {
            writeln!(self.w, "\nunreadable files ({}):", head.unreadable.len())?;
            for f in &head.unreadable {
                writeln!(self.w, "  {}: {}", f.path, f.reason)?;
            }
        }
        let counts = |c: &Counts| {
            Verdict::ALL
                .iter()
                .map(|v| format!("{} {}", c.get(*v), v))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            self.w,
            "\n{} files ({} bytes, {} skipped, {} unreadable), {} entries read, {} distinct judged, {} duplicates, {} left out, {} signatures checked",
            summary.files,
            summary.bytes,
            summary.skipped,
            summary.unreadable,
            summary.entries_read,
            summary.entries,
            summary.duplicates,
            summary.excluded,
            summary.signatures_checked
        )?;
        writeln!(
            self.w,
            "instances: {} ({})",
            summary.instances.total(),
            counts(&summary.instances)
        )?;
        writeln!(
            self.w,
            "serials:   {} ({})",
            summary.serials.total(),
            counts(&summary.serials)
        )?;
        writeln!(self.w, "result: {}", summary.result())?;
        self.w.flush()
    }
}

/// Several sinks at once (the report on stdout and the HTML file).
pub struct Tee<'a>(pub Vec<&'a mut dyn Sink>);

impl Sink for Tee<'_> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.begin(head))
    }
    fn serial(&mut self, r: &SerialReport) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.serial(r))
    }
    fn finish(&mut self, head: &Head, summary: &Summary) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.finish(head, summary))
    }
}
