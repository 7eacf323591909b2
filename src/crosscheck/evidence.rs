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
use crate::service::evidence::{
    InstanceEvidence, SerialEvidence, instance_document, serial_document,
};

/// `source` of the documents the cross-check writes.
const SOURCE: &str = "crosscheck";

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
    instance_document(InstanceEvidence {
        source: Some(SOURCE),
        id: &instance_verdict_id(instance, v.number),
        serial: serial.unwrap_or(NO_SERIAL),
        instance,
        public_key,
        verdict: v,
        fork: fork.unwrap_or(Value::Null),
        trigger,
        witness: witness.unwrap_or(Value::Null),
        branches,
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
    serial_document(SerialEvidence {
        source: Some(SOURCE),
        id: &serial_verdict_id(&state.serial, v.number),
        state,
        verdict: v,
        trigger,
        trigger_key: json!(trigger_key),
        witness: witness.unwrap_or(Value::Null),
        witness_key: json!(witness_key),
    })
}
