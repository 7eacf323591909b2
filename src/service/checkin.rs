//! Handling one check-in, in two steps:
//!
//! 1. [`parse`] and [`prepare`] (no storage, CPU only, run on the HTTP workers in
//!    parallel): the body parses as a `vmledger-checkin-request/v1`, the request signature
//!    verifies under the key it names, every entry belongs to the instance, hashes and
//!    signs correctly under that key, and the entries form one contiguous chain.
//! 2. [`apply`] (inside the writer's transaction): the serial exists, activation and key
//!    pinning, replayed nonces, links to stored entries (an unknown `prev` is a 409 with
//!    the acknowledged head), the detection rules, and the receipt body with the key that
//!    signs it and the key it announces ([`super::keyring::Signers::choose`], from the
//!    request's `service_keys`).
//!
//! Every refusal is a [`Refusal`]: an HTTP status and a `vmledger-service-error/v1` body
//! that says what was wrong and what to do. Storage failures are [`StoreError`]s (503).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::config::Settings;
use super::evidence;
use super::keyring::Signers;
use super::store::{Activation, InstanceRecord, StoreError, StoredEntry, Tx, VerdictRecord};
use crate::keys::{self, PUBLIC_KEY_LEN, SigningKey};
use crate::ledger::entry::Entry;
use crate::protocol::{
    self, CheckinRequest, ProtocolError, ReceiptBody, SERVICE_ERROR_FORMAT, ServiceError, Status,
};
use crate::rules::{
    self, Decision, EntryRef, InstanceState, Loc, Node, Policy, SerialDecision, Standing, Time,
};
use crate::time;

/// Most entries one request may carry (a year of daily check-ins and boots fits easily;
/// the body size limit bounds it too).
pub const MAX_ENTRIES: usize = 100_000;

/// A refused request: HTTP status and error body.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub body: ServiceError,
}

impl Refusal {
    pub fn new(status: u16, error: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: ServiceError {
                format: SERVICE_ERROR_FORMAT.into(),
                error: error.into(),
                message: message.into(),
                acked_seq: None,
                acked_hash: None,
            },
        }
    }

    fn unknown_prev(message: String, head: Option<&EntryRef>) -> Refusal {
        let mut r = Refusal::new(409, protocol::error::UNKNOWN_PREV, message);
        r.body.acked_seq = head.map(|h| h.seq);
        r.body.acked_hash = head.map(|h| h.hash.clone());
        r
    }
}

/// A request whose form, signatures and internal chain have been checked.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub req: CheckinRequest,
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The rules' view of each entry.
    pub nodes: Vec<Node>,
    /// Each entry's canonical body text.
    pub canonical: Vec<String>,
}

/// Parse a request body. Malformed JSON and wrong shapes are 400s naming the problem.
pub fn parse(bytes: &[u8]) -> Result<CheckinRequest, Refusal> {
    serde_json::from_slice::<CheckinRequest>(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Refusal::new(
                400,
                "invalid_request",
                format!("the request does not match vmledger-checkin-request/v1: {e}"),
            ),
            _ => Refusal::new(
                400,
                "malformed_json",
                format!("the request body is not valid JSON: {e}"),
            ),
        }
    })
}

/// Check a parsed request (see the module doc). CPU only.
pub fn prepare(req: CheckinRequest) -> Result<Prepared, Refusal> {
    let public_key = authenticate(&req)?;
    prepare_authenticated(req, public_key)
}

/// Check the request's own form and signature (one Ed25519 verification): the public key
/// it is signed with, which only its holder can sign for. The service rate-limits per
/// instance *and* this key, so that requests naming somebody else's instance, signed
/// with another key, never use up that instance's allowance.
pub fn authenticate(req: &CheckinRequest) -> Result<[u8; PUBLIC_KEY_LEN], Refusal> {
    req.verify().map_err(|e| match e {
        ProtocolError::BadSignature => Refusal::new(
            400,
            "bad_signature",
            "the request signature does not verify under the request's public_key; sign the canonical body with the instance key",
        ),
        ProtocolError::Format { .. } => Refusal::new(400, "bad_format", e.to_string()),
        other => Refusal::new(400, "invalid_request", other.to_string()),
    })
}

/// [`prepare`] for a request [`authenticate`] accepted with `public_key`.
pub fn prepare_authenticated(
    req: CheckinRequest,
    public_key: [u8; PUBLIC_KEY_LEN],
) -> Result<Prepared, Refusal> {
    let b = &req.body;
    if b.entries.len() > MAX_ENTRIES {
        return Err(Refusal::new(
            400,
            "too_many_entries",
            format!(
                "the request carries {} entries; send at most {MAX_ENTRIES} per request",
                b.entries.len()
            ),
        ));
    }
    if let Some(code) = &b.activation_code
        && (code.is_empty() || code.len() > 128)
    {
        return Err(Refusal::new(
            400,
            "invalid_request",
            "activation_code must be 1 to 128 characters",
        ));
    }
    if let Some(hw) = &b.hardware {
        crate::canonical::check(hw, "$.body.hardware")
            .map_err(|e| Refusal::new(400, "invalid_request", e.to_string()))?;
    }
    let mut nodes = Vec::with_capacity(b.entries.len());
    let mut canonical = Vec::with_capacity(b.entries.len());
    let mut prev: Option<&Entry> = None;
    for e in &b.entries {
        let bad = |m: String| {
            Refusal::new(
                400,
                "bad_entry",
                format!("entry seq {} ({}): {m}", e.body.seq, short(&e.hash)),
            )
        };
        if e.body.instance != b.instance {
            return Err(bad(format!(
                "belongs to instance {}, not {}",
                e.body.instance, b.instance
            )));
        }
        let text = e.check(Some(&public_key)).map_err(|p| bad(p.to_string()))?;
        if let Some(p) = prev {
            crate::ledger::entry::check_link(&p.body, &p.hash, &e.body).map_err(|p| {
                bad(format!(
                    "{p}; entries must be one contiguous chain in seq order"
                ))
            })?;
        }
        nodes.push(Node::from_entry(e).map_err(|x| bad(x.to_string()))?);
        canonical.push(text);
        prev = Some(e);
    }
    Ok(Prepared {
        req,
        public_key,
        nodes,
        canonical,
    })
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// What an accepted check-in produced.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The receipt to sign.
    pub body: ReceiptBody,
    /// The key that signs it (`body.key_id` names it).
    pub signer: Arc<SigningKey>,
    /// Entries newly stored.
    pub new_entries: u64,
    /// Verdict kinds issued (for metrics).
    pub verdicts: Vec<String>,
}

/// Compare secrets without leaking where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    // Hash first so that lengths do not leak either.
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn entry_ref(e: &StoredEntry) -> Option<EntryRef> {
    Some(EntryRef {
        hash: e.hash.clone(),
        seq: e.seq,
        kind: e.kind.clone(),
        at: time::parse_at(&e.at).ok()?,
        boot_id: e.boot_id.clone(),
        observed: time::parse_at(&e.arrived_at).ok()?,
    })
}

/// Verdict reference of an instance-level verdict.
pub fn instance_verdict_id(instance: &str, n: u32) -> String {
    format!("{instance}/{n}")
}

/// Verdict reference of a serial-level verdict.
pub fn serial_verdict_id(serial: &str, n: u32) -> String {
    format!("{serial}/s{n}")
}

/// The SLA has ended from 00:00:00.000Z of the day after `ends` (it covers that whole UTC
/// day): the same instant the agent's countdown starts from
/// ([`crate::license::end_of_date`]).
pub fn sla_ended(ends: &str, now: Time) -> bool {
    crate::license::parse_date(ends)
        .and_then(crate::license::end_of_date)
        .is_some_and(|end| now >= end)
}

/// Apply a prepared check-in inside `tx` at server time `now`. `signers` (read in the same
/// transaction) chooses the service key that signs the receipt and the key it announces.
pub fn apply(
    tx: &mut dyn Tx,
    p: &Prepared,
    now: Time,
    settings: &Settings,
    signers: &Signers,
) -> Result<Result<Answer, Refusal>, StoreError> {
    let b = &p.req.body;
    let now_s = time::format_at(now);
    let Some(mut serial) = tx.serial(&b.serial)? else {
        return Ok(Err(Refusal::new(
            404,
            protocol::error::UNKNOWN_SERIAL,
            format!(
                "serial {} has no SLA record at this service; check the serial number, or ask the vendor to register it",
                b.serial
            ),
        )));
    };
    let mut inst = match tx.instance(&b.instance)? {
        Some(rec) => {
            if rec.serial != b.serial {
                return Ok(Err(Refusal::new(
                    403,
                    "serial_mismatch",
                    format!(
                        "instance {} is registered under serial {}, not {}",
                        b.instance, rec.serial, b.serial
                    ),
                )));
            }
            if rec.public_key != b.public_key {
                return Ok(Err(Refusal::new(
                    403,
                    "key_mismatch",
                    format!(
                        "instance {} was activated with another public key; an instance's key never changes (restore instance.key from the appliance's backup)",
                        b.instance
                    ),
                )));
            }
            if rec.activation == Activation::Pending {
                return Ok(Err(Refusal::new(
                    403,
                    "activation_pending",
                    format!(
                        "instance {} waits for the vendor's approval (serial {} reached its activation limit); ask the vendor to run `vmledger admin reinstate {}`",
                        b.instance, b.serial, b.instance
                    ),
                )));
            }
            rec
        }
        None => {
            match &b.activation_code {
                None => {
                    return Ok(Err(Refusal::new(
                        403,
                        protocol::error::ACTIVATION_CODE_REQUIRED,
                        format!(
                            "instance {} is new: its first check-in must carry serial {}'s activation code (vmledger init --activation-code CODE)",
                            b.instance, b.serial
                        ),
                    )));
                }
                Some(code) if !same_secret(code, &serial.activation_code) => {
                    return Ok(Err(Refusal::new(
                        403,
                        "bad_activation_code",
                        format!(
                            "wrong activation code for serial {}; use the code issued with the SLA",
                            b.serial
                        ),
                    )));
                }
                Some(_) => {}
            }
            let since = time::format_at(now - settings.activation_window);
            let recent = tx.activations_since(&b.serial, &since)?;
            let mut rec = InstanceRecord {
                instance: b.instance.clone(),
                serial: b.serial.clone(),
                public_key: b.public_key.clone(),
                activation: Activation::Active,
                created_at: now_s.clone(),
                activated_at: Some(now_s.clone()),
                last_checkin_at: None,
                state: InstanceState::new(&b.instance),
            };
            if recent >= settings.activation_limit {
                rec.activation = Activation::Pending;
                rec.activated_at = None;
                tx.put_instance(&rec)?;
                return Ok(Err(Refusal::new(
                    403,
                    "activation_limit",
                    format!(
                        "serial {} already activated {recent} new instances in the last {} days; instance {} is recorded and waits for the vendor's approval (`vmledger admin reinstate {}`)",
                        b.serial,
                        settings.activation_window.num_days(),
                        b.instance,
                        b.instance
                    ),
                )));
            }
            rec
        }
    };
    if tx.nonce_seen(&b.instance, &b.nonce)? {
        return Ok(Err(Refusal::new(
            409,
            "replayed_nonce",
            format!(
                "nonce {} was already used by instance {}; every request needs a fresh random nonce",
                b.nonce, b.instance
            ),
        )));
    }

    let policy = Policy {
        thresholds: settings.thresholds,
        windows: tx.windows(&b.serial)?,
    };
    let serial_before = serial.state.clone();
    let first_checkin = inst.state.branches.is_empty();
    if first_checkin {
        serial.state.activate(&b.instance, now);
    }
    let mut local: HashMap<&str, Loc> = HashMap::new();
    let mut head: Option<(u64, String, Loc)> = None;
    let mut rows: Vec<StoredEntry> = Vec::new();
    let mut inst_verdicts = Vec::new();
    let mut serial_verdicts = Vec::new();
    for (i, e) in b.entries.iter().enumerate() {
        let node = &p.nodes[i];
        if let Some(stored) = tx.entry(&b.instance, e.body.seq, &e.hash)? {
            let loc = Loc {
                branch: stored.branch,
                seq: stored.seq,
            };
            local.insert(&e.hash, loc);
            head = Some((stored.seq, stored.hash, loc));
            continue;
        }
        let parent = if e.body.seq == 0 {
            if !inst.state.branches.is_empty() {
                return Ok(Err(Refusal::new(
                    400,
                    "bad_entry",
                    format!(
                        "instance {} already has a different genesis entry",
                        b.instance
                    ),
                )));
            }
            let gk = match e.genesis_public_key() {
                Ok(k) => k,
                Err(pr) => {
                    return Ok(Err(Refusal::new(
                        400,
                        "bad_entry",
                        format!("genesis: {pr}"),
                    )));
                }
            };
            if keys::b64_encode(&gk) != inst.public_key {
                return Ok(Err(Refusal::new(
                    400,
                    "bad_entry",
                    "the genesis entry names another public key than the request",
                )));
            }
            match e.body.data.get("serial") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if *s == b.serial => {}
                Some(other) => {
                    return Ok(Err(Refusal::new(
                        403,
                        "serial_mismatch",
                        format!(
                            "the genesis entry names serial {other}, the request {}",
                            b.serial
                        ),
                    )));
                }
            }
            None
        } else if let Some(loc) = local.get(e.body.prev.as_str()) {
            Some(*loc)
        } else {
            match tx.entry(&b.instance, e.body.seq - 1, &e.body.prev)? {
                Some(pe) => {
                    if e.body.seq != pe.seq + 1 || e.body.at < pe.at {
                        return Ok(Err(Refusal::new(
                            400,
                            "bad_entry",
                            format!(
                                "entry seq {} does not follow its predecessor (seq {} at {})",
                                e.body.seq, pe.seq, pe.at
                            ),
                        )));
                    }
                    Some(Loc {
                        branch: pe.branch,
                        seq: pe.seq,
                    })
                }
                None => {
                    let tip = inst.state.primary_tip().cloned();
                    return Ok(Err(Refusal::unknown_prev(
                        match &tip {
                            Some(t) => format!(
                                "entry seq {} follows {}, which this service has never received; re-send your entries after the acknowledged head (seq {})",
                                e.body.seq,
                                short(&e.body.prev),
                                t.seq
                            ),
                            None => format!(
                                "instance {} has no entries at this service yet; send the whole ledger from its genesis (seq 0)",
                                b.instance
                            ),
                        },
                        tip.as_ref(),
                    )));
                }
            }
        };
        if parent.is_some() && inst.state.branches.is_empty() {
            return Ok(Err(Refusal::unknown_prev(
                format!(
                    "instance {} has no entries at this service yet; send the whole ledger from its genesis (seq 0)",
                    b.instance
                ),
                None,
            )));
        }
        let sibling = match parent {
            Some(pl) if inst.state.would_fork(pl, &e.body.prev) => tx
                .child_of(&b.instance, e.body.seq, &e.body.prev)?
                .as_ref()
                .and_then(entry_ref),
            _ => None,
        };
        let outcome = match inst
            .state
            .observe(node, parent, sibling.as_ref(), now, &policy)
        {
            Ok(o) => o,
            Err(err) => {
                return Ok(Err(Refusal::new(
                    400,
                    "bad_entry",
                    format!("entry seq {}: {err}", e.body.seq),
                )));
            }
        };
        if let Decision::Verdict(v) = outcome.decision {
            inst_verdicts.push(*v);
        }
        if let SerialDecision::Verdict(v) = serial.state.observe(&b.instance, node, now, &policy) {
            serial_verdicts.push(*v);
        }
        local.insert(&e.hash, outcome.loc);
        head = Some((e.body.seq, e.hash.clone(), outcome.loc));
        rows.push(StoredEntry {
            instance: b.instance.clone(),
            hash: e.hash.clone(),
            prev: e.body.prev.clone(),
            seq: e.body.seq,
            kind: e.body.kind.clone(),
            at: e.body.at.clone(),
            boot_id: e.body.boot_id.clone(),
            branch: outcome.loc.branch,
            arrived_at: now_s.clone(),
            body: p.canonical[i].clone(),
            sig: e.sig.clone(),
        });
    }
    let (acked_seq, acked_hash, head_loc) = match head {
        Some(h) => h,
        None => match inst.state.primary_tip() {
            Some(t) => (
                t.seq,
                t.hash.clone(),
                Loc {
                    branch: inst.state.primary,
                    seq: t.seq,
                },
            ),
            None => {
                return Ok(Err(Refusal::unknown_prev(
                    format!(
                        "instance {} has no entries at this service yet; send the whole ledger from its genesis (seq 0)",
                        b.instance
                    ),
                    None,
                )));
            }
        },
    };

    // Writes: entries first (evidence reads them back), then states, nonce, verdicts.
    for r in &rows {
        tx.insert_entry(r)?;
    }
    tx.put_nonce(&b.instance, &b.nonce, &now_s)?;
    inst.last_checkin_at = Some(now_s.clone());
    tx.put_instance(&inst)?;
    if serial.state != serial_before {
        tx.put_serial(&serial)?;
    }
    let mut kinds = Vec::new();
    let mut restored_ref = None;
    for v in &inst_verdicts {
        let id = instance_verdict_id(&b.instance, v.number);
        let rec: VerdictRecord = evidence::for_instance(tx, &id, &serial.serial, &inst, v)?;
        tx.insert_verdict(&rec)?;
        kinds.push(rec.kind.clone());
        if v.kind == rules::Kind::Restored {
            restored_ref = Some(id);
        }
    }
    for v in &serial_verdicts {
        let id = serial_verdict_id(&serial.serial, v.number);
        let rec = evidence::for_serial(tx, &id, &serial, v)?;
        tx.insert_verdict(&rec)?;
        kinds.push(rec.kind.clone());
    }

    let (status, reason, verdict) = standing(&inst, &serial.serial, &serial.state, head_loc);
    let (status, reason, verdict) = match status {
        Status::Disabled => (status, reason, verdict),
        _ if sla_ended(&serial.ends, now) => (
            Status::SlaExpired,
            Some(protocol::reason::SLA_EXPIRED.to_string()),
            None,
        ),
        _ => match restored_ref {
            Some(id) => (
                Status::Active,
                Some(protocol::reason::RESTORED.to_string()),
                Some(id),
            ),
            None => (Status::Active, None, None),
        },
    };
    let choice = signers.choose(b.service_keys.as_deref());
    Ok(Ok(Answer {
        body: ReceiptBody {
            v: 1,
            key_id: choice.key_id,
            serial: b.serial.clone(),
            instance: b.instance.clone(),
            nonce: b.nonce.clone(),
            server_time: now_s,
            acked_seq,
            acked_hash,
            status,
            reason,
            verdict,
            sla_ends: Some(serial.ends.clone()),
            next_checkin_before: time::format_at(now + settings.checkin_interval),
            announce_key: choice.announce,
        },
        signer: choice.key,
        new_entries: rows.len() as u64,
        verdicts: kinds,
    }))
}

/// The status a copy at `loc` has: disabled by an instance-level or serial-level verdict,
/// else active.
pub fn standing(
    inst: &InstanceRecord,
    serial: &str,
    sstate: &rules::SerialState,
    loc: Loc,
) -> (Status, Option<String>, Option<String>) {
    if let Standing::Disabled { reason, verdict } = inst.state.standing(loc) {
        return (
            Status::Disabled,
            Some(reason.as_str().to_string()),
            Some(instance_verdict_id(&inst.instance, verdict)),
        );
    }
    if let Some(m) = sstate.member(&inst.instance)
        && let rules::MemberState::Disabled {
            reason, verdict, ..
        } = &m.state
    {
        return (
            Status::Disabled,
            Some(reason.as_str().to_string()),
            Some(serial_verdict_id(serial, *verdict)),
        );
    }
    (Status::Active, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z0-9=+/]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("format".to_string()),
                        Just("body".to_string()),
                        Just("sig".to_string()),
                        Just("entries".to_string()),
                        Just("serial".to_string()),
                        "[a-z_]{1,12}"
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: parse never panics, and a refusal is always a 4xx with a message.
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(r) = parse(&bytes) {
                prop_assert!((400..500).contains(&r.status));
                prop_assert!(!r.body.message.is_empty());
            }
        }

        /// Any JSON shape: parse + prepare refuse with a 4xx, never panic.
        #[test]
        fn prepare_refuses_arbitrary_json(v in arb_json()) {
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            match parse(&bytes) {
                Ok(req) => {
                    if let Err(r) = prepare(req) {
                        prop_assert!((400..500).contains(&r.status));
                    }
                }
                Err(r) => prop_assert!((400..500).contains(&r.status)),
            }
        }
    }
}
