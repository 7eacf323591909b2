//! Golden vectors for the check-in protocol's signed messages (receipt and request):
//! fixed keys and bodies give a fixed canonical message, hash and signature. Another
//! implementation of the protocol checks itself against `tests/vectors/*.json`.
//! Regenerate (only when the format deliberately changes) with
//! `VMLEDGER_REGEN_VECTORS=1 cargo test --test service_vectors`.

mod common;

use serde_json::{Value, json};
use vmledger::keys::SigningKey;
use vmledger::ledger::entry::{Body, Entry, GENESIS_PREV};
use vmledger::protocol::{
    self, CHECKIN_PREFIX, CheckinBody, CheckinRequest, RECEIPT_PREFIX, Receipt, ReceiptBody, Status,
};

fn message(prefix: &[u8], body: &impl serde::Serialize) -> String {
    let mut m = prefix.to_vec();
    m.extend(vmledger::canonical::to_vec(body).unwrap());
    String::from_utf8(m).unwrap()
}

fn receipt_vector() -> Value {
    receipt_vector_with(None)
}

/// A receipt announcing the key whose seed is `announce` (key rotation).
fn receipt_vector_with(announce: Option<u8>) -> Value {
    let service = SigningKey::from_seed(&[9; 32]);
    let announce_key = announce.map(|seed| {
        let k = SigningKey::from_seed(&[seed; 32]);
        protocol::AnnouncedKey {
            key_id: protocol::key_id(&k.public_key()),
            public_key: k.public_key_b64(),
        }
    });
    let body = ReceiptBody {
        v: 1,
        key_id: protocol::key_id(&service.public_key()),
        serial: "SN-1234".into(),
        instance: "00112233445566778899aabbccddeeff".into(),
        nonce: "ffeeddccbbaa99887766554433221100".into(),
        server_time: "2027-01-10T10:00:00.000Z".into(),
        acked_seq: 7,
        acked_hash: "3f".repeat(32),
        status: Status::Disabled,
        reason: Some("concurrent_duplicate".into()),
        verdict: Some("00112233445566778899aabbccddeeff/2".into()),
        sla_ends: Some("2027-12-31".into()),
        next_checkin_before: "2027-01-11T10:00:00.000Z".into(),
        announce_key,
    };
    let r = Receipt::sign(body.clone(), &service).unwrap();
    let description = match announce {
        None => "vmledger-receipt/v1: the service key is the Ed25519 key whose 32-byte seed is 0x09 repeated".to_string(),
        Some(seed) => format!(
            "vmledger-receipt/v1 announcing a successor key (rotation): signed by the Ed25519 key whose 32-byte seed is 0x09 repeated; `announce_key` is the key whose seed is 0x{seed:02x} repeated"
        ),
    };
    json!({
        "description": description,
        "service_seed_hex": hex::encode([9u8; 32]),
        "service_public_key": service.public_key_b64(),
        "message": message(RECEIPT_PREFIX, &body),
        "hash": r.hash().unwrap(),
        "receipt": r,
    })
}

fn request_vector() -> Value {
    request_vector_with(None)
}

/// A request naming the service keys the appliance trusts (`service_keys`).
fn request_vector_with(service_keys: Option<Vec<String>>) -> Value {
    let key = SigningKey::from_seed(&[3; 32]);
    let mut data = serde_json::Map::new();
    data.insert("public_key".into(), json!(key.public_key_b64()));
    data.insert("serial".into(), json!("SN-1234"));
    let genesis = Entry::seal(
        Body {
            v: 1,
            instance: "00112233445566778899aabbccddeeff".into(),
            seq: 0,
            prev: GENESIS_PREV.into(),
            kind: "genesis".into(),
            at: "2027-01-10T09:59:00.000Z".into(),
            boot_id: "6f1c2a9e-0000-4000-8000-000000000001".into(),
            uptime_ms: 12_345,
            data,
        },
        &key,
    )
    .unwrap();
    let body = CheckinBody {
        serial: "SN-1234".into(),
        instance: "00112233445566778899aabbccddeeff".into(),
        public_key: key.public_key_b64(),
        nonce: "ffeeddccbbaa99887766554433221100".into(),
        sent_at: "2027-01-10T10:00:00.000Z".into(),
        activation_code: Some("ABCDE-FGHJK-LMNPQ-RSTUV".into()),
        entries: vec![genesis],
        hardware: None,
        service_keys: service_keys.clone(),
    };
    let r = CheckinRequest::sign(body.clone(), &key).unwrap();
    let description = match service_keys {
        None => {
            "vmledger-checkin-request/v1: the instance key is the Ed25519 key whose 32-byte seed is 0x03 repeated"
        }
        Some(_) => {
            "vmledger-checkin-request/v1 naming the service keys the appliance trusts (`service_keys`: the keys whose seeds are 0x09 and 0x0a repeated): the instance key is the Ed25519 key whose 32-byte seed is 0x03 repeated"
        }
    };
    json!({
        "description": description,
        "instance_seed_hex": hex::encode([3u8; 32]),
        "message": message(CHECKIN_PREFIX, &body),
        "request": r,
    })
}

fn check(name: &str, v: Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("VMLEDGER_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        stored,
        text,
        "{} changed: the signed format is a contract",
        path.display()
    );
}

#[test]
fn receipt_golden_vector() {
    let v = receipt_vector();
    check("receipt.json", v.clone());
    let r: Receipt = serde_json::from_value(v["receipt"].clone()).unwrap();
    let pk =
        vmledger::keys::decode_public_key(v["service_public_key"].as_str().unwrap(), "pk").unwrap();
    r.verify(&pk).unwrap();
    // The hash is SHA-256 of exactly the message bytes.
    assert_eq!(
        vmledger::ledger::entry::sha256_hex(v["message"].as_str().unwrap().as_bytes()),
        v["hash"].as_str().unwrap()
    );
    common::service::validate("receipt", &v["receipt"]);
    let mut t = r.clone();
    t.body.status = Status::Active;
    assert!(t.verify(&pk).is_err());
}

#[test]
fn checkin_request_golden_vector() {
    let v = request_vector();
    check("checkin-request.json", v.clone());
    let r: CheckinRequest = serde_json::from_value(v["request"].clone()).unwrap();
    r.verify().unwrap();
    common::service::validate("checkin-request", &v["request"]);
}

fn service_key_id(seed: u8) -> String {
    protocol::key_id(&SigningKey::from_seed(&[seed; 32]).public_key())
}

#[test]
fn receipt_announcing_a_key_golden_vector() {
    let v = receipt_vector_with(Some(10));
    check("receipt-announce.json", v.clone());
    let r: Receipt = serde_json::from_value(v["receipt"].clone()).unwrap();
    let pk =
        vmledger::keys::decode_public_key(v["service_public_key"].as_str().unwrap(), "pk").unwrap();
    r.verify(&pk).unwrap();
    let a = r.body.announce_key.as_ref().unwrap();
    assert_eq!(a.key_id, service_key_id(10));
    assert_eq!(
        a.key().unwrap(),
        SigningKey::from_seed(&[10; 32]).public_key()
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("\"announce_key\":{\"key_id\":")
    );
    common::service::validate("receipt", &v["receipt"]);
}

#[test]
fn checkin_request_naming_service_keys_golden_vector() {
    let v = request_vector_with(Some(vec![service_key_id(9), service_key_id(10)]));
    check("checkin-request-service-keys.json", v.clone());
    let r: CheckinRequest = serde_json::from_value(v["request"].clone()).unwrap();
    r.verify().unwrap();
    assert!(v["message"].as_str().unwrap().contains(&format!(
        "\"service_keys\":[\"{}\",\"{}\"]",
        service_key_id(9),
        service_key_id(10)
    )));
    common::service::validate("checkin-request", &v["request"]);
    // Without the member (older agents) the message has no `service_keys` at all, so
    // their signatures still verify.
    let old = request_vector();
    assert!(!old["message"].as_str().unwrap().contains("service_keys"));
}
