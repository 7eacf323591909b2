//! The HTTP API's contract and hardening: every bad input gets a 4xx JSON
//! `vmledger-service-error/v1` (never a 500, never a hang), activation and key pinning,
//! replayed nonces, body limits, per-instance rate limits that allow a burst, health and
//! metrics, TLS, graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::Sandbox;
use common::service::{
    Copy, ServeProc, Svc, TestClock, assert_status, init_db, receipt, refused, sla, validate,
};
use serde_json::{Value, json};
use vmledger::protocol::{CheckinRequest, Status};
use vmledger::service::Settings;
use vmledger::service::client::{self, Reply};

const CODE: &str = "CODE-1";

fn world() -> (Sandbox, Svc, Copy) {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let svc = Svc::start(&db, key, clock.clone());
    let a = Copy::init(&sb, "a", "SN-1", &clock.faketime());
    (sb, svc, a)
}

fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let (status, bytes) = client::send_blocking(
        url,
        None,
        "POST",
        "/v1/checkin",
        body,
        Duration::from_secs(30),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

fn assert_error(url: &str, body: Vec<u8>, status: u16, code: &str) -> Value {
    let (s, v) = post(url, body);
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
    let (s, b) = client::send_blocking(
        url,
        None,
        "GET",
        "/v1/checkin",
        vec![],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(s, 405);
    validate("service-error", &serde_json::from_slice(&b).unwrap());
    let (s, b) =
        client::send_blocking(url, None, "GET", "/nope", vec![], Duration::from_secs(30)).unwrap();
    assert_eq!(s, 404);
    validate("service-error", &serde_json::from_slice(&b).unwrap());
    // Nothing was stored by any of this: the first real check-in activates.
    let reply = a.checkin(url, &svc.key, Some(CODE), &*svc.clock);
    assert_status(&reply, Status::Active, None);
    validate("checkin-request", &serde_json::to_value(&good).unwrap());
}

#[test]
fn replayed_nonce_and_key_mismatch_are_refused() {
    let (sb, svc, a) = world();
    let req = a.request(Some(CODE), &*svc.clock);
    let first = client::checkin_blocking(&svc.url, None, &req, Duration::from_secs(30)).unwrap();
    receipt(&first);
    let again = client::checkin_blocking(&svc.url, None, &req, Duration::from_secs(30)).unwrap();
    let (status, err) = refused(&again);
    assert_eq!((status, err.error.as_str()), (409, "replayed_nonce"));
    // Same instance id, another key: refused, the pinned key stands.
    let other = Copy::init(&sb, "other", "SN-1", &svc.clock.faketime());
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
    let (s, v) = post(&svc.url, signed(&r));
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (403, "key_mismatch"),
        "{v}"
    );
}

#[test]
fn activation_limit_then_operator_approval() {
    let (sb, svc, a) = world();
    assert_status(
        &a.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock),
        Status::Active,
        None,
    );
    let b = Copy::init(&sb, "b", "SN-1", &svc.clock.faketime());
    assert_status(
        &b.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock),
        Status::Active,
        None,
    );
    // A third new instance within 30 days waits for the vendor.
    let c = Copy::init(&sb, "c", "SN-1", &svc.clock.faketime());
    let r = c.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock);
    let (status, err) = refused(&r);
    assert_eq!((status, err.error.as_str()), (403, "activation_limit"));
    let r = c.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock);
    assert_eq!(refused(&r).1.error, "activation_pending");
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
    assert_status(
        &c.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock),
        Status::Active,
        None,
    );
}

#[test]
fn reinstall_supersedes_the_old_instance_which_is_judged_at_serial_level() {
    let (sb, svc, a) = world();
    let clock = svc.clock.clone();
    a.boot(&sb, &clock);
    assert_status(
        &a.checkin(&svc.url, &svc.key, Some(CODE), &*clock),
        Status::Active,
        None,
    );
    clock.advance(chrono::Duration::days(1));
    a.checkin(&svc.url, &svc.key, None, &*clock);
    // A reinstall: a new instance for the same serial.
    clock.advance(chrono::Duration::days(1));
    let b = Copy::init(&sb, "b", "SN-1", &clock.faketime());
    b.boot(&sb, &clock);
    assert_status(
        &b.checkin(&svc.url, &svc.key, Some(CODE), &*clock),
        Status::Active,
        None,
    );
    // The old installation keeps running: first its pending tail, then caught.
    clock.advance(chrono::Duration::days(1));
    assert_status(
        &a.checkin(&svc.url, &svc.key, None, &*clock),
        Status::Active,
        None,
    );
    clock.advance(chrono::Duration::days(1));
    let r = a.checkin(&svc.url, &svc.key, None, &*clock);
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    assert!(
        receipt(&r)
            .body
            .verdict
            .as_deref()
            .unwrap()
            .starts_with("SN-1/s")
    );
    assert_status(
        &b.checkin(&svc.url, &svc.key, None, &*clock),
        Status::Active,
        None,
    );
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
    let a = Copy::init(&sb, "a", "SN-1", &clock.faketime());
    for (day, want) in [
        (0, Status::Active),
        (1, Status::Active),
        (2, Status::Active),
        (3, Status::SlaExpired),
    ] {
        if day > 0 {
            clock.advance(chrono::Duration::days(1));
        }
        let r = a.checkin(&svc.url, &key, (day == 0).then_some(CODE), &*clock);
        let rc = receipt(&r);
        assert_eq!(rc.body.status, want, "day {day}");
        assert_eq!(rc.body.sla_ends.as_deref(), Some("2027-01-12"));
        if want == Status::SlaExpired {
            assert_eq!(rc.body.reason.as_deref(), Some("sla_expired"));
        }
    }
    // Renewing takes effect at once.
    sla(&sb, &db, "SN-1", "2028-01-12", CODE);
    assert_status(
        &a.checkin(&svc.url, &key, None, &*clock),
        Status::Active,
        None,
    );
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
    let a = Copy::init(&sb, "a", "SN-1", &clock.faketime());
    let mut statuses = Vec::new();
    for i in 0..14 {
        // The clock does not move: all of these arrive "at once".
        let r = a.checkin(&svc.url, &key, (i == 0).then_some(CODE), &*clock);
        statuses.push(match r {
            Reply::Receipt(_) => 200,
            Reply::Refused { status, .. } => status,
        });
    }
    assert_eq!(&statuses[..12], &[200; 12]);
    assert_eq!(&statuses[12..], &[429, 429]);
    // A minute later one more is allowed.
    clock.advance(chrono::Duration::seconds(61));
    assert!(matches!(
        a.checkin(&svc.url, &key, None, &*clock),
        Reply::Receipt(_)
    ));
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
    assert_error(&svc.url, vec![b' '; 200 * 1024], 413, "too_large");
    // A client that announces a body and never sends it gets an answer, not a hang.
    let addr = svc.url.trim_start_matches("http://").to_string();
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
            let (status, bytes) = client::send_blocking(
                &svc.url,
                None,
                "POST",
                "/v1/checkin",
                body,
                Duration::from_secs(30),
            )
            .unwrap();
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
    a.checkin(&svc.url, &svc.key, Some(CODE), &*svc.clock);
    let (s, b) = client::send_blocking(
        &svc.url,
        None,
        "GET",
        "/healthz",
        vec![],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    validate("health", &v);
    assert_eq!(v["server_time"], "2027-01-10T10:00:00.000Z");
    let (s, b) = client::send_blocking(
        &svc.url,
        None,
        "GET",
        "/metrics",
        vec![],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(s, 200);
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("vmledger_http_requests_total{route=\"/v1/checkin\",code=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("vmledger_entries_stored_total 1"), "{text}");
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
    let tls = client::tls_config_with_ca(&sb.join("cert.pem")).unwrap();
    let a = Copy::init(&sb, "a", "SN-1", "2026-12-01 10:00:00");
    let req =
        client::request_from_state(&a.instance(), 0, Some(CODE), &vmledger::time::SystemClock)
            .unwrap();
    let r =
        client::checkin_blocking(&url, Some(tls.clone()), &req, Duration::from_secs(30)).unwrap();
    receipt(&r).verify(&key).unwrap();
    // Plain HTTP to the TLS port is not answered as HTTP.
    assert!(
        client::send_blocking(
            &p.url.replace("https", "http"),
            None,
            "GET",
            "/healthz",
            vec![],
            Duration::from_secs(5)
        )
        .is_err()
    );
    assert_eq!(p.terminate(), 0);
    // What was acknowledged is in the database.
    let doc = common::service::show(&sb, &db, &a.instance_id());
    assert_eq!(doc["instances"][0]["entries"], 1);
}

#[test]
fn offline_receipt_for_an_air_gapped_site() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let a = Copy::init(&sb, "a", "SN-1", "2026-12-01 10:00:00");
    let req =
        client::request_from_state(&a.instance(), 0, Some(CODE), &vmledger::time::SystemClock)
            .unwrap();
    std::fs::write(sb.join("request.json"), serde_json::to_vec(&req).unwrap()).unwrap();
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
