//! The HTTP API's contract and hardening: every bad input gets a 4xx JSON
//! `vmledger-service-error/v1` (never a 500, never a hang), activation and key pinning,
//! replayed nonces, body limits, per-instance rate limits that allow a burst, health and
//! metrics, TLS, graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::Sandbox;
use common::service::{
    Copy, Reply, ServeProc, Svc, TestClock, assert_status, http, http_with, init_db, post, receipt,
    refused, sla, validate,
};
use serde_json::{Value, json};
use vmledger::protocol::{CheckinRequest, Status};
use vmledger::service::Settings;

const CODE: &str = "CODE-1";

fn world() -> (Sandbox, Svc, Copy) {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let svc = Svc::start(&db, key, clock.clone());
    let a = appliance(&sb, &svc, "a");
    (sb, svc, a)
}

/// A copy configured for `svc` with the activation code (not yet checked in).
fn appliance(sb: &Sandbox, svc: &Svc, name: &str) -> Copy {
    Copy::init(
        sb,
        name,
        "SN-1",
        &svc.url,
        &svc.key,
        Some(CODE),
        &*svc.clock,
    )
}

fn post_bytes(url: &str, body: Vec<u8>) -> (u16, Value) {
    let (status, bytes) = http(url, "POST", "/v1/checkin", body);
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

fn assert_error(url: &str, body: Vec<u8>, status: u16, code: &str) -> Value {
    let (s, v) = post_bytes(url, body);
    assert_eq!(
        (s, v["error"].as_str().unwrap_or("")),
        (status, code),
        "{v}"
    );
    validate("service-error", &v);
    v
}

fn signed(req: &CheckinRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap()
}

#[test]
fn bad_requests_get_clear_json_4xx_errors() {
    let (_sb, svc, a) = world();
    let url = &svc.url;
    assert_error(url, b"{not json".to_vec(), 400, "malformed_json");
    assert_error(url, b"".to_vec(), 400, "malformed_json");
    assert_error(url, b"[]".to_vec(), 400, "invalid_request");
    assert_error(
        url,
        br#"{"format":"x","body":{},"sig":""}"#.to_vec(),
        400,
        "invalid_request",
    );
    let good = a.request(Some(CODE), &*svc.clock);
    // Wrong format string.
    let mut r = good.clone();
    r.format = "vmledger-checkin-request/v9".into();
    assert_error(url, signed(&r), 400, "bad_format");
    // Bad request signature.
    let mut r = good.clone();
    r.body.sent_at = "2027-01-10T10:00:00.001Z".into();
    assert_error(url, signed(&r), 400, "bad_signature");
    // Unknown fields are refused.
    let mut v = serde_json::to_value(&good).unwrap();
    v["body"]["extra"] = json!(1);
    assert_error(url, serde_json::to_vec(&v).unwrap(), 400, "invalid_request");
    // A float anywhere in the signed body.
    let mut v = serde_json::to_value(&good).unwrap();
    v["body"]["hardware"] = json!({"x": 1.5});
    let err = assert_error(url, serde_json::to_vec(&v).unwrap(), 400, "invalid_request");
    assert!(
        err["message"].as_str().unwrap().contains("floating-point"),
        "{err}"
    );
    // A tampered entry (re-signed request, so only the entry is wrong).
    let inst = a.instance();
    let mut body = good.body.clone();
    body.entries[0].body.boot_id = "tampered".into();
    let r = CheckinRequest::sign(body, &inst.key).unwrap();
    let err = assert_error(url, signed(&r), 400, "bad_entry");
    assert!(err["message"].as_str().unwrap().contains("seq 0"), "{err}");
    // Unknown serial.
    let mut body = good.body.clone();
    body.serial = "SN-404".into();
    let r = CheckinRequest::sign(body, &inst.key).unwrap();
    assert_error(url, signed(&r), 404, "unknown_serial");
    // No activation code, wrong activation code.
    let r = a.request(None, &*svc.clock);
    assert_error(url, signed(&r), 403, "activation_code_required");
    let r = a.request(Some("WRONG"), &*svc.clock);
    assert_error(url, signed(&r), 403, "bad_activation_code");
    // Wrong content type, unknown route, wrong method: JSON too.
    let (s, b) = http(url, "GET", "/v1/checkin", vec![]);
    assert_eq!(s, 405);
    validate("service-error", &serde_json::from_slice(&b).unwrap());
    let (s, b) = http(url, "GET", "/nope", vec![]);
    assert_eq!(s, 404);
    validate("service-error", &serde_json::from_slice(&b).unwrap());
    // Nothing was stored by any of this: the agent's first real check-in activates.
    let reply = a.checkin(&*svc.clock);
    assert_status(&reply, Status::Active, None);
    validate("checkin-request", &serde_json::to_value(&good).unwrap());
}

#[test]
fn replayed_nonce_and_key_mismatch_are_refused() {
    let (sb, svc, a) = world();
    let req = a.request(Some(CODE), &*svc.clock);
    let first = post(&svc.url, &req);
    receipt(&first).verify(&svc.key).unwrap();
    let again = post(&svc.url, &req);
    assert_eq!(refused(&again), (409, "replayed_nonce"));
    // Same instance id, another key: refused, the pinned key stands.
    let other = appliance(&sb, &svc, "other");
    let mut body = other.request(Some(CODE), &*svc.clock).body;
    body.instance = a.instance_id();
    for e in body.entries.iter_mut() {
        e.body.instance = a.instance_id();
        *e = vmledger::ledger::Entry::seal(e.body.clone(), &other.instance().key).unwrap();
    }
    // Re-link the re-sealed entries.
    let mut prev = vmledger::ledger::GENESIS_PREV.to_string();
    for e in body.entries.iter_mut() {
        e.body.prev = prev.clone();
        *e = vmledger::ledger::Entry::seal(e.body.clone(), &other.instance().key).unwrap();
        prev = e.hash.clone();
    }
    let r = CheckinRequest::sign(body, &other.instance().key).unwrap();
    let (s, v) = post_bytes(&svc.url, signed(&r));
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (403, "key_mismatch"),
        "{v}"
    );
}

#[test]
fn activation_limit_then_operator_approval() {
    let (sb, svc, a) = world();
    assert_status(&a.checkin(&*svc.clock), Status::Active, None);
    let b = appliance(&sb, &svc, "b");
    assert_status(&b.checkin(&*svc.clock), Status::Active, None);
    // A third new instance within 30 days waits for the vendor.
    let c = appliance(&sb, &svc, "c");
    let r = c.checkin(&*svc.clock);
    assert_eq!(refused(&r), (403, "activation_limit"));
    let r = c.checkin(&*svc.clock);
    assert_eq!(refused(&r), (403, "activation_pending"));
    // The agent said what to do and keeps counting down to its first check-in.
    let s = c.status(&*svc.clock);
    assert_eq!(s["state"], "unregistered");
    assert_eq!(s["last_checkin_failure"]["reason"], "refused");
    assert!(
        s["last_checkin_failure"]["detail"]
            .as_str()
            .unwrap()
            .contains("admin reinstate"),
        "{s:#}"
    );
    let doc = common::service::show(&sb, &svc.db, &c.instance_id());
    assert_eq!(doc["instances"][0]["activation"], "pending");
    sb.cmd([
        "admin",
        "reinstate",
        &c.instance_id(),
        "--reason",
        "replacement hardware",
        "--json",
        "--db",
    ])
    .arg(&svc.db)
    .ok();
    assert_status(&c.checkin(&*svc.clock), Status::Active, None);
    assert_eq!(c.status(&*svc.clock)["state"], "active");
}

#[test]
fn reinstall_supersedes_the_old_instance_which_is_judged_at_serial_level() {
    let (sb, svc, a) = world();
    let clock = svc.clock.clone();
    let boot = |c: &Copy| c.boot(&*clock).checkin.expect("boot checks in");
    assert_status(&boot(&a), Status::Active, None);
    clock.advance(chrono::Duration::days(1));
    a.checkin(&*clock);
    // A reinstall: a new instance for the same serial.
    clock.advance(chrono::Duration::days(1));
    let b = appliance(&sb, &svc, "b");
    assert_status(&boot(&b), Status::Active, None);
    // The old installation keeps running: first its pending tail, then caught.
    clock.advance(chrono::Duration::days(1));
    assert_status(&a.checkin(&*clock), Status::Active, None);
    clock.advance(chrono::Duration::days(1));
    let r = a.checkin(&*clock);
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    let verdict = receipt(&r).body.verdict.clone().unwrap();
    assert!(verdict.starts_with("SN-1/s"), "{verdict}");
    // The old installation learnt it and enforces it, naming the serial-level verdict.
    let s = a.status(&*clock);
    assert_eq!(
        (&s["state"], &s["verdict"]),
        (&json!("disabled"), &json!(verdict))
    );
    assert_eq!(a.boot(&*clock).code, 4);
    assert_status(&b.checkin(&*clock), Status::Active, None);
    let doc = common::service::show(&sb, &svc.db, "SN-1");
    validate("admin-show", &doc);
    let v = &doc["verdicts"][0];
    assert_eq!(v["rule"], "4-resumed");
    vmledger::service::evidence::verify(&v["evidence"]).unwrap();
}

#[test]
fn sla_expiry_is_reported_in_receipts() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2027-01-12", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let svc = Svc::start(&db, key, clock.clone());
    let a = appliance(&sb, &svc, "a");
    // The SLA covers its whole end date (UTC); the service and the agent agree on the
    // instant it ends: 2027-01-13T00:00:00Z.
    for (day, want, state) in [
        (0, Status::Active, "sla_warning"),
        (1, Status::Active, "sla_warning"),
        (2, Status::Active, "sla_warning"),
        (3, Status::SlaExpired, "sla_expired"),
    ] {
        if day > 0 {
            clock.advance(chrono::Duration::days(1));
        }
        let r = a.checkin(&*clock);
        let rc = receipt(&r);
        assert_eq!(rc.body.status, want, "day {day}");
        assert_eq!(rc.body.sla_ends.as_deref(), Some("2027-01-12"));
        if want == Status::SlaExpired {
            assert_eq!(rc.body.reason.as_deref(), Some("sla_expired"));
        }
        let s = a.status(&*clock);
        assert_eq!(s["state"], state, "day {day}: {s:#}");
        assert_eq!(s["sla_ends_at"], "2027-01-13T00:00:00.000Z");
    }
    // Renewing takes effect at once.
    sla(&sb, &db, "SN-1", "2028-01-12", CODE);
    assert_status(&a.checkin(&*clock), Status::Active, None);
    assert_eq!(a.status(&*clock)["state"], "active");
}

#[test]
fn rate_limit_allows_a_burst_of_ten_then_429() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let settings = Settings {
        rate_burst: 12,
        rate_per_minute: 1,
        ..Settings::default()
    };
    let svc = Svc::start_with(&db, key, clock.clone(), settings);
    let a = appliance(&sb, &svc, "a");
    let mut statuses = Vec::new();
    for _ in 0..14 {
        // The clock does not move: all of these arrive "at once".
        let r = a.checkin(&*clock);
        statuses.push(match r {
            Reply::Receipt(_) => 200,
            Reply::Refused { status, .. } => status,
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(&statuses[..12], &[200; 12]);
    assert_eq!(&statuses[12..], &[429, 429]);
    // A minute later one more is allowed.
    clock.advance(chrono::Duration::seconds(61));
    assert!(matches!(a.checkin(&*clock), Reply::Receipt(_)));
}

/// Somebody who knows an appliance's instance id floods the service with requests that
/// name it, signed with a key of their own: they get 429s, and the appliance's own
/// check-ins go on (its allowance is its own: per instance and signing key).
#[test]
fn requests_signed_with_another_key_never_use_up_an_instances_allowance() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let settings = Settings {
        rate_burst: 3,
        rate_per_minute: 1,
        ..Settings::default()
    };
    let svc = Svc::start_with(&db, key, clock.clone(), settings);
    let a = appliance(&sb, &svc, "a");
    assert!(matches!(a.checkin(&*clock), Reply::Receipt(_)));
    let intruder = vmledger::keys::SigningKey::generate().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let req = vmledger::checkin::sign_request(
            "SN-1",
            &intruder,
            &a.instance_id(),
            Vec::new(),
            None,
            None,
            None,
            clock.get(),
        )
        .unwrap();
        statuses.push(match post(&svc.url, &req) {
            Reply::Refused { status, .. } => status,
            other => panic!("an intruder's request was not refused: {other:?}"),
        });
    }
    assert!(statuses[..3].iter().all(|s| *s != 429), "{statuses:?}");
    assert_eq!(&statuses[3..], &[429, 429, 429]);
    // The clock has not moved: the appliance still has its own tokens.
    assert_status(&a.checkin(&*clock), Status::Active, None);
}

#[test]
fn oversized_and_slow_bodies_are_bounded() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let settings = Settings {
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let svc = Svc::start_with(&db, key, clock, settings);
    let addr = svc.url.trim_start_matches("http://").to_string();
    // An announced body over the limit is refused before it is read. (Sending all of it
    // races the server's early answer and close: the client may see a broken pipe.)
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /v1/checkin HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 204800\r\n\r\n").unwrap();
    let _ = s.write_all(&[b' '; 1024]);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"too_large\""), "{text}");
    // A client that announces a body and never sends it gets an answer, not a hang.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /v1/checkin HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"error\":\"timeout\""), "{text}");
}

#[test]
fn random_bodies_never_cause_a_500() {
    use proptest::prelude::*;
    let (_sb, svc, a) = world();
    let good = serde_json::to_vec(&a.request(Some(CODE), &*svc.clock)).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 150,
        ..Default::default()
    });
    let strategy = (
        0..good.len(),
        any::<u8>(),
        0usize..4,
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    runner
        .run(&strategy, |(pos, byte, mode, junk)| {
            let mut body = good.clone();
            match mode {
                0 => body[pos] = byte,
                1 => body.truncate(pos),
                2 => body.splice(pos..pos, junk.iter().copied()).for_each(drop),
                _ => body = junk.clone(),
            }
            let (status, bytes) = http(&svc.url, "POST", "/v1/checkin", body);
            prop_assert!(
                status == 200 || (400..500).contains(&status),
                "status {status}"
            );
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if status != 200 {
                prop_assert_eq!(&v["format"], "vmledger-service-error/v1");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn health_and_metrics() {
    let (_sb, svc, a) = world();
    assert_status(&a.checkin(&*svc.clock), Status::Active, None);
    let (s, b) = http(&svc.url, "GET", "/healthz", vec![]);
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    validate("health", &v);
    assert_eq!(v["server_time"], "2027-01-10T10:00:00.000Z");
    let (s, b) = http(&svc.url, "GET", "/metrics", vec![]);
    assert_eq!(s, 200);
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("vmledger_http_requests_total{route=\"/v1/checkin\",code=\"200\"} 1"),
        "{text}"
    );
    // The first check-in carries the whole ledger: genesis and `service_configured`.
    assert!(text.contains("vmledger_entries_stored_total 2"), "{text}");
    assert!(text.contains("vmledger_commit_batch_size_count"), "{text}");
}

#[test]
fn serve_binary_speaks_tls_and_stops_gracefully_on_sigterm() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(sb.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(sb.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let cert_path = sb.join("cert.pem").display().to_string();
    let key_path = sb.join("key.pem").display().to_string();
    let p = ServeProc::start(
        &sb,
        &db,
        None,
        &[
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
            "--no-alerts",
        ],
    );
    assert!(p.url.starts_with("https://127.0.0.1:"), "{}", p.url);
    let url = p.url.replace("127.0.0.1", "localhost");
    let ca = sb.join("cert.pem");
    let a = Copy::init(
        &sb,
        "a",
        "SN-1",
        &url,
        &key,
        Some(CODE),
        "2026-12-01 10:00:00",
    );
    let req = a.request(Some(CODE), &vmledger::time::SystemClock);
    let (status, body) = http_with(&url, Some(&ca), "POST", "/v1/checkin", signed(&req)).unwrap();
    match vmledger::checkin::decode_reply(status, &body, &url).unwrap() {
        vmledger::checkin::Reply::Receipt(r) => r.verify(&key).unwrap(),
        other => panic!("{other:?}"),
    }
    // Plain HTTP to the TLS port is not answered as HTTP.
    assert!(
        http_with(
            &p.url.replace("https", "http"),
            None,
            "GET",
            "/healthz",
            vec![]
        )
        .is_err()
    );
    // The agent pins the service key, not a certificate authority: an https URL whose
    // certificate it cannot verify is a `tls` failure, recorded, never a receipt.
    match a.checkin("2026-12-01 10:01:00") {
        Reply::Failed { reason, detail } => assert_eq!(reason, "tls", "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.terminate(), 0);
    // What was acknowledged is in the database.
    let doc = common::service::show(&sb, &db, &a.instance_id());
    assert_eq!(doc["instances"][0]["entries"], 2);
}

#[test]
fn offline_receipt_for_an_air_gapped_site() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    // The real agent writes the request file; the vendor answers it from the database.
    const AT: &str = "2026-12-01 10:00:00";
    let a = Copy::init_air_gapped(&sb, "a", "SN-1", &key, Some(CODE), AT);
    let req_path = sb.join("request.json");
    let doc = a
        .ok(
            AT,
            &[
                "checkin",
                "--json",
                "--request-file",
                req_path.to_str().unwrap(),
            ],
        )
        .json();
    validate("checkin", &doc);
    let req: CheckinRequest =
        serde_json::from_slice(&std::fs::read(sb.join("request.json")).unwrap()).unwrap();
    validate("checkin-request", &serde_json::to_value(&req).unwrap());
    assert_eq!(req.body.activation_code.as_deref(), Some(CODE));
    let out = sb
        .cmd(["admin", "offline-receipt", "--json", "--request"])
        .arg(sb.join("request.json"))
        .arg("-o")
        .arg(sb.join("receipt.json"))
        .arg("--db")
        .arg(&db)
        .ok()
        .json();
    validate("admin-offline-receipt", &out);
    let receipt: vmledger::protocol::Receipt =
        serde_json::from_slice(&std::fs::read(sb.join("receipt.json")).unwrap()).unwrap();
    receipt.verify(&key).unwrap();
    assert_eq!(receipt.body.status, Status::Active);
    assert_eq!(receipt.body.nonce, req.body.nonce);
    // The agent applies the receipt the admin brought back: activated.
    let response = sb.join("receipt.json");
    let r = a.run(
        "2026-12-01 11:00:00",
        &[
            "checkin",
            "--json",
            "--response-file",
            response.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    validate("checkin", &r.json());
    assert_eq!(r.json()["via"], "file");
    assert_eq!(a.status("2026-12-01 11:01:00")["state"], "active");
    // The same file again is a replay: a clear error, exit 2.
    let r = sb
        .cmd(["admin", "offline-receipt", "--request"])
        .arg(sb.join("request.json"))
        .arg("-o")
        .arg(sb.join("receipt2.json"))
        .arg("--db")
        .arg(&db)
        .expect(2);
    assert!(r.stderr.contains("replayed_nonce"), "{}", r.stderr);
    // A garbled file names the file.
    std::fs::write(sb.join("bad.json"), b"{\"format\":").unwrap();
    let r = sb
        .cmd(["admin", "offline-receipt", "--request"])
        .arg(sb.join("bad.json"))
        .arg("-o")
        .arg(sb.join("r3.json"))
        .arg("--db")
        .arg(&db)
        .expect(2);
    assert!(
        r.stderr.contains("bad.json") && r.stderr.contains("malformed_json"),
        "{}",
        r.stderr
    );
}

#[test]
fn admin_sla_and_service_init_outputs() {
    let sb = Sandbox::new();
    let db = sb.join("s.sqlite");
    let doc = sb
        .cmd(["service", "init", "--json", "--db"])
        .arg(&db)
        .ok()
        .json();
    validate("service-key", &doc);
    let r = sb.cmd(["service", "init", "--db"]).arg(&db).expect(2);
    assert!(r.stderr.contains("already initialised"), "{}", r.stderr);
    let doc = sb
        .cmd([
            "admin",
            "sla",
            "set",
            "SN-9",
            "--ends",
            "2027-06-30",
            "--contact",
            "ops@example.com",
            "--json",
        ])
        .env("VMLEDGER_DB", &db)
        .ok()
        .json();
    validate("admin-sla", &doc);
    assert_eq!(doc["activation_code"].as_str().unwrap().len(), 23);
    let r = sb
        .cmd(["admin", "sla", "set", "SN-9", "--ends", "30/06/2027"])
        .env("VMLEDGER_DB", &db)
        .expect(2);
    assert!(r.stderr.contains("--ends"), "{}", r.stderr);
    std::fs::write(
        sb.join("ok.csv"),
        "serial,ends,contact\nSN-A,2027-01-01,a@example.com\nSN-B,2027-02-01,\n",
    )
    .unwrap();
    let doc = sb
        .cmd(["admin", "sla", "import", "--json"])
        .arg(sb.join("ok.csv"))
        .env("VMLEDGER_DB", &db)
        .ok()
        .json();
    validate("admin-sla-import", &doc);
    assert_eq!(doc["serials"].as_array().unwrap().len(), 2);
    std::fs::write(
        sb.join("bad.csv"),
        "serial,ends\nSN-C,2027-01-01\nSN D,2027-01-01\n",
    )
    .unwrap();
    let r = sb
        .cmd(["admin", "sla", "import"])
        .arg(sb.join("bad.csv"))
        .env("VMLEDGER_DB", &db)
        .expect(2);
    assert!(r.stderr.contains("bad.csv line 3, serial"), "{}", r.stderr);
    // All or nothing: SN-C was not created.
    let r = sb
        .cmd(["admin", "show", "SN-C"])
        .env("VMLEDGER_DB", &db)
        .expect(2);
    assert!(r.stderr.contains("nothing matches"), "{}", r.stderr);
    let r = sb
        .cmd(["admin", "show", "SN-9"])
        .env("VMLEDGER_DB", sb.join("missing.sqlite"))
        .expect(2);
    assert!(r.stderr.contains("service init"), "{}", r.stderr);
}
