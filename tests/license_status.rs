//! `vmledger status --json` in every state validates against `schemas/status.schema.json`,
//! exits 0 whatever the state, and its banner message says what to do.

mod common;

use common::Sandbox;
use common::vendor::{Answer, Vendor, faked, write_json};
use serde_json::Value;

fn schema() -> jsonschema::Validator {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/status.schema.json");
    let s: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    assert_eq!(
        s["$id"],
        "https://vmledger.invalid/schemas/status.schema.json"
    );
    jsonschema::draft202012::new(&s).expect("schema compiles")
}

fn status(sb: &Sandbox, when: &str, v: &jsonschema::Validator) -> Value {
    let doc = faked(sb, when, ["status", "--json"]).ok().json();
    let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc}");
    doc
}

fn checkin(sb: &Sandbox, v: &mut Vendor, when: &str, server: &str, a: Answer) {
    let req = sb.join("req.json");
    faked(sb, when, ["checkin", "--request-file"])
        .arg(&req)
        .ok();
    let r = v.answer(&v.read_request(&req), server, a);
    let resp = sb.join("resp.json");
    write_json(&resp, &r);
    faked(sb, when, ["checkin", "--response-file"])
        .arg(&resp)
        .run();
}

#[test]
fn every_state_validates() {
    let val = schema();
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-09-01 00:00:00",
        ["init", "--serial", "SN-S", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    let mut seen = Vec::new();
    let mut see = |doc: Value| {
        assert!(!doc["message"].as_str().unwrap().is_empty());
        seen.push(doc["state"].as_str().unwrap().to_string());
        doc
    };
    see(status(&sb, "2030-09-01 01:00:00", &val));
    let d = see(status(&sb, "2030-09-03 00:00:00", &val));
    assert_eq!(d["state"], "checkin_overdue");
    let d = see(status(&sb, "2030-09-12 00:00:00", &val));
    assert_eq!(d["state"], "locked");
    assert!(d["message"].as_str().unwrap().contains("vmledger checkin"));
    assert!(d["blocked_since"].is_string());
    checkin(
        &sb,
        &mut v,
        "2030-09-12 01:00:00",
        "2030-09-12T01:00:00.000Z",
        Answer {
            sla_ends: Some("2030-10-01".into()),
            next_checkin_before: Some("2031-01-01T00:00:00.000Z".into()),
            ..Answer::default()
        },
    );
    let d = see(status(&sb, "2030-09-12 02:00:00", &val));
    assert_eq!(d["state"], "sla_warning");
    assert_eq!(d["last_receipt"].as_str().unwrap().len(), 64);
    let d = see(status(&sb, "2030-10-03 00:00:00", &val));
    assert_eq!(d["state"], "sla_expired");
    let d = see(status(&sb, "2030-10-20 00:00:00", &val));
    assert_eq!(d["state"], "disabled");
    checkin(
        &sb,
        &mut v,
        "2030-10-20 01:00:00",
        "2030-10-20T01:00:00.000Z",
        Answer {
            sla_ends: Some("2031-10-01".into()),
            ..Answer::default()
        },
    );
    let d = see(status(&sb, "2030-10-20 02:00:00", &val));
    assert_eq!(
        d["state"], "active",
        "a renewal receipt from the service re-enables"
    );
    assert_eq!(
        seen,
        [
            "unregistered",
            "checkin_overdue",
            "locked",
            "sla_warning",
            "sla_expired",
            "disabled",
            "active"
        ]
    );
    // Text mode prints the state and the banner.
    let t = faked(&sb, "2030-10-20 03:00:00", ["status"]).ok();
    assert!(t.stdout.contains("state    active"), "{}", t.stdout);
}

#[test]
fn schema_rejects_what_it_must() {
    let val = schema();
    let sb = Sandbox::new();
    faked(&sb, "2030-09-01 00:00:00", ["init", "--serial", "SN-S"]).ok();
    let good = status(&sb, "2030-09-01 00:10:00", &val);
    for (k, bad) in [
        ("state", Value::from("happy")),
        ("format", Value::from("vmledger-status/v2")),
        ("days_left", Value::from(-1)),
        ("checkin_due_at", Value::from("tomorrow")),
    ] {
        let mut d = good.clone();
        d[k] = bad;
        assert!(!val.is_valid(&d), "{k} accepted");
    }
    let mut d = good;
    d.as_object_mut().unwrap().remove("message");
    assert!(!val.is_valid(&d));
}

#[test]
fn status_needs_an_instance() {
    let sb = Sandbox::new();
    let r = sb.cmd(["status"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("vmledger init"), "{}", r.stderr);
    let r = sb.cmd(["gate"]).run();
    assert_eq!(r.code, 2);
}
