//! One serial: judge each of its instances, then replay all their entries together by
//! `at` through the serial-level rule ([`crate::rules::SerialState`], rule 4: a newly
//! activated instance supersedes the active one; an older one that writes again is a
//! concurrent duplicate, or switching when it rebooted). Instances exported without a
//! serial are judged alone. Memory: this serial's instances only.

use serde_json::Value;

use super::evidence;
use super::input::{FileNote, FileRef};
use super::instance::{Ctx, Judged};
use super::report::{SerialReport, Verdict};
use crate::rules::{SerialDecision, SerialState, SerialVerdict};
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
    if let Some(serial) = &g.serial
        && judged.len() > 1
    {
        // A bad signature found on an entry cited as evidence leaves it out: judge again.
        for _ in 0..=judged.iter().map(|j| j.items.len()).sum::<usize>() {
            let (vs, bad) = replay(serial, &mut judged, ctx);
            verdicts = vs;
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
        },
        unreadable,
    )
}

/// Replay every instance's valid entries by (`at`, seq, instance, hash). Returns the
/// verdicts with their evidence, and the instances in which a cited entry failed its
/// signature check.
fn replay(
    serial: &str,
    judged: &mut [Judged],
    ctx: &Ctx,
) -> (Vec<(SerialVerdict, Value)>, Vec<usize>) {
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
    (out, bad)
}
