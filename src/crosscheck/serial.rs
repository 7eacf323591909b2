//! One serial: judge each of its instances, then replay all their entries together by
//! `at` through the serial-level rule ([`crate::rules::SerialState`], rule 4: a newly
//! activated instance supersedes the active one; an older one that writes again is a
//! concurrent duplicate, or switching when it rebooted). Instances exported without a
//! serial are judged alone. Memory: this serial's instances only.

use serde_json::Value;

use super::evidence;
use super::html::{Lane, Mark, Timeline};
use super::input::{FileNote, FileRef};
use super::instance::{Ctx, Judged};
use super::report::{SerialReport, Verdict};
use crate::rules::{BranchId, SerialDecision, SerialState, SerialVerdict};
use crate::service::checkin::serial_verdict_id;

/// The bundles of one serial, grouped by instance (both sorted).
#[derive(Debug, Clone)]
pub struct Group {
    pub serial: Option<String>,
    pub instances: Vec<(String, Vec<FileRef>)>,
}

/// Judge one group. Returns the report and the files that could not be read.
pub fn judge_group(g: &Group, ctx: &Ctx) -> (SerialReport, Vec<FileNote>) {
    let mut judged: Vec<Judged> = g
        .instances
        .iter()
        .map(|(inst, files)| Judged::judge(inst, g.serial.as_deref(), files, ctx))
        .collect();
    let mut verdicts: Vec<(SerialVerdict, Value)> = Vec::new();
    let mut state = None;
    if let Some(serial) = &g.serial
        && judged.len() > 1
    {
        // A bad signature found on an entry cited as evidence leaves it out: judge again.
        for _ in 0..=judged.iter().map(|j| j.items.len()).sum::<usize>() {
            let (vs, bad, st) = replay(serial, &mut judged, ctx);
            verdicts = vs;
            state = Some(st);
            if bad.is_empty() {
                break;
            }
            for i in bad {
                judged[i].rejudge(ctx);
            }
        }
    }
    for (v, _) in &verdicts {
        let id = serial_verdict_id(g.serial.as_deref().unwrap_or_default(), v.number);
        let kind = Verdict::from_kind(v.kind);
        for j in judged.iter_mut() {
            let r = &mut j.report;
            if v.disabled.contains(&r.instance) || v.trigger_instance == r.instance {
                r.verdict = r.verdict.max(kind);
                r.serial_verdicts.push(id.clone());
            }
        }
    }
    let timeline = match &state {
        Some(st) if ctx.timelines && !verdicts.is_empty() => Some(timeline(&judged, st, &verdicts)),
        _ => None,
    };
    let mut unreadable = Vec::new();
    let mut instances = Vec::new();
    for mut j in judged {
        unreadable.append(&mut j.unreadable);
        if !ctx.timelines || j.report.verdict == Verdict::Clean {
            j.report.timeline = None;
        }
        instances.push(j.report);
    }
    let verdict = instances
        .iter()
        .map(|i| i.verdict)
        .max()
        .unwrap_or(Verdict::Clean);
    (
        SerialReport {
            serial: g.serial.clone(),
            verdict,
            instances,
            verdicts: verdicts.into_iter().map(|(_, d)| d).collect(),
            timeline,
        },
        unreadable,
    )
}

/// One lane per instance (from its first entry to its last, its entries as marks), the
/// entries that decided each serial-level verdict labelled, and the time both instances
/// of each verdict were in use (where their lanes overlap, and at least from the newer
/// one's first entry to the older one's entry that triggered the verdict) shaded.
fn timeline(judged: &[Judged], st: &SerialState, verdicts: &[(SerialVerdict, Value)]) -> Timeline {
    let mut lanes = Vec::new();
    let mut marks = Vec::new();
    let lane_of = |inst: &str| {
        judged
            .iter()
            .position(|j| j.report.instance == inst)
            .map(|i| i as BranchId)
    };
    for (n, j) in judged.iter().enumerate() {
        let node = |i: &u32| &j.items[*i as usize].node;
        let (Some(first), Some(last)) = (j.replay.first().map(node), j.replay.last().map(node))
        else {
            continue;
        };
        let state = st
            .members
            .iter()
            .find(|m| m.instance == j.report.instance)
            .map_or("-", |m| m.state.name());
        lanes.push(Lane {
            branch: n as BranchId,
            label: format!(
                "instance {}…",
                j.report.instance.get(..12).unwrap_or_default()
            ),
            state: state.to_string(),
            from: first.at,
            to: last.at,
            fork: None,
        });
        marks.extend(j.replay.iter().map(node).map(|nd| Mark {
            branch: n as BranchId,
            at: nd.at,
            seq: nd.seq,
            kind: nd.kind.clone(),
        }));
    }
    let mut notes = Vec::new();
    let mut spans = Vec::new();
    let extent = |l: Option<BranchId>| {
        l.and_then(|l| lanes.iter().find(|x| x.branch == l))
            .map(|x| (x.from, x.to))
    };
    for (v, _) in verdicts {
        let (tl, wl) = (lane_of(&v.trigger_instance), lane_of(&v.witness_instance));
        if let Some(l) = tl {
            notes.push((
                l,
                v.trigger.at,
                format!("{} ({}), s{}", v.kind.as_str(), v.rule.code(), v.number),
            ));
        }
        if let (Some(w), Some(l)) = (&v.witness, wl) {
            notes.push((l, w.at, format!("newer instance, s{}", v.number)));
        }
        // Both instances ran while both lanes run; at least from the newer one's first
        // entry to the older one's entry that triggered the verdict.
        if let (Some(a), Some(b)) = (extent(tl), extent(wl)) {
            let from = a.0.max(b.0).min(v.trigger.at);
            let to = a.1.min(b.1).max(v.trigger.at);
            let what = match v.kind {
                crate::rules::Kind::Switching => "both instances in use, in turns",
                _ => "both instances ran",
            };
            spans.push((from, to, format!("s{}: {what}", v.number)));
        }
    }
    Timeline {
        lanes,
        marks,
        notes,
        spans,
    }
}

/// Replay every instance's valid entries by (`at`, seq, instance, hash). Returns the
/// verdicts with their evidence, and the instances in which a cited entry failed its
/// signature check.
/// The final serial state comes last.
fn replay(
    serial: &str,
    judged: &mut [Judged],
    ctx: &Ctx,
) -> (Vec<(SerialVerdict, Value)>, Vec<usize>, SerialState) {
    let mut merged: Vec<(usize, u32)> = Vec::new();
    for (j, inst) in judged.iter().enumerate() {
        merged.extend(inst.replay.iter().map(|i| (j, *i)));
    }
    let node = |(j, i): (usize, u32)| &judged[j].items[i as usize].node;
    merged.sort_by(|a, b| {
        let (x, y) = (node(*a), node(*b));
        (x.at, x.seq, a.0, &x.hash).cmp(&(y.at, y.seq, b.0, &y.hash))
    });
    let mut st = SerialState::new(serial);
    let mut found: Vec<(SerialVerdict, SerialState)> = Vec::new();
    for (j, i) in merged {
        let n = &judged[j].items[i as usize].node;
        if let SerialDecision::Verdict(v) =
            st.observe(&judged[j].report.instance, n, n.at, ctx.policy)
        {
            found.push((*v, st.clone()));
        }
    }
    let names: Vec<String> = judged.iter().map(|j| j.report.instance.clone()).collect();
    let index = |inst: &str| names.iter().position(|n| n == inst);
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for (v, snapshot) in found {
        let ti = index(&v.trigger_instance);
        let wi = index(&v.witness_instance);
        let mut item = |idx: Option<usize>, hash: &str| -> Option<Value> {
            let j = &mut judged[idx?];
            if !j.ensure_signature(hash) {
                bad.push(idx?);
            }
            j.entry(hash).map(evidence::signed)
        };
        let trigger = item(ti, &v.trigger.hash).unwrap_or(Value::Null);
        let witness = v.witness.as_ref().and_then(|w| item(wi, &w.hash));
        let key = |idx: Option<usize>| idx.and_then(|i| judged[i].report.public_key.clone());
        let doc = evidence::serial_doc(
            &snapshot,
            &v,
            trigger,
            key(ti).as_deref(),
            witness,
            key(wi).as_deref(),
        );
        out.push((v, doc));
    }
    bad.sort_unstable();
    bad.dedup();
    (out, bad, st)
}
