//! Evidence documents (`vmledger-evidence/v1`, spec in `docs/formats/protocol.md`): what a
//! verdict rests on, in a form anyone can re-verify offline with the instance's public
//! key: the fork point and the two signed entries with the same `prev`, the signed entry
//! that triggered the rule, the signed entry on the other side that proves the timing,
//! and each involved branch's timeline (signed entries with the service's arrival times).
//!
//! [`verify`] re-checks a document: every signed entry's hash and signature, the fork
//! children's shared `prev`, and the timelines' chains. It needs nothing but the document.

use serde_json::{Value, json};

use super::store::{InstanceRecord, SerialRecord, StoreError, StoredEntry, Tx, VerdictRecord};
use crate::keys;
use crate::ledger::entry::{Body, Entry};
use crate::rules::{EntryRef, SerialState, SerialVerdict, Verdict};
use crate::time;

/// The `format` of evidence documents.
pub const EVIDENCE_FORMAT: &str = "vmledger-evidence/v1";

/// Entries per branch timeline kept in evidence (the newest ones).
pub const TIMELINE_LIMIT: u32 = 500;

/// What an instance-level evidence document holds, gathered by its producer (the
/// service from its store, the cross-check from exported ledgers); [`instance_document`]
/// lays it out, so both produce one format.
pub struct InstanceEvidence<'a> {
    /// `Some("crosscheck")` for documents the cross-check writes; the service writes none.
    pub source: Option<&'static str>,
    pub id: &'a str,
    pub serial: &'a str,
    pub instance: &'a str,
    pub public_key: &'a str,
    pub verdict: &'a Verdict,
    pub fork: Value,
    pub trigger: Value,
    pub witness: Value,
    pub branches: Vec<Value>,
}

/// The `vmledger-evidence/v1` document of an instance-level verdict.
pub fn instance_document(p: InstanceEvidence<'_>) -> Value {
    let v = p.verdict;
    let mut doc = json!({
        "format": EVIDENCE_FORMAT,
        "verdict": p.id,
        "scope": "instance",
        "serial": p.serial,
        "instance": p.instance,
        "public_key": p.public_key,
        "kind": v.kind.as_str(),
        "rule": v.rule.code(),
        "decided_at": time::format_at(v.observed),
        "review": v.review,
        "explanation": v.explanation,
        "primary_branch": v.primary,
        "disabled_branches": v.disabled,
        "superseded_branches": v.superseded,
        "fork": p.fork,
        "trigger": p.trigger,
        "witness": p.witness,
        "branches": p.branches,
    });
    if let Some(source) = p.source {
        doc["source"] = json!(source);
    }
    doc
}

/// What a serial-level evidence document holds; [`serial_document`] lays it out.
pub struct SerialEvidence<'a> {
    /// As in [`InstanceEvidence::source`].
    pub source: Option<&'static str>,
    pub id: &'a str,
    pub state: &'a SerialState,
    pub verdict: &'a SerialVerdict,
    pub trigger: Value,
    /// The trigger instance's public key (`null` when unknown).
    pub trigger_key: Value,
    pub witness: Value,
    /// The witness instance's public key (`null` when unknown).
    pub witness_key: Value,
}

/// The `vmledger-evidence/v1` document of a serial-level verdict.
pub fn serial_document(p: SerialEvidence<'_>) -> Value {
    let v = p.verdict;
    let members: Vec<Value> = p
        .state
        .members
        .iter()
        .map(|m| {
            json!({"instance": m.instance, "activated": time::format_at(m.activated),
                   "state": m.state.name(), "first": m.first, "last": m.last})
        })
        .collect();
    let mut doc = json!({
        "format": EVIDENCE_FORMAT,
        "verdict": p.id,
        "scope": "serial",
        "serial": p.state.serial,
        "instance": v.trigger_instance,
        "public_key": p.trigger_key,
        "kind": v.kind.as_str(),
        "rule": v.rule.code(),
        "decided_at": time::format_at(v.observed),
        "review": false,
        "explanation": v.explanation,
        "disabled_instances": v.disabled,
        "trigger": p.trigger,
        "witness_instance": v.witness_instance,
        "witness_public_key": p.witness_key,
        "witness": p.witness,
        "members": members,
    });
    if let Some(source) = p.source {
        doc["source"] = json!(source);
    }
    doc
}

/// A stored entry as a signed entry (`{"body", "hash", "sig"}`) with its arrival time.
fn signed(e: &StoredEntry) -> Value {
    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
    json!({"entry": {"body": body, "hash": e.hash, "sig": e.sig}, "arrived_at": e.arrived_at})
}

fn signed_ref(tx: &mut dyn Tx, instance: &str, r: &EntryRef) -> Result<Value, StoreError> {
    Ok(match tx.entry(instance, r.seq, &r.hash)? {
        Some(e) => signed(&e),
        None => json!({"hash": r.hash, "missing": true}),
    })
}

/// Build the evidence record of an instance-level verdict (after its entries are stored).
pub fn for_instance(
    tx: &mut dyn Tx,
    id: &str,
    serial: &str,
    inst: &InstanceRecord,
    v: &Verdict,
) -> Result<VerdictRecord, StoreError> {
    let fork = match &v.fork {
        Some(f) => {
            let point = match tx.entry(&inst.instance, f.point.seq, &f.point.hash)? {
                Some(e) => signed(&e),
                None => json!({"hash": f.point.hash, "missing": true}),
            };
            let a = signed_ref(tx, &inst.instance, &f.children[0])?;
            let b = signed_ref(tx, &inst.instance, &f.children[1])?;
            json!({"point": point, "point_branch": f.point.branch, "children": [a, b]})
        }
        None => Value::Null,
    };
    let trigger = signed_ref(tx, &inst.instance, &v.trigger)?;
    let witness = match &v.witness {
        Some(w) => signed_ref(tx, &inst.instance, w)?,
        None => Value::Null,
    };
    let after = v.fork.as_ref().map_or(0, |f| f.point.seq);
    let mut branches = Vec::new();
    for b in &v.branches {
        let rows = tx.branch_entries(&inst.instance, b.branch, after, TIMELINE_LIMIT + 1)?;
        let truncated = rows.len() > TIMELINE_LIMIT as usize;
        let timeline: Vec<Value> = rows
            .iter()
            .skip(usize::from(truncated))
            .map(signed)
            .collect();
        branches.push(json!({
            "branch": b.branch,
            "fork": b.fork,
            "first": b.first,
            "tip": b.tip,
            "entries": b.entries,
            "state_before": b.state_before,
            "state_after": b.state_after,
            "timeline": timeline,
            "truncated": truncated,
        }));
    }
    let doc = instance_document(InstanceEvidence {
        source: None,
        id,
        serial,
        instance: &inst.instance,
        public_key: &inst.public_key,
        verdict: v,
        fork,
        trigger,
        witness,
        branches,
    });
    Ok(VerdictRecord {
        id: id.to_string(),
        serial: serial.to_string(),
        instance: inst.instance.clone(),
        kind: v.kind.as_str().to_string(),
        rule: v.rule.code().to_string(),
        decided_at: time::format_at(v.observed),
        review: v.review,
        evidence: doc.to_string(),
    })
}

/// Build the evidence record of a serial-level verdict.
pub fn for_serial(
    tx: &mut dyn Tx,
    id: &str,
    serial: &SerialRecord,
    v: &SerialVerdict,
) -> Result<VerdictRecord, StoreError> {
    let key_of = |tx: &mut dyn Tx, i: &str| -> Result<Value, StoreError> {
        Ok(tx
            .instance(i)?
            .map_or(Value::Null, |r| Value::String(r.public_key)))
    };
    let trigger = signed_ref(tx, &v.trigger_instance, &v.trigger)?;
    let witness = match &v.witness {
        Some(w) => signed_ref(tx, &v.witness_instance, w)?,
        None => Value::Null,
    };
    let doc = serial_document(SerialEvidence {
        source: None,
        id,
        state: &serial.state,
        verdict: v,
        trigger,
        trigger_key: key_of(tx, &v.trigger_instance)?,
        witness,
        witness_key: key_of(tx, &v.witness_instance)?,
    });
    Ok(VerdictRecord {
        id: id.to_string(),
        serial: serial.serial.clone(),
        instance: v.trigger_instance.clone(),
        kind: v.kind.as_str().to_string(),
        rule: v.rule.code().to_string(),
        decided_at: time::format_at(v.observed),
        review: false,
        evidence: doc.to_string(),
    })
}

/// Why an evidence document does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evidence {what}: {message}")]
pub struct EvidenceError {
    pub what: String,
    pub message: String,
}

fn err(what: impl Into<String>, message: impl Into<String>) -> EvidenceError {
    EvidenceError {
        what: what.into(),
        message: message.into(),
    }
}

/// Check one `{"entry": {...}, "arrived_at": ...}` item; returns the entry.
fn check_item(item: &Value, pk: &[u8; 32], what: &str) -> Result<Entry, EvidenceError> {
    let e: Entry = serde_json::from_value(item.get("entry").cloned().unwrap_or(Value::Null))
        .map_err(|x| err(what, format!("not a signed entry: {x}")))?;
    e.check(Some(pk)).map_err(|p| err(what, p.to_string()))?;
    Ok(e)
}

/// Re-verify an evidence document offline (see the module doc).
pub fn verify(doc: &Value) -> Result<(), EvidenceError> {
    if doc.get("format").and_then(Value::as_str) != Some(EVIDENCE_FORMAT) {
        return Err(err("format", format!("expected {EVIDENCE_FORMAT}")));
    }
    let key = |field: &str| -> Result<[u8; 32], EvidenceError> {
        let text = doc
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| err(field, "missing"))?;
        keys::decode_public_key(text, field).map_err(|e| err(field, e.to_string()))
    };
    let pk = key("public_key")?;
    check_item(&doc["trigger"], &pk, "trigger")?;
    match doc.get("scope").and_then(Value::as_str) {
        Some("serial") => {
            if !doc["witness"].is_null() {
                check_item(&doc["witness"], &key("witness_public_key")?, "witness")?;
            }
            return Ok(());
        }
        Some("instance") => {}
        _ => return Err(err("scope", "expected instance or serial")),
    }
    if !doc["witness"].is_null() {
        check_item(&doc["witness"], &pk, "witness")?;
    }
    if !doc["fork"].is_null() {
        let point = check_item(&doc["fork"]["point"], &pk, "fork.point")?;
        let a = check_item(&doc["fork"]["children"][0], &pk, "fork.children[0]")?;
        let b = check_item(&doc["fork"]["children"][1], &pk, "fork.children[1]")?;
        if a.hash == b.hash {
            return Err(err("fork.children", "the two children are the same entry"));
        }
        for (c, name) in [(&a, "fork.children[0]"), (&b, "fork.children[1]")] {
            rules_link(&point.body, &point.hash, &c.body).map_err(|m| err(name, m))?;
        }
    }
    for (i, br) in doc["branches"].as_array().into_iter().flatten().enumerate() {
        let mut prev: Option<Entry> = None;
        for (j, item) in br["timeline"].as_array().into_iter().flatten().enumerate() {
            let what = format!("branches[{i}].timeline[{j}]");
            let e = check_item(item, &pk, &what)?;
            if let Some(p) = &prev {
                rules_link(&p.body, &p.hash, &e.body).map_err(|m| err(&what, m))?;
            }
            prev = Some(e);
        }
    }
    Ok(())
}

fn rules_link(prev: &Body, prev_hash: &str, next: &Body) -> Result<(), String> {
    crate::ledger::entry::check_link(prev, prev_hash, next).map_err(|p| p.to_string())
}
