//! Golden test vectors for the ledger entry format (`tests/vectors/ledger-entries.json`):
//! a fixed Ed25519 seed and fixed bodies give a fixed canonical message, hash and
//! signature. An implementation in another language can check itself against the file.
//!
//! Regenerate (only when the format deliberately changes, which it must not for v1):
//! `VMLEDGER_REGENERATE_VECTORS=1 cargo test --test ledger_vectors`.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vmledger::keys::{self, SigningKey};
use vmledger::ledger::entry::{Body, Entry, GENESIS_PREV};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/ledger-entries.json"
);

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = i as u8;
    }
    s
}

fn bodies(key: &SigningKey) -> Vec<Body> {
    let instance = "0123456789abcdef0123456789abcdef".to_string();
    let data = |v: Value| v.as_object().cloned().expect("object");
    let genesis = Body {
        v: 1,
        instance: instance.clone(),
        seq: 0,
        prev: GENESIS_PREV.into(),
        kind: "genesis".into(),
        at: "2026-12-04T15:37:06.123Z".into(),
        boot_id: "6c1e2b9e-5d55-4c1c-9b54-3a6f3e0f9d10".into(),
        uptime_ms: 8123,
        data: data(json!({"serial": "SN-TEST-0001", "public_key": key.public_key_b64()})),
    };
    let mut out = vec![genesis];
    let push = |kind: &str, at: &str, d: Value, out: &mut Vec<Body>| {
        let prev = out.last().expect("genesis");
        let prev_hash = Entry::seal(prev.clone(), key).expect("seal").hash;
        out.push(Body {
            v: 1,
            instance: instance.clone(),
            seq: prev.seq + 1,
            prev: prev_hash,
            kind: kind.into(),
            at: at.into(),
            boot_id: "6c1e2b9e-5d55-4c1c-9b54-3a6f3e0f9d10".into(),
            uptime_ms: 8123 + (prev.seq + 1) * 1000,
            data: data(d),
        });
    };
    push("boot", "2026-12-04T15:37:07.000Z", json!({}), &mut out);
    // Key order by UTF-16 code units, escapes, nesting, negative and large safe integers.
    push(
        "clock_anomaly",
        "2026-12-04T15:37:07.000Z",
        json!({
            "\u{e000}": "private use",
            "\u{1f600}": "astral",
            "B": [true, false, null, -9007199254740991i64, 9007199254740991u64],
            "a": {"nested": "tab\tquote\"backslash\\ctl\u{1}é"},
        }),
        &mut out,
    );
    out
}

#[test]
fn golden_entry_vectors() {
    let key = SigningKey::from_seed(&seed());
    let computed: Vec<Value> = bodies(&key)
        .into_iter()
        .map(|b| {
            let e = Entry::seal(b.clone(), &key).expect("seal");
            let message = String::from_utf8(b.message().expect("message")).expect("utf8");
            json!({"body": b, "message": message, "hash": e.hash, "sig": e.sig})
        })
        .collect();
    let doc = json!({
        "description": "vmledger-entry v1 golden vectors: message = \"vmledger/entry/v1\\n\" + RFC 8785(body); hash = hex(SHA-256(message)); sig = base64(Ed25519(seed, message))",
        "seed_hex": hex::encode(seed()),
        "public_key": key.public_key_b64(),
        "entries": computed,
    });
    if std::env::var_os("VMLEDGER_REGENERATE_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors file")).unwrap();
    assert_eq!(
        golden, doc,
        "the entry format changed: v1 vectors no longer match"
    );

    // Check the committed vectors independently of vmledger's own sealing code: plain
    // SHA-256 over the stated message, plain ring verification of the stated signature.
    let pk = keys::decode_public_key(golden["public_key"].as_str().unwrap(), "vector").unwrap();
    for v in golden["entries"].as_array().unwrap() {
        let message = v["message"].as_str().unwrap();
        assert!(message.starts_with("vmledger/entry/v1\n"));
        assert_eq!(hex::encode(Sha256::digest(message.as_bytes())), v["hash"]);
        let sig = keys::b64_decode(v["sig"].as_str().unwrap()).unwrap();
        assert!(keys::verify(&pk, message.as_bytes(), &sig));
        // The message's JSON is the canonical form of the body: parse and compare.
        let body: Value = serde_json::from_str(&message["vmledger/entry/v1\n".len()..]).unwrap();
        assert_eq!(body, v["body"]);
    }
    // The third vector pins key order: "B" < "a" < U+1F600 < U+E000 (UTF-16 order).
    let m = golden["entries"][2]["message"].as_str().unwrap();
    let data_start = m.find("\"data\":{").unwrap();
    let pos = |k: &str| m[data_start..].find(k).unwrap();
    assert!(pos("\"B\"") < pos("\"a\""));
    assert!(pos("\"a\"") < pos("\u{1f600}"));
    assert!(pos("\u{1f600}") < pos("\u{e000}"));
}

#[test]
fn vectors_chain_and_verify_as_a_ledger() {
    let key = SigningKey::from_seed(&seed());
    let bodies = bodies(&key);
    let entries: Vec<Entry> = bodies
        .iter()
        .map(|b| Entry::seal(b.clone(), &key).unwrap())
        .collect();
    let pk = key.public_key();
    for w in entries.windows(2) {
        vmledger::ledger::entry::check_link(&w[0].body, &w[0].hash, &w[1].body).unwrap();
    }
    for e in &entries {
        e.check(Some(&pk)).unwrap();
    }
}
