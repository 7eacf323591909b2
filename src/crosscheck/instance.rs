//! One instance: read its bundles, check every entry, settle its public key, build its
//! tree, check the signatures that carry weight, replay it through the detection rules
//! ([`crate::rules::Graph`], observation time = each entry's `at`) and describe the
//! result with evidence.
//!
//! Checks, in order (each failure is a [`Problem`]; the entry and its descendants are left
//! out, the rest is judged):
//! - every entry: body form, canonical text and hash ([`Entry::check`]), instance id;
//!   identical copies in overlapping exports are counted as duplicates, not problems;
//! - the key: the one genesis entry's `data.public_key`; a bundle whose `public_key`
//!   disagrees is left out;
//! - links: every entry follows a known predecessor (seq + 1, `prev`, time never
//!   backwards: [`check_link`]);
//! - signatures ([`check_signature`]): every branch tip, every fork point and both
//!   children of every fork, and every entry cited in evidence; with `full`, every entry.
//!   A valid tip signature over a valid hash chain binds the whole chain.
//!
//! Memory is this instance's entries only. Nothing here prints or touches other files.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use serde_json::{Value, json};

use super::evidence;
use super::html::{Lane, Mark, Timeline};
use super::input::{BadEntry, FileNote, FileRef, Limits, read_bundle};
use super::report::{
    BranchReport, ForkAt, InstanceReport, Point, Problem, Tolerated, Verdict as CcVerdict,
};
use crate::keys::{self, PUBLIC_KEY_LEN};
use crate::ledger::entry::{Entry, check_link, check_signature, message_from_canonical};
use crate::rules::{self, BranchId, Decision, Graph, Loc, Node, Policy, Tolerance};
use crate::time;

/// How one cross-check run judges.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    /// Check every signature, not only those that carry weight.
    pub full: bool,
    pub limits: Limits,
    /// Keep timelines for the HTML report.
    pub timelines: bool,
}

/// One distinct entry of the instance.
#[derive(Debug, Clone)]
pub struct Item {
    pub entry: Entry,
    pub canonical: String,
    pub node: Node,
    /// Index of the first file it was read from.
    pub file: u32,
    /// Why it failed a check (it and its descendants are left out).
    pub bad: Option<String>,
    pub sig_ok: bool,
    /// Linked to the genesis through good entries (recomputed by `link`).
    pub valid: bool,
    /// Where the rules put it (after the replay).
    pub loc: Option<Loc>,
    /// Its position in the replay.
    pub order: u32,
}

/// What left an entry out: one of the items, or a problem found while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Root {
    Item(u32),
    Load(usize),
}

/// An instance being judged (kept until its serial is judged: the serial-level rule may
/// need its entries as evidence and may find one more bad signature).
#[derive(Debug)]
pub struct Judged {
    pub report: InstanceReport,
    pub items: Vec<Item>,
    by_hash: HashMap<String, u32, RandomState>,
    /// Hashes of entries that failed their own checks while loading, with the problem.
    rejected: HashMap<String, usize, RandomState>,
    load_problems: Vec<Problem>,
    excluded_under: HashMap<Root, u64>,
    key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Valid items in replay order.
    pub replay: Vec<u32>,
    /// Files that could not be read as bundles.
    pub unreadable: Vec<FileNote>,
    pub graph: Option<Graph>,
    verdicts: Vec<(u32, rules::Verdict)>,
}

fn point(e: &rules::EntryRef) -> Point {
    Point {
        seq: e.seq,
        at: time::format_at(e.at),
        hash: e.hash.clone(),
    }
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

impl Judged {
    /// Read, check and judge `instance` from `files` (all of them claim it).
    pub fn judge(instance: &str, serial: Option<&str>, files: &[FileRef], ctx: &Ctx) -> Judged {
        let mut j = Judged {
            report: InstanceReport {
                instance: instance.to_string(),
                serial: serial.map(str::to_string),
                verdict: CcVerdict::Clean,
                review: false,
                public_key: None,
                files: files.iter().map(|f| f.path.display().to_string()).collect(),
                entries_read: 0,
                entries: 0,
                duplicates: 0,
                signatures_checked: 0,
                branches: Vec::new(),
                tolerated: Tolerated::default(),
                verdicts: Vec::new(),
                serial_verdicts: Vec::new(),
                problems: Vec::new(),
                notes: Vec::new(),
                timeline: None,
            },
            items: Vec::new(),
            by_hash: HashMap::default(),
            rejected: HashMap::default(),
            load_problems: Vec::new(),
            excluded_under: HashMap::new(),
            key: None,
            replay: Vec::new(),
            unreadable: Vec::new(),
            graph: None,
            verdicts: Vec::new(),
        };
        if j.load(instance, files, ctx) {
            j.run(ctx);
        }
        j.finish(ctx);
        j
    }

    fn load_problem(
        &mut self,
        file: Option<&FileRef>,
        entry: Option<&Entry>,
        problem: String,
    ) -> usize {
        self.load_problems.push(Problem {
            file: file.map(|f| f.path.display().to_string()),
            seq: entry.map(|e| e.body.seq),
            hash: entry.map(|e| e.hash.clone()),
            problem,
            excluded: 0,
        });
        self.load_problems.len() - 1
    }

    /// Read the bundles and check entries one by one. False when the instance cannot be
    /// judged at all (no genesis, several, an unusable key).
    fn load(&mut self, instance: &str, files: &[FileRef], ctx: &Ctx) -> bool {
        let mut bundles = Vec::new();
        for (i, f) in files.iter().enumerate() {
            match read_bundle(&f.path, ctx.limits) {
                Ok(b) if b.instance != instance => {
                    self.load_problem(
                        Some(f),
                        None,
                        format!(
                            "the bundle now names instance {}, not {instance}",
                            b.instance
                        ),
                    );
                }
                Ok(b) => bundles.push((i, b)),
                // Reported with the unreadable files (exit 2), not as a problem of the
                // instance's ledger: the rest of its exports is judged as usual.
                Err(r) => self.unreadable.push(FileNote {
                    path: f.path.display().to_string(),
                    reason: r.to_string(),
                }),
            }
        }
        if !self.unreadable.is_empty() {
            self.report.notes.push(if bundles.is_empty() {
                format!(
                    "none of its {} export(s) could be read (listed under unreadable): \
                     nothing of this instance was judged",
                    self.unreadable.len()
                )
            } else {
                format!(
                    "{} of its {} exports could not be read (listed under unreadable); it was \
                     judged on the others",
                    self.unreadable.len(),
                    files.len()
                )
            });
        }
        let read_count = |bundles: &[(usize, super::input::ReadBundle)]| -> u64 {
            bundles.iter().map(|(_, b)| b.entries.len() as u64).sum()
        };
        // The key comes from the one genesis entry.
        let mut geneses: Vec<(usize, Entry)> = Vec::new();
        for (i, b) in &bundles {
            for e in b.entries.iter().flatten().filter(|e| e.body.seq == 0) {
                if !geneses.iter().any(|(_, g)| g.hash == e.hash)
                    && e.body.instance == instance
                    && e.check(None).is_ok()
                {
                    geneses.push((*i, e.clone()));
                }
            }
        }
        let genesis = match geneses.len() {
            0 => {
                self.report.entries_read = read_count(&bundles);
                if !bundles.is_empty() {
                    self.load_problem(
                        None,
                        None,
                        "no valid genesis entry (seq 0) in any export of this instance, so its \
                         key and history cannot be established; export the whole ledger \
                         (`vmledger ledger export` without --since)"
                            .into(),
                    );
                    let mut named: Vec<String> = bundles
                        .iter()
                        .map(|(_, b)| b.serial.as_deref().unwrap_or("null").to_string())
                        .collect();
                    named.sort();
                    named.dedup();
                    self.report.notes.push(format!(
                        "no export holds its genesis entry, so its serial cannot be verified: \
                         the unsigned bundle headers name serial {}",
                        named.join(", ")
                    ));
                }
                return false;
            }
            1 => geneses.pop().map(|(_, g)| g),
            n => {
                self.report.entries_read = read_count(&bundles);
                self.load_problem(
                    None,
                    None,
                    format!(
                        "{n} different genesis entries claim this instance (in {}): these are \
                         not one instance's ledger",
                        geneses
                            .iter()
                            .map(|(i, _)| files[*i].path.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                return false;
            }
        };
        let Some(genesis) = genesis else { return false };
        let key = match genesis.genesis_public_key() {
            Ok(k) => k,
            Err(p) => {
                self.load_problem(None, Some(&genesis), format!("genesis: {p}"));
                return false;
            }
        };
        self.key = Some(key);
        let key_b64 = keys::b64_encode(&key);
        self.report.public_key = Some(key_b64.clone());
        // Header serial and highest seq of each bundle whose key agrees.
        let mut headers: Vec<(usize, Option<String>, Option<u64>)> = Vec::new();
        for (i, b) in bundles {
            let f = &files[i];
            let n = b.entries.len() as u64;
            if keys::decode_public_key(&b.public_key, "public_key").ok() != Some(key) {
                self.report.entries_read += n;
                let p = self.load_problem(
                    Some(f),
                    None,
                    format!(
                        "the bundle's public key {} disagrees with the key in the instance's \
                         genesis entry ({key_b64}); its {n} entries are left out",
                        b.public_key
                    ),
                );
                self.load_problems[p].excluded = n;
                continue;
            }
            let last = b.entries.iter().flatten().map(|e| e.body.seq).max();
            headers.push((i, b.serial, last));
            for e in b.entries {
                match e {
                    Ok(e) => self.add_entry(f, i as u32, e, instance, &key),
                    Err(bad) => self.bad_entry(f, bad),
                }
            }
        }
        self.check_serials(&genesis, files, &headers);
        true
    }

    /// An entry of `f` that could not be read as an entry.
    fn bad_entry(&mut self, f: &FileRef, bad: BadEntry) {
        self.report.entries_read += 1;
        self.load_problems.push(Problem {
            file: Some(f.path.display().to_string()),
            seq: bad.seq,
            hash: bad.hash.clone(),
            problem: bad.reason,
            excluded: 0,
        });
        if let Some(h) = bad.hash {
            // Its descendants are counted as left out because of it.
            self.rejected
                .entry(h)
                .or_insert(self.load_problems.len() - 1);
        }
    }

    /// The instance's serial is what its signed ledger says: the genesis entry's
    /// `data.serial`, or the latest `registered` entry's. A bundle header (unsigned) that
    /// names another serial, or none, is a problem: the files were grouped by their
    /// headers, so a wrong header may have kept this instance away from its serial's
    /// other instances.
    fn check_serials(
        &mut self,
        genesis: &Entry,
        files: &[FileRef],
        headers: &[(usize, Option<String>, Option<u64>)],
    ) {
        let data_serial = |e: &Entry| -> Option<String> {
            e.body
                .data
                .get("serial")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let mut registered: Vec<(u64, String)> = self
            .items
            .iter()
            .filter(|it| it.entry.body.kind == "registered")
            .filter_map(|it| data_serial(&it.entry).map(|s| (it.entry.body.seq, s)))
            .collect();
        registered.sort();
        let genesis_serial = data_serial(genesis);
        // The serial as of seq `upto`: what a bundle ending there should name.
        let signed_at = |upto: u64| -> (Option<String>, String) {
            match registered.iter().rev().find(|(seq, _)| *seq <= upto) {
                Some((seq, s)) => (
                    Some(s.clone()),
                    format!("its `registered` entry (seq {seq})"),
                ),
                None => (genesis_serial.clone(), "its genesis entry".to_string()),
            }
        };
        self.report.serial = signed_at(u64::MAX).0;
        let name = |s: &Option<String>| match s {
            Some(s) => format!("serial {s}"),
            None => "no serial (null)".to_string(),
        };
        for (i, header, last) in headers {
            let (signed, source) = signed_at(last.unwrap_or(u64::MAX));
            if *header == signed {
                continue;
            }
            let f = &files[*i];
            self.load_problem(
                Some(f),
                None,
                format!(
                    "the bundle's header names {}, but the instance's signed ledger ({source}) \
                     says {}: the header is not signed and the files were grouped by it, so \
                     this instance may not have been judged with its serial's other instances",
                    name(header),
                    name(&signed)
                ),
            );
        }
    }

    fn add_entry(&mut self, f: &FileRef, file: u32, e: Entry, instance: &str, key: &[u8; 32]) {
        self.report.entries_read += 1;
        if e.body.instance != instance {
            self.load_problem(
                Some(f),
                Some(&e),
                format!("the entry belongs to instance {}", e.body.instance),
            );
            return;
        }
        if let Some(&idx) = self.by_hash.get(&e.hash) {
            let known = &self.items[idx as usize];
            if known.entry.sig == e.sig && known.entry.body == e.body {
                self.report.duplicates += 1;
                return;
            }
            if let Err(p) = e.check(None) {
                let pi = self.load_problem(Some(f), Some(&e), p.to_string());
                self.rejected.entry(e.hash.clone()).or_insert(pi);
                return;
            }
            // The same body (its hash says so) with another signature: keep the good one.
            let msg = message_from_canonical(&known.canonical);
            let old_ok = known.sig_ok || check_signature(key, &msg, &known.entry.sig).is_ok();
            let new_ok = check_signature(key, &msg, &e.sig).is_ok();
            self.report.signatures_checked += 2;
            let item = &mut self.items[idx as usize];
            if old_ok {
                item.sig_ok = true;
            } else if new_ok {
                item.entry.sig = e.sig.clone();
                item.sig_ok = true;
                item.bad = None;
            }
            if !new_ok {
                self.load_problem(
                    Some(f),
                    Some(&e),
                    "bad signature on this copy of the entry".into(),
                );
            } else if !old_ok {
                let kf = item.file;
                let file = self.report.files.get(kf as usize).cloned();
                self.load_problems.push(Problem {
                    file,
                    seq: Some(e.body.seq),
                    hash: Some(e.hash.clone()),
                    problem: "bad signature on another copy of this entry".into(),
                    excluded: 0,
                });
            }
            return;
        }
        let canonical = match e.check(None) {
            Ok(c) => c,
            Err(p) => {
                let pi = self.load_problem(Some(f), Some(&e), p.to_string());
                self.rejected.entry(e.hash.clone()).or_insert(pi);
                return;
            }
        };
        let node = match Node::from_entry(&e) {
            Ok(n) => n,
            Err(err) => {
                let pi = self.load_problem(Some(f), Some(&e), err.to_string());
                self.rejected.entry(e.hash.clone()).or_insert(pi);
                return;
            }
        };
        self.by_hash.insert(e.hash.clone(), self.items.len() as u32);
        self.items.push(Item {
            entry: e,
            canonical,
            node,
            file,
            bad: None,
            sig_ok: false,
            valid: false,
            loc: None,
            order: u32::MAX,
        });
    }

    fn parent(&self, i: usize) -> Option<u32> {
        self.by_hash.get(&self.items[i].entry.body.prev).copied()
    }

    /// Recompute which items are linked to the genesis through good entries.
    fn link(&mut self, topo: &[u32]) {
        self.excluded_under.clear();
        let mut root: Vec<Option<Root>> = vec![None; self.items.len()];
        for &i in topo {
            let i = i as usize;
            self.items[i].valid = false;
            if self.items[i].bad.is_some() {
                root[i] = Some(Root::Item(i as u32));
                continue;
            }
            if self.items[i].entry.body.seq == 0 {
                self.items[i].valid = true;
                continue;
            }
            let r = match self.parent(i) {
                None => match self.rejected.get(&self.items[i].entry.body.prev) {
                    Some(&p) => Some(Root::Load(p)),
                    None => {
                        let prev = &self.items[i].entry.body.prev;
                        self.items[i].bad = Some(format!(
                            "broken link: its predecessor (seq {}, hash {}…) is in no export; \
                             the exports have a gap (export the ledger again without --since)",
                            self.items[i].entry.body.seq.saturating_sub(1),
                            short(prev)
                        ));
                        root[i] = Some(Root::Item(i as u32));
                        continue;
                    }
                },
                Some(p) if !self.items[p as usize].valid => root[p as usize],
                Some(p) => {
                    let pe = &self.items[p as usize].entry;
                    match check_link(&pe.body, &pe.hash, &self.items[i].entry.body) {
                        Ok(()) => None,
                        Err(pr) => {
                            self.items[i].bad = Some(pr.to_string());
                            root[i] = Some(Root::Item(i as u32));
                            continue;
                        }
                    }
                }
            };
            match r {
                None => self.items[i].valid = true,
                Some(r) => {
                    root[i] = Some(r);
                    *self.excluded_under.entry(r).or_default() += 1;
                }
            }
        }
    }

    /// Check the signatures that carry weight (every one with `full`). True when one
    /// failed (the caller links again).
    fn signatures(&mut self, ctx: &Ctx) -> bool {
        let Some(key) = self.key else { return false };
        let n = self.items.len();
        let mut children = vec![0u32; n];
        let parents: Vec<Option<u32>> = (0..n)
            .map(|i| {
                if self.items[i].valid && self.items[i].entry.body.seq > 0 {
                    self.parent(i)
                } else {
                    None
                }
            })
            .collect();
        for p in parents.iter().flatten() {
            children[*p as usize] += 1;
        }
        let mut failed = false;
        for i in 0..n {
            if !self.items[i].valid || self.items[i].sig_ok {
                continue;
            }
            let at_fork = parents[i].is_some_and(|p| children[p as usize] >= 2);
            if ctx.full || children[i] == 0 || children[i] >= 2 || at_fork {
                failed |= !self.check_sig(i, &key);
            }
        }
        failed
    }

    fn check_sig(&mut self, i: usize, key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        let item = &mut self.items[i];
        self.report.signatures_checked += 1;
        let msg = message_from_canonical(&item.canonical);
        if check_signature(key, &msg, &item.entry.sig).is_ok() {
            item.sig_ok = true;
            true
        } else {
            item.bad = Some("bad signature".into());
            false
        }
    }

    /// Make sure the entry `hash` has a verified signature (for evidence). False when it
    /// has a bad one (it is then marked; the caller judges again).
    pub fn ensure_signature(&mut self, hash: &str) -> bool {
        let (Some(&i), Some(key)) = (self.by_hash.get(hash), self.key) else {
            return true;
        };
        self.items[i as usize].sig_ok || self.check_sig(i as usize, &key)
    }

    /// Replay the valid entries by `at` through the rules. False when the rules refused
    /// an entry (it is marked; the caller links again).
    fn replay(&mut self, ctx: &Ctx) -> bool {
        let mut order: Vec<u32> = (0..self.items.len() as u32)
            .filter(|i| self.items[*i as usize].valid)
            .collect();
        order.sort_by(|a, b| {
            let (x, y) = (&self.items[*a as usize].node, &self.items[*b as usize].node);
            (x.at, x.seq, &x.hash).cmp(&(y.at, y.seq, &y.hash))
        });
        let mut g = Graph::new(&self.report.instance);
        self.verdicts.clear();
        self.report.tolerated = Tolerated::default();
        for (pos, &i) in order.iter().enumerate() {
            let item = &mut self.items[i as usize];
            item.order = pos as u32;
            match g.observe(&item.node, item.node.at, ctx.policy) {
                Ok(o) => {
                    item.loc = Some(o.loc);
                    match o.decision {
                        Decision::Verdict(v) => self.verdicts.push((pos as u32, *v)),
                        Decision::Tolerated(Tolerance::LateHistory) => {
                            self.report.tolerated.late_history += 1
                        }
                        Decision::Tolerated(Tolerance::AllowConcurrent { .. }) => {
                            self.report.tolerated.allow_concurrent += 1
                        }
                        Decision::StillDisabled { .. } => self.report.tolerated.still_disabled += 1,
                        Decision::Genesis | Decision::Extended | Decision::Known => {}
                    }
                }
                Err(e) => {
                    item.bad = Some(format!("the detection rules cannot place it: {e}"));
                    return false;
                }
            }
        }
        self.replay = order;
        self.graph = Some(g);
        true
    }

    /// Links, signatures, replay, evidence: again until nothing new fails.
    fn run(&mut self, ctx: &Ctx) {
        let mut topo: Vec<u32> = (0..self.items.len() as u32).collect();
        topo.sort_by(|a, b| {
            let (x, y) = (&self.items[*a as usize].node, &self.items[*b as usize].node);
            (x.seq, &x.hash).cmp(&(y.seq, &y.hash))
        });
        for _ in 0..=self.items.len() {
            self.link(&topo);
            if self.signatures(ctx) {
                continue;
            }
            if !self.replay(ctx) {
                continue;
            }
            match self.instance_evidence() {
                Some(docs) => {
                    self.report.verdicts = docs;
                    break;
                }
                None => continue,
            }
        }
    }

    /// Items of branch `b` after seq `after`, known by replay position `upto`, by seq.
    fn branch_items(&self, b: BranchId, after: u64, upto: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .replay
            .iter()
            .copied()
            .filter(|i| {
                let it = &self.items[*i as usize];
                it.order <= upto
                    && it.entry.body.seq > after
                    && it.loc.is_some_and(|l| l.branch == b)
            })
            .collect();
        v.sort_by_key(|i| self.items[*i as usize].entry.body.seq);
        v
    }

    /// The signed entry `hash` (for evidence).
    pub fn entry(&self, hash: &str) -> Option<&Entry> {
        self.by_hash
            .get(hash)
            .map(|i| &self.items[*i as usize].entry)
    }

    /// Evidence documents of the instance-level verdicts. `None` when an entry they cite
    /// has a bad signature (it is marked; the caller judges again).
    fn instance_evidence(&mut self) -> Option<Vec<Value>> {
        let verdicts = std::mem::take(&mut self.verdicts);
        let mut docs = Vec::new();
        let mut ok = true;
        for (pos, v) in &verdicts {
            let mut cited: Vec<String> = Vec::new();
            let signed = |hash: &str, cited: &mut Vec<String>| -> Value {
                cited.push(hash.to_string());
                match self.entry(hash) {
                    Some(e) => evidence::signed(e),
                    None => json!({"hash": hash, "missing": true}),
                }
            };
            let fork = v.fork.as_ref().map(|f| {
                json!({
                    "point": signed(&f.point.hash, &mut cited),
                    "point_branch": f.point.branch,
                    "children": [signed(&f.children[0].hash, &mut cited), signed(&f.children[1].hash, &mut cited)],
                })
            });
            let trigger = signed(&v.trigger.hash, &mut cited);
            let witness = v.witness.as_ref().map(|w| signed(&w.hash, &mut cited));
            let after = v.fork.as_ref().map_or(0, |f| f.point.seq);
            let mut branches = Vec::new();
            for b in &v.branches {
                let rows = self.branch_items(b.branch, after, *pos);
                let limit = crate::service::evidence::TIMELINE_LIMIT as usize;
                let truncated = rows.len() > limit;
                let timeline: Vec<Value> = rows[rows.len().saturating_sub(limit)..]
                    .iter()
                    .map(|i| {
                        let e = &self.items[*i as usize].entry;
                        cited.push(e.hash.clone());
                        evidence::signed(e)
                    })
                    .collect();
                branches.push(json!({
                    "branch": b.branch, "fork": b.fork, "first": b.first, "tip": b.tip,
                    "entries": b.entries, "state_before": b.state_before,
                    "state_after": b.state_after, "timeline": timeline, "truncated": truncated,
                }));
            }
            for h in &cited {
                ok &= self.ensure_signature(h);
            }
            docs.push(evidence::instance_doc(
                self.report.serial.as_deref(),
                &self.report.instance,
                self.report.public_key.as_deref().unwrap_or_default(),
                v,
                fork,
                trigger,
                witness,
                branches,
            ));
        }
        self.verdicts = verdicts;
        ok.then_some(docs)
    }

    /// Judge again after [`Judged::ensure_signature`] found a bad signature (the entry is
    /// marked bad and left out with its descendants).
    pub fn rejudge(&mut self, ctx: &Ctx) {
        self.run(ctx);
        self.finish(ctx);
    }

    /// Fill in the report from the final state.
    fn finish(&mut self, ctx: &Ctx) {
        let r = &mut self.report;
        let mut problems = self.load_problems.clone();
        for (i, p) in problems.iter_mut().enumerate() {
            p.excluded += self
                .excluded_under
                .get(&Root::Load(i))
                .copied()
                .unwrap_or(0);
        }
        for (i, it) in self.items.iter().enumerate() {
            if let Some(reason) = &it.bad {
                problems.push(Problem {
                    file: r.files.get(it.file as usize).cloned(),
                    seq: Some(it.entry.body.seq),
                    hash: Some(it.entry.hash.clone()),
                    problem: reason.clone(),
                    excluded: self
                        .excluded_under
                        .get(&Root::Item(i as u32))
                        .copied()
                        .unwrap_or(0),
                });
            }
        }
        r.problems = problems;
        r.entries = self.replay.len() as u64;
        r.review = self.verdicts.iter().any(|(_, v)| v.review);
        let mut verdict = self
            .verdicts
            .iter()
            .map(|(_, v)| CcVerdict::from_kind(v.kind))
            .max()
            .unwrap_or(CcVerdict::Clean);
        if !r.problems.is_empty() {
            verdict = verdict.max(CcVerdict::Invalid);
        }
        r.verdict = verdict;
        r.branches.clear();
        let Some(g) = &self.graph else { return };
        let mut per_branch: HashMap<BranchId, (Vec<String>, u64, u64)> = HashMap::new();
        for &i in &self.replay {
            let it = &self.items[i as usize];
            let Some(loc) = it.loc else { continue };
            let slot = per_branch.entry(loc.branch).or_default();
            match it.node.kind.as_str() {
                "boot" => slot.0.push(it.entry.body.at.clone()),
                "checkin" => slot.1 += 1,
                "checkin_failed" => slot.2 += 1,
                _ => {}
            }
        }
        for b in &g.state.branches {
            let (boots, checkins, failed) = per_branch.remove(&b.id).unwrap_or_default();
            r.branches.push(BranchReport {
                branch: b.id,
                state: b.state.name().to_string(),
                fork: b.fork.as_ref().map(|f| ForkAt {
                    branch: f.branch,
                    seq: f.seq,
                    hash: f.hash.clone(),
                    at: self
                        .by_hash
                        .get(&f.hash)
                        .map(|i| self.items[*i as usize].entry.body.at.clone())
                        .unwrap_or_default(),
                }),
                first: point(&b.first),
                tip: point(&b.tip),
                entries: b.entries,
                boots,
                checkins,
                checkins_failed: failed,
            });
        }
        if ctx.timelines {
            self.timeline();
        }
    }

    /// Lanes and marks for the HTML report.
    pub fn timeline(&mut self) {
        let Some(g) = &self.graph else { return };
        let mut marks = Vec::new();
        for &i in &self.replay {
            let it = &self.items[i as usize];
            let Some(loc) = it.loc else { continue };
            marks.push(Mark {
                branch: loc.branch,
                at: it.node.at,
                seq: it.node.seq,
                kind: it.node.kind.clone(),
            });
        }
        let at_of = |h: &str| self.by_hash.get(h).map(|i| self.items[*i as usize].node.at);
        let lanes = g
            .state
            .branches
            .iter()
            .map(|b| Lane {
                branch: b.id,
                label: format!("branch {}", b.id),
                state: b.state.name().to_string(),
                from: b.first.at,
                to: b.tip.at,
                fork: b
                    .fork
                    .as_ref()
                    .and_then(|f| at_of(&f.hash).map(|t| (f.branch, t, f.seq))),
            })
            .collect();
        let mut notes = Vec::new();
        for (_, v) in &self.verdicts {
            let lane = |h: &str| {
                self.by_hash
                    .get(h)
                    .and_then(|i| self.items[*i as usize].loc)
                    .map(|l| l.branch)
            };
            if let Some(b) = lane(&v.trigger.hash) {
                notes.push((
                    b,
                    v.trigger.at,
                    format!("{} ({})", v.kind.as_str(), v.rule.code()),
                ));
            }
            if let Some(w) = &v.witness
                && let Some(b) = lane(&w.hash)
            {
                notes.push((b, w.at, format!("witness of verdict {}", v.number)));
            }
        }
        self.report.timeline = Some(Timeline {
            lanes,
            marks,
            notes,
            spans: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::ledger::entry::{Body, GENESIS_PREV};
    use crate::ledger::export::EXPORT_FORMAT;
    use std::path::Path;

    const INST: &str = "00112233445566778899aabbccddeeff";

    /// A ledger whose genesis names no serial, then `registered` SN-R at seq 2.
    fn ledger(key: &SigningKey) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for (seq, kind) in ["genesis", "boot", "registered", "checkin"]
            .into_iter()
            .enumerate()
        {
            let mut data = serde_json::Map::new();
            match kind {
                "genesis" => {
                    data.insert("public_key".into(), key.public_key_b64().into());
                    data.insert("serial".into(), Value::Null);
                }
                "registered" => {
                    data.insert("serial".into(), "SN-R".into());
                }
                _ => {}
            }
            let body = Body {
                v: 1,
                instance: INST.into(),
                seq: seq as u64,
                prev: out
                    .last()
                    .map_or(GENESIS_PREV.to_string(), |e| e.hash.clone()),
                kind: kind.into(),
                at: format!("2027-01-0{}T00:00:00.000Z", seq + 1),
                boot_id: "b".into(),
                uptime_ms: 1,
                data,
            };
            out.push(Entry::seal(body, key).unwrap());
        }
        out
    }

    fn bundle(
        dir: &Path,
        name: &str,
        serial: Option<&str>,
        key: &SigningKey,
        e: &[Entry],
    ) -> FileRef {
        let path = dir.join(name);
        let doc = json!({"format": EXPORT_FORMAT, "serial": serial, "instance": INST,
            "public_key": key.public_key_b64(), "exported_at": "x", "entries": e});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        FileRef {
            path,
            serial: serial.map(str::to_string),
            instance: INST.into(),
            public_key: key.public_key_b64(),
            bytes: 0,
        }
    }

    fn judge(files: &[FileRef]) -> InstanceReport {
        let policy = Policy::default();
        let ctx = Ctx {
            policy: &policy,
            full: false,
            limits: Limits::default(),
            timelines: false,
        };
        Judged::judge(INST, files[0].serial.as_deref(), files, &ctx).report
    }

    #[test]
    fn the_serial_is_the_signed_one_and_headers_that_disagree_are_problems() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(&[5; 32]);
        let e = ledger(&key);
        // Exported before the registration (no serial) and after it (SN-R): both right.
        let early = bundle(d.path(), "early.json", None, &key, &e[..2]);
        let late = bundle(d.path(), "late.json", Some("SN-R"), &key, &e);
        let r = judge(&[late.clone(), early.clone()]);
        assert_eq!(r.verdict, CcVerdict::Clean, "{:?}", r.problems);
        assert_eq!(r.serial.as_deref(), Some("SN-R"));
        assert!(r.problems.is_empty() && r.notes.is_empty());

        // A header that names no serial after the registration, or another serial, or a
        // serial before it: problems naming the file, the instance is invalid.
        for (file, header, says) in [
            ("late-null.json", None, "no serial (null)"),
            ("late-other.json", Some("SN-X"), "serial SN-X"),
        ] {
            let f = bundle(d.path(), file, header, &key, &e);
            let r = judge(&[late.clone(), f]);
            assert_eq!(r.verdict, CcVerdict::Invalid);
            assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
            let p = &r.problems[0];
            assert!(p.file.as_deref().unwrap().ends_with(file));
            assert!(p.problem.contains(says), "{}", p.problem);
            assert!(p.problem.contains("says serial SN-R"), "{}", p.problem);
            assert!(
                p.problem.contains("`registered` entry (seq 2)"),
                "{}",
                p.problem
            );
            assert_eq!(r.entries, 4, "the entries are still judged");
        }
        let f = bundle(d.path(), "early-sn.json", Some("SN-R"), &key, &e[..2]);
        let r = judge(&[f]);
        assert_eq!(r.verdict, CcVerdict::Invalid);
        assert!(
            r.problems[0].problem.contains("its genesis entry"),
            "{:?}",
            r.problems
        );

        // No export holds the genesis: invalid, and the notes say the serial is unverified.
        let f = bundle(d.path(), "tail.json", Some("SN-R"), &key, &e[1..]);
        let r = judge(&[f]);
        assert_eq!(r.verdict, CcVerdict::Invalid);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("serial cannot be verified") && n.contains("SN-R")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_malformed_entry_is_a_problem_and_the_others_are_judged() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(&[6; 32]);
        let e = ledger(&key);
        let path = d.path().join("a.json");
        let mut doc = json!({"format": EXPORT_FORMAT, "serial": "SN-R", "instance": INST,
            "public_key": key.public_key_b64(), "exported_at": "x", "entries": e});
        doc["entries"][1].as_object_mut().unwrap().remove("sig");
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let f = FileRef {
            path,
            serial: Some("SN-R".into()),
            instance: INST.into(),
            public_key: key.public_key_b64(),
            bytes: 0,
        };
        let r = judge(std::slice::from_ref(&f));
        assert_eq!(r.verdict, CcVerdict::Invalid);
        let p = &r.problems[0];
        assert_eq!(p.seq, Some(1));
        assert_eq!(p.hash.as_deref(), Some(e[1].hash.as_str()));
        assert!(p.problem.contains("entry 1 of the bundle"), "{}", p.problem);
        assert_eq!(p.excluded, 2, "its descendants are left out because of it");
        assert_eq!((r.entries_read, r.entries), (4, 1));
        // A good copy in another export: everything is judged, the bad copy still shows.
        let good = bundle(d.path(), "b.json", Some("SN-R"), &key, &e);
        let r = judge(&[f, good]);
        assert_eq!(r.verdict, CcVerdict::Invalid);
        assert_eq!(r.entries, 4);
        assert_eq!(r.problems.len(), 1);
    }
}
