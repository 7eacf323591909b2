//! Receipts that must be rejected (and recorded as `checkin_failed` with their reason)
//! through the air-gapped path: replayed, tampered, stale, for another instance, for a
//! request never made, signed by an unknown key, malformed; and `unknown_serial`.
//! Rejections never change the license state and never damage the ledger.

mod common;

use common::Sandbox;
use common::vendor::{Answer, Vendor, entries_of, faked, write_json};
use serde_json::Value;
use vmledger::protocol::{Receipt, Status};

const T0: &str = "2030-05-01 10:00:00";

fn setup(v: &Vendor) -> Sandbox {
    let sb = Sandbox::new();
    faked(&sb, T0, ["init", "--serial", "SN-9", "--service-key"])
        .arg(v.public_key_b64())
        .ok();
    sb
}

fn request(sb: &Sandbox, v: &Vendor, name: &str) -> vmledger::protocol::CheckinRequest {
    let p = sb.join(name);
    faked(sb, T0, ["checkin", "--request-file"]).arg(&p).ok();
    v.read_request(&p)
}

/// Apply `receipt` as a response file; returns the run.
fn apply(sb: &Sandbox, receipt: &impl serde::Serialize) -> common::Run {
    let p = sb.join("response.json");
    write_json(&p, receipt);
    faked(sb, T0, ["checkin", "--json", "--response-file"])
        .arg(&p)
        .run()
}

fn last_failure(sb: &Sandbox) -> Value {
    entries_of(sb, "checkin_failed")
        .pop()
        .expect("a checkin_failed entry")["body"]["data"]
        .clone()
}

fn expect_rejected(sb: &Sandbox, r: &common::Run, reason: &str) {
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["reason"], reason, "{}", r.stdout);
    assert!(r.stderr.contains(reason), "{}", r.stderr);
    let f = last_failure(sb);
    assert_eq!(f["reason"], reason);
    assert_eq!(f["via"], "file");
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn replayed_receipt_is_rejected() {
    let mut v = Vendor::new();
    let sb = setup(&v);
    let req = request(&sb, &v, "r1.json");
    let receipt = v.answer(&req, "2030-05-01T10:00:05.000Z", Answer::default());
    assert_eq!(apply(&sb, &receipt).code, 0);
    let checkins = entries_of(&sb, "checkin").len();
    let r = apply(&sb, &receipt);
    expect_rejected(&sb, &r, "replayed");
    assert_eq!(entries_of(&sb, "checkin").len(), checkins);
    // The stored receipt is cited by hash from the checkin entry.
    let c = entries_of(&sb, "checkin").pop().unwrap();
    assert_eq!(c["body"]["data"]["receipt"], receipt.hash().unwrap());
}

#[test]
fn tampered_receipt_is_rejected() {
    let mut v = Vendor::new();
    let sb = setup(&v);
    let req = request(&sb, &v, "r1.json");
    let mut receipt = v.answer(&req, "2030-05-01T10:00:05.000Z", Answer::default());
    // Extend the lease by a year without the vendor's key.
    receipt.body.next_checkin_before = "2031-05-01T10:00:05.000Z".into();
    let r = apply(&sb, &receipt);
    expect_rejected(&sb, &r, "bad_signature");
    assert_eq!(
        faked(&sb, T0, ["status", "--json"]).ok().json()["state"],
        "unregistered"
    );
    // The genuine one still applies afterwards (its nonce is still pending).
    let mut genuine = receipt.clone();
    genuine.body.next_checkin_before = "2030-05-02T10:00:05.000Z".into();
    let genuine = Receipt::sign(genuine.body, &v.key).unwrap();
    assert_eq!(apply(&sb, &genuine).code, 0);
}

#[test]
fn stale_receipt_is_rejected() {
    let mut v = Vendor::new();
    let sb = setup(&v);
    let r1 = request(&sb, &v, "r1.json");
    let r2 = request(&sb, &v, "r2.json");
    // The vendor answers the second request first (newer server time) ...
    let mut v2 = Vendor::new();
    let newer = v2.answer(&r2, "2030-05-01T12:00:00.000Z", Answer::default());
    assert_eq!(apply(&sb, &newer).code, 0);
    // ... then an older answer to the first request shows up.
    let older = v.answer(&r1, "2030-05-01T11:00:00.000Z", Answer::default());
    let r = apply(&sb, &older);
    expect_rejected(&sb, &r, "stale");
}

#[test]
fn foreign_unknown_and_forged_receipts_are_rejected() {
    let mut v = Vendor::new();
    let sb = setup(&v);
    let req = request(&sb, &v, "r1.json");

    let mut other = req.clone();
    other.body.instance = "ffffffffffffffffffffffffffffffff".into();
    let r = apply(
        &sb,
        &v.answer(&other, "2030-05-01T10:00:05.000Z", Answer::default()),
    );
    expect_rejected(&sb, &r, "wrong_instance");

    let mut unasked = req.clone();
    unasked.body.nonce = "0123456789abcdef0123456789abcdef".into();
    let r = apply(
        &sb,
        &v.answer(&unasked, "2030-05-01T10:00:05.000Z", Answer::default()),
    );
    expect_rejected(&sb, &r, "unknown_nonce");

    let mut mallory = Vendor::with_seed(7);
    mallory.acked = v.acked.clone();
    let r = apply(
        &sb,
        &mallory.answer(&req, "2030-05-01T10:00:05.000Z", Answer::default()),
    );
    expect_rejected(&sb, &r, "unknown_key");

    // A receipt acknowledging a head this ledger never had: diverged.
    let mut forked = v.answer(&req, "2030-05-01T10:00:05.000Z", Answer::default());
    forked.body.acked_hash = "00".repeat(32);
    let forked = Receipt::sign(forked.body, &v.key).unwrap();
    let r = apply(&sb, &forked);
    expect_rejected(&sb, &r, "diverged");

    assert!(entries_of(&sb, "checkin").is_empty());
}

#[test]
fn malformed_response_file_is_an_error_naming_the_file() {
    let v = Vendor::new();
    let sb = setup(&v);
    request(&sb, &v, "r1.json");
    let p = sb.join("garbage.json");
    std::fs::write(&p, b"{\"format\": \"vmledger-receipt/v1\", \"body\": 12").unwrap();
    let r = faked(&sb, T0, ["checkin", "--response-file"]).arg(&p).run();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("garbage.json"), "{}", r.stderr);
    assert_eq!(last_failure(&sb)["reason"], "malformed");
    // Oversized input is refused without reading it all.
    let big = sb.join("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let r = faked(&sb, T0, ["checkin", "--response-file"])
        .arg(&big)
        .run();
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = faked(&sb, T0, ["checkin", "--response-file"])
        .arg(sb.join("missing.json"))
        .run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("missing.json"), "{}", r.stderr);
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn unknown_serial_is_a_failed_checkin() {
    let mut v = Vendor::new();
    let sb = setup(&v);
    let req = request(&sb, &v, "r1.json");
    let a = Answer {
        status: Status::UnknownSerial,
        sla_ends: None,
        ..Answer::default()
    };
    let r = apply(&sb, &v.answer(&req, "2030-05-01T10:00:05.000Z", a));
    expect_rejected(&sb, &r, "unknown_serial");
    let s = faked(&sb, T0, ["status", "--json"]).ok().json();
    assert_eq!(s["state"], "unregistered");
    assert_eq!(s["reason"], "unknown_serial");
    assert_eq!(s["last_checkin_failure"]["reason"], "unknown_serial");
}

#[test]
fn request_needs_a_pinned_key_and_a_serial() {
    let sb = Sandbox::new();
    faked(&sb, T0, ["init", "--serial", "SN-9"]).ok();
    let p = sb.join("resp.json");
    std::fs::write(&p, "{}").unwrap();
    let r = faked(&sb, T0, ["checkin", "--response-file"]).arg(&p).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--service-key"), "{}", r.stderr);
    let r = faked(&sb, T0, ["checkin"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--service"), "{}", r.stderr);
    let r = faked(&sb, T0, ["init", "--service-key", "AAAA"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--service-key"), "{}", r.stderr);
}
