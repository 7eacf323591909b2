//! Evidence of cross-check verdicts, in the service's format (`vmledger-evidence/v1`,
//! `schemas/evidence.schema.json`), so that evidence from the service and from the
//! cross-check is one format and [`crate::service::evidence::verify`] re-checks both.
//!
//! The one difference is what the times mean: the cross-check observes each entry at its
//! own `at`, so every item's `arrived_at` is the entry's `at` (and documents carry
//! `"source": "crosscheck"`). This module only builds values.

use serde_json::{Value, json};

use crate::ledger::entry::Entry;
use crate::rules::{SerialState, SerialVerdict, Verdict};
use crate::service::checkin::{instance_verdict_id, serial_verdict_id};
use crate::service::evidence::EVIDENCE_FORMAT;
use crate::time;

/// Serial name used in evidence for instances exported without one.
pub const NO_SERIAL: &str = "-";

/// A signed entry as an evidence item, observed at its own `at`.
pub fn signed(e: &Entry) -> Value {
    json!({
        "entry": {"body": serde_json::to_value(&e.body).unwrap_or(Value::Null), "hash": e.hash, "sig": e.sig},
        "arrived_at": e.body.at,
    })
}

/// The evidence document of an instance-level verdict.
#[allow(clippy::too_many_arguments)]
pub fn instance_doc(
    serial: Option<&str>,
    instance: &str,
    public_key: &str,
    v: &Verdict,
    fork: Option<Value>,
    trigger: Value,
    witness: Option<Value>,
    branches: Vec<Value>,
) -> Value {
    json!({
        "format": EVIDENCE_FORMAT,
        "source": "crosscheck",
        "verdict": instance_verdict_id(instance, v.number),
        "scope": "instance",
        "serial": serial.unwrap_or(NO_SERIAL),
        "instance": instance,
        "public_key": public_key,
        "kind": v.kind.as_str(),
        "rule": v.rule.code(),
        "decided_at": time::format_at(v.observed),
        "review": v.review,
        "explanation": v.explanation,
        "primary_branch": v.primary,
        "disabled_branches": v.disabled,
        "superseded_branches": v.superseded,
        "fork": fork.unwrap_or(Value::Null),
        "trigger": trigger,
        "witness": witness.unwrap_or(Value::Null),
        "branches": branches,
    })
}

/// The evidence document of a serial-level verdict.
pub fn serial_doc(
    state: &SerialState,
    v: &SerialVerdict,
    trigger: Value,
    trigger_key: Option<&str>,
    witness: Option<Value>,
    witness_key: Option<&str>,
) -> Value {
    let members: Vec<Value> = state
        .members
        .iter()
        .map(|m| {
            json!({"instance": m.instance, "activated": time::format_at(m.activated),
                   "state": m.state.name(), "first": m.first, "last": m.last})
        })
        .collect();
    json!({
        "format": EVIDENCE_FORMAT,
        "source": "crosscheck",
        "verdict": serial_verdict_id(&state.serial, v.number),
        "scope": "serial",
        "serial": state.serial,
        "instance": v.trigger_instance,
        "public_key": trigger_key,
        "kind": v.kind.as_str(),
        "rule": v.rule.code(),
        "decided_at": time::format_at(v.observed),
        "review": false,
        "explanation": v.explanation,
        "disabled_instances": v.disabled,
        "trigger": trigger,
        "witness_instance": v.witness_instance,
        "witness_public_key": witness_key,
        "witness": witness.unwrap_or(Value::Null),
        "members": members,
    })
}
