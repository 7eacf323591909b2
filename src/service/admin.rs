//! Operator operations on the service database (`vmledger admin ...`). They run directly
//! against the database (there is no admin endpoint), each in one transaction, and a
//! running service sees them at once: it caches nothing between batches.
//!
//! Every override (`primary`, `reinstate`, `allow-concurrent`, SLA changes) is recorded
//! in the append-only `overrides` table, with the operator and the reason, in the same
//! transaction that applies it.

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::checkin::{self, Refusal};
use super::config::Settings;
use super::keyring::KeyRing;
use super::store::{
    Activation, InstanceRecord, OverrideRecord, SerialRecord, Store, StoreError, Tx,
};
use crate::identity::validate_serial;
use crate::keys;
use crate::protocol::Receipt;
use crate::rules::{SerialState, Time, Window};
use crate::time;

/// Admin failures, naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown serial {0}; create it with `vmledger admin sla set {0} --ends YYYY-MM-DD`")]
    UnknownSerial(String),
    #[error("unknown instance {0}; it has never checked in at this service")]
    UnknownInstance(String),
    #[error("nothing matches `{0}`: give a serial, a 32-hex instance id or a verdict id")]
    NotFound(String),
    #[error(
        "instance {instance} has no branch containing entry {hash}; see `vmledger admin show {instance}`"
    )]
    UnknownBranch { instance: String, hash: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("the request was refused ({}): {}", .0.body.error, .0.body.message)]
    Refused(Refusal),
    #[error("cannot sign the receipt: {0}")]
    Sign(String),
}

fn invalid(what: impl Into<String>, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        what: what.into(),
        message: message.into(),
    }
}

/// Who runs the command: `$USER`, else the effective user's name from the user
/// database, else `uid N` (cron jobs and `sudo -i` shells may have no `$USER`).
pub fn operator() -> String {
    operator_from(std::env::var("USER").ok())
}

fn operator_from(user: Option<String>) -> String {
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        return u;
    }
    let uid = nix::unistd::Uid::effective();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) if !u.name.is_empty() => u.name,
        _ => format!("uid {uid}"),
    }
}

/// A fresh activation code: 4 groups of 5 characters from an unambiguous alphabet.
pub fn new_activation_code() -> Result<String, AdminError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes =
        keys::random_bytes::<20>().map_err(|e| invalid("activation code", e.to_string()))?;
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// Parse `YYYY-MM-DD`.
pub fn parse_date(s: &str, what: &str) -> Result<NaiveDate, AdminError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| invalid(what, format!("`{s}` is not a date of the form 2027-12-31")))
}

fn check_contact(c: &str, what: &str) -> Result<(), AdminError> {
    c.parse::<lettre::Address>()
        .map(|_| ())
        .map_err(|e| invalid(what, format!("`{c}` is not an e-mail address: {e}")))
}

fn check_code(c: &str, what: &str) -> Result<(), AdminError> {
    if c.is_empty() || c.len() > 128 || !c.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            what,
            "an activation code is 1 to 128 printable ASCII characters",
        ));
    }
    Ok(())
}

fn record(
    tx: &mut dyn Tx,
    now: &str,
    kind: &str,
    serial: &str,
    instance: Option<&str>,
    detail: Value,
    reason: &str,
) -> Result<i64, AdminError> {
    Ok(tx.insert_override(&OverrideRecord {
        id: 0,
        at: now.to_string(),
        kind: kind.to_string(),
        serial: serial.to_string(),
        instance: instance.map(str::to_string),
        detail: detail.to_string(),
        reason: reason.to_string(),
        operator: operator(),
    })?)
}

/// One SLA record to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaInput {
    pub serial: String,
    pub ends: NaiveDate,
    pub contact: Option<String>,
    pub activation_code: Option<String>,
}

fn sla_apply(tx: &mut dyn Tx, input: &SlaInput, now: &str) -> Result<SerialRecord, AdminError> {
    let ends = input.ends.format("%Y-%m-%d").to_string();
    let rec = match tx.serial(&input.serial)? {
        Some(mut r) => {
            r.ends = ends;
            if input.contact.is_some() {
                r.contact = input.contact.clone();
            }
            if let Some(c) = &input.activation_code {
                r.activation_code = c.clone();
            }
            r.updated_at = now.to_string();
            r
        }
        None => SerialRecord {
            serial: input.serial.clone(),
            activation_code: match &input.activation_code {
                Some(c) => c.clone(),
                None => new_activation_code()?,
            },
            ends,
            contact: input.contact.clone(),
            created_at: now.to_string(),
            updated_at: now.to_string(),
            state: SerialState::new(&input.serial),
        },
    };
    record(
        tx,
        now,
        "sla_set",
        &rec.serial,
        None,
        json!({"ends": rec.ends, "contact": rec.contact}),
        "",
    )?;
    tx.put_serial(&rec)?;
    Ok(rec)
}

/// `admin sla set`: create the serial (with an activation code) or update it.
pub fn sla_set(
    store: &mut dyn Store,
    input: &SlaInput,
    now: Time,
) -> Result<SerialRecord, AdminError> {
    validate_serial(&input.serial).map_err(|e| invalid("serial", e.to_string()))?;
    if let Some(c) = &input.contact {
        check_contact(c, "--contact")?;
    }
    if let Some(c) = &input.activation_code {
        check_code(c, "--activation-code")?;
    }
    let mut tx = store.write()?;
    let rec = sla_apply(&mut *tx, input, &time::format_at(now))?;
    tx.commit()?;
    Ok(rec)
}

/// Parse an SLA CSV file: a header `serial,ends,contact[,activation_code]`, then one
/// record per line. Errors name the file, line and field.
pub fn parse_sla_csv(text: &str, file: &str) -> Result<Vec<SlaInput>, AdminError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Err(invalid(
            file,
            "empty file; expected a header `serial,ends,contact`",
        ));
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(si), Some(ei)) = (idx("serial"), idx("ends")) else {
        return Err(invalid(
            format!("{file} line 1"),
            "the header must name at least `serial` and `ends` (optional: `contact`, `activation_code`)",
        ));
    };
    if let Some(unknown) = cols
        .iter()
        .find(|c| !["serial", "ends", "contact", "activation_code"].contains(&c.as_str()))
    {
        return Err(invalid(
            format!("{file} line 1"),
            format!("unknown column `{unknown}`"),
        ));
    }
    let (ci, ai) = (idx("contact"), idx("activation_code"));
    let mut out = Vec::new();
    for (n, line) in lines {
        let at = format!("{file} line {}", n + 1);
        if line.contains('"') {
            return Err(invalid(
                at,
                "quoted fields are not supported (no field needs them)",
            ));
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            return Err(invalid(
                at,
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        let serial = f[si].to_string();
        validate_serial(&serial).map_err(|e| invalid(format!("{at}, serial"), e.to_string()))?;
        let ends = parse_date(f[ei], &format!("{at}, ends"))?;
        let contact = ci
            .map(|i| f[i])
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if let Some(c) = &contact {
            check_contact(c, &format!("{at}, contact"))?;
        }
        let activation_code = ai
            .map(|i| f[i])
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if let Some(c) = &activation_code {
            check_code(c, &format!("{at}, activation_code"))?;
        }
        out.push(SlaInput {
            serial,
            ends,
            contact,
            activation_code,
        });
    }
    Ok(out)
}

/// `admin sla import`: every record or none (one transaction).
pub fn sla_import(
    store: &mut dyn Store,
    inputs: &[SlaInput],
    now: Time,
) -> Result<Vec<SerialRecord>, AdminError> {
    let now = time::format_at(now);
    let mut tx = store.write()?;
    let mut out = Vec::with_capacity(inputs.len());
    for i in inputs {
        out.push(sla_apply(&mut *tx, i, &now)?);
    }
    tx.commit()?;
    Ok(out)
}

fn instance_json(
    tx: &mut dyn Tx,
    r: &InstanceRecord,
    serial: &SerialRecord,
) -> Result<Value, AdminError> {
    let head = r.state.primary_tip().map(|t| crate::rules::Loc {
        branch: r.state.primary,
        seq: t.seq,
    });
    let (status, reason, verdict) = match head {
        Some(loc) => checkin::standing(r, &serial.serial, &serial.state, loc),
        None => (crate::protocol::Status::Active, None, None),
    };
    let member = serial.state.member(&r.instance);
    Ok(json!({
        "instance": r.instance,
        "public_key": r.public_key,
        "activation": r.activation.as_str(),
        "created_at": r.created_at,
        "activated_at": r.activated_at,
        "last_checkin_at": r.last_checkin_at,
        "entries": tx.entry_count(&r.instance)?,
        "status": status,
        "reason": reason,
        "verdict": verdict,
        "serial_state": member.map(|m| serde_json::to_value(&m.state).unwrap_or(Value::Null)),
        "primary_branch": r.state.primary,
        "restores": r.state.restores,
        "branches": r.state.branches,
    }))
}

/// `admin show`: history, branches, verdicts (with evidence) and overrides of a serial,
/// an instance (with its serial), or one verdict (`vmledger-admin-show/v1`).
pub fn show(store: &mut dyn Store, what: &str, now: Time) -> Result<Value, AdminError> {
    let mut tx = store.read()?;
    if what.contains('/') {
        let v = tx
            .verdict(what)?
            .ok_or_else(|| AdminError::NotFound(what.to_string()))?;
        let evidence: Value = serde_json::from_str(&v.evidence).unwrap_or(Value::Null);
        return Ok(
            json!({"format": "vmledger-admin-show/v1", "verdicts": [verdict_json(&v, evidence)]}),
        );
    }
    let (serial, only) = match tx.serial(what)? {
        Some(s) => (s, None),
        None => {
            let inst = tx
                .instance(what)?
                .ok_or_else(|| AdminError::NotFound(what.to_string()))?;
            let s = tx
                .serial(&inst.serial)?
                .ok_or_else(|| AdminError::UnknownSerial(inst.serial.clone()))?;
            (s, Some(inst.instance))
        }
    };
    let mut instances = Vec::new();
    for r in tx.instances_of(&serial.serial)? {
        if only.as_ref().is_none_or(|o| *o == r.instance) {
            instances.push(instance_json(&mut *tx, &r, &serial)?);
        }
    }
    let verdicts: Vec<Value> = tx
        .verdicts_of(&serial.serial)?
        .into_iter()
        .filter(|v| only.as_ref().is_none_or(|o| *o == v.instance))
        .map(|v| {
            let evidence: Value = serde_json::from_str(&v.evidence).unwrap_or(Value::Null);
            verdict_json(&v, evidence)
        })
        .collect();
    let overrides: Vec<Value> = tx
        .overrides_of(&serial.serial)?
        .into_iter()
        .filter(|o| only.is_none() || o.instance.is_none() || o.instance == only)
        .map(|o| {
            json!({"id": o.id, "at": o.at, "kind": o.kind, "instance": o.instance,
                   "detail": serde_json::from_str::<Value>(&o.detail).unwrap_or(Value::Null),
                   "reason": o.reason, "operator": o.operator})
        })
        .collect();
    Ok(json!({
        "format": "vmledger-admin-show/v1",
        "serial": {
            "serial": serial.serial,
            "ends": serial.ends,
            "sla_ended": checkin::sla_ended(&serial.ends, now),
            "contact": serial.contact,
            "activation_code": serial.activation_code,
            "created_at": serial.created_at,
            "updated_at": serial.updated_at,
        },
        "instances": instances,
        "verdicts": verdicts,
        "overrides": overrides,
    }))
}

fn verdict_json(v: &super::store::VerdictRecord, evidence: Value) -> Value {
    json!({
        "id": v.id, "serial": v.serial, "instance": v.instance, "kind": v.kind,
        "rule": v.rule, "decided_at": v.decided_at, "review": v.review, "evidence": evidence,
    })
}

fn load_instance(
    tx: &mut dyn Tx,
    instance: &str,
) -> Result<(InstanceRecord, SerialRecord), AdminError> {
    let inst = tx
        .instance(instance)?
        .ok_or_else(|| AdminError::UnknownInstance(instance.to_string()))?;
    let serial = tx
        .serial(&inst.serial)?
        .ok_or_else(|| AdminError::UnknownSerial(inst.serial.clone()))?;
    Ok((inst, serial))
}

fn need_reason(reason: &str) -> Result<(), AdminError> {
    if reason.trim().is_empty() {
        return Err(invalid(
            "--reason",
            "say why (it is recorded with the override)",
        ));
    }
    Ok(())
}

/// `admin primary INSTANCE --branch HASH`: make the branch holding entry HASH (a full
/// hash, or a prefix of at least 8 digits of a branch's first or tip entry) primary.
pub fn primary(
    store: &mut dyn Store,
    instance: &str,
    hash: &str,
    reason: &str,
    now: Time,
) -> Result<Value, AdminError> {
    let now_s = time::format_at(now);
    let mut tx = store.write()?;
    let (mut inst, serial) = load_instance(&mut *tx, instance)?;
    let branch = match tx.find_entry(&inst.instance, hash)? {
        Some(e) => Some(e.branch),
        _ if hash.len() >= 8 => {
            let m: Vec<u32> = inst
                .state
                .branches
                .iter()
                .filter(|b| b.tip.hash.starts_with(hash) || b.first.hash.starts_with(hash))
                .map(|b| b.id)
                .collect();
            (m.len() == 1).then(|| m[0])
        }
        _ => None,
    }
    .ok_or_else(|| AdminError::UnknownBranch {
        instance: instance.to_string(),
        hash: hash.to_string(),
    })?;
    let before = inst.state.primary;
    record(
        &mut *tx,
        &now_s,
        "primary",
        &serial.serial,
        Some(instance),
        json!({"branch": branch, "hash": hash, "previous": before}),
        reason,
    )?;
    inst.state
        .set_primary(branch, now)
        .map_err(|e| invalid("--branch", e.to_string()))?;
    tx.put_instance(&inst)?;
    tx.commit()?;
    Ok(
        json!({"format": "vmledger-admin-override/v1", "kind": "primary", "instance": instance,
              "branch": branch, "previous": before, "at": now_s}),
    )
}

/// `admin reinstate INSTANCE --reason TEXT`: lift the instance's disabled state (its
/// primary branch continues, other copies are judged again if they write), or approve an
/// activation that waits beyond the serial's limit.
pub fn reinstate(
    store: &mut dyn Store,
    instance: &str,
    reason: &str,
    now: Time,
) -> Result<Value, AdminError> {
    need_reason(reason)?;
    let now_s = time::format_at(now);
    let mut tx = store.write()?;
    let (mut inst, mut serial) = load_instance(&mut *tx, instance)?;
    if inst.activation == Activation::Pending {
        record(
            &mut *tx,
            &now_s,
            "approve",
            &serial.serial,
            Some(instance),
            json!({}),
            reason,
        )?;
        inst.activation = Activation::Active;
        inst.activated_at = Some(now_s.clone());
        tx.put_instance(&inst)?;
        tx.commit()?;
        return Ok(
            json!({"format": "vmledger-admin-override/v1", "kind": "approve",
                         "instance": instance, "at": now_s}),
        );
    }
    let branches = inst.state.reinstate(now);
    let serial_level = serial.state.member(instance).is_some();
    record(
        &mut *tx,
        &now_s,
        "reinstate",
        &serial.serial,
        Some(instance),
        json!({"branches": branches}),
        reason,
    )?;
    if serial_level {
        serial.state.reinstate(instance, now);
        tx.put_serial(&serial)?;
    }
    tx.put_instance(&inst)?;
    tx.commit()?;
    Ok(
        json!({"format": "vmledger-admin-override/v1", "kind": "reinstate", "instance": instance,
              "branches": branches, "at": now_s}),
    )
}

/// `admin allow-concurrent INSTANCE --until DATE --reason TEXT`: declare that the
/// instance may run as several copies (HA/DR pair, DR test) from now until the end of
/// DATE (UTC).
pub fn allow_concurrent(
    store: &mut dyn Store,
    instance: &str,
    until: NaiveDate,
    reason: &str,
    now: Time,
) -> Result<Window, AdminError> {
    need_reason(reason)?;
    let end = Utc.from_utc_datetime(
        &until.and_time(NaiveTime::from_hms_milli_opt(23, 59, 59, 999).unwrap_or_default()),
    );
    if end < now {
        return Err(invalid("--until", format!("{until} is already past")));
    }
    let now_s = time::format_at(now);
    let mut tx = store.write()?;
    let (inst, serial) = load_instance(&mut *tx, instance)?;
    let w = Window {
        instance: inst.instance.clone(),
        from: now,
        until: end,
        reason: reason.to_string(),
    };
    let detail = serde_json::to_value(&w).map_err(|e| invalid("window", e.to_string()))?;
    record(
        &mut *tx,
        &now_s,
        "allow_concurrent",
        &serial.serial,
        Some(instance),
        detail,
        reason,
    )?;
    tx.commit()?;
    Ok(w)
}

/// `admin offline-receipt`: process an air-gapped site's request file exactly as an
/// online check-in, and sign the receipt with the key an online check-in would get
/// (`ring` loads it).
pub fn offline_receipt(
    store: &mut dyn Store,
    ring: &mut KeyRing,
    settings: &Settings,
    request: &[u8],
    now: Time,
) -> Result<Receipt, AdminError> {
    let req = checkin::parse(request).map_err(AdminError::Refused)?;
    let prepared = checkin::prepare(req).map_err(AdminError::Refused)?;
    let mut tx = store.write()?;
    let records = tx.service_keys()?;
    let signers = ring
        .signers(&records)
        .map_err(|e| AdminError::Sign(e.to_string()))?;
    let answer = checkin::apply(&mut *tx, &prepared, now, settings, &signers)?;
    // A refusal may still have recorded something (a pending activation): keep it.
    tx.commit()?;
    let answer = answer.map_err(AdminError::Refused)?;
    Receipt::sign(answer.body, &answer.signer).map_err(|e| AdminError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_falls_back_to_the_effective_user() {
        assert_eq!(operator_from(Some("alice".into())), "alice");
        let uid = nix::unistd::Uid::effective();
        let want = match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => u.name,
            _ => format!("uid {uid}"),
        };
        for unset in [None, Some(String::new())] {
            let got = operator_from(unset);
            assert_eq!(got, want);
            assert_ne!(got, "unknown");
        }
    }
}
