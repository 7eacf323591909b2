//! The network path against real local TCP listeners: connection refused, a server that
//! accepts and never answers (`boot` and `checkin` return within their bound and record
//! `checkin_failed` with the reason), and a minimal HTTP/1.1 responder speaking the wire
//! protocol for 200, 409 re-sync and 4xx service errors. Plain HTTP is refused off
//! loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::Sandbox;
use common::vendor::{Answer, Vendor, entries_of, run_with_deadline};
use vmledger::protocol::{CheckinRequest, ServiceError};

fn init(sb: &Sandbox, url: &str, v: &Vendor) {
    sb.cmd([
        "init",
        "--serial",
        "SN-N",
        "--service",
        url,
        "--service-key",
    ])
    .arg(v.public_key_b64())
    .ok();
}

fn now() -> String {
    vmledger::time::format_at(vmledger::time::truncate_ms(chrono::Utc::now()))
}

fn last_failure(sb: &Sandbox) -> serde_json::Value {
    entries_of(sb, "checkin_failed")
        .pop()
        .expect("checkin_failed")["body"]["data"]
        .clone()
}

#[test]
fn connection_refused_is_recorded() {
    let v = Vendor::new();
    let sb = Sandbox::new();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    init(&sb, &url, &v);
    let r = run_with_deadline(sb.cmd(["checkin", "--json"]).cmd, Duration::from_secs(60));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let f = last_failure(&sb);
    assert_eq!(f["reason"], "connect", "{f}");
    assert_eq!(f["via"], "network");
    assert_eq!(f["url"], url);
    // boot still works, records the failed check-in, and exits 0.
    let r = run_with_deadline(sb.cmd(["boot", "--json"]).cmd, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["checkin"]["reason"], "connect");
    assert_eq!(entries_of(&sb, "checkin_failed").len(), 2);
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn hanging_service_is_bounded() {
    let v = Vendor::new();
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold every connection without ever answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    init(&sb, &url, &v);
    let r = run_with_deadline(sb.cmd(["boot", "--json"]).cmd, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["checkin"]["reason"], "timeout", "{}", r.stdout);
    let f = last_failure(&sb);
    assert_eq!(f["reason"], "timeout");
    assert!(f["detail"].as_str().unwrap().contains("5 s"), "{f}");
    assert!(network_ms(&sb) < 7_500, "boot's bound is 5 s");
    let r = run_with_deadline(
        sb.cmd(["checkin", "--timeout", "1"]).cmd,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("timeout"), "{}", r.stderr);
    assert!(
        last_failure(&sb)["detail"]
            .as_str()
            .unwrap()
            .contains("1 s")
    );
}

/// The bound covers the whole check-in: a service that answers 409 `unknown_prev` just
/// before the bound and then hangs on the re-sent request does not get a second full
/// timeout. Measured between the `boot` entry and the `checkin_failed` entry the command
/// wrote (process start-up and fingerprinting excluded).
#[test]
fn hanging_service_bound_covers_the_resend() {
    let v = Vendor::new();
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    const BOUND_S: u64 = 4;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, s) in listener.incoming().enumerate() {
            let s = s.unwrap();
            if i == 0 {
                // The first request: 409 after 90% of the bound.
                read_request(&s);
                std::thread::sleep(Duration::from_millis(BOUND_S * 900));
                let e = ServiceError {
                    format: "vmledger-service-error/v1".into(),
                    error: "unknown_prev".into(),
                    message: "resend".into(),
                    acked_seq: None,
                    acked_hash: None,
                };
                respond(&s, 409, &serde_json::to_vec(&e).unwrap());
            }
            // Then hold every connection without answering.
            held.push(s);
        }
    });
    init(&sb, &url, &v);
    let r = run_with_deadline(
        sb.cmd(["boot", "--json", "--checkin-timeout", &BOUND_S.to_string()])
            .cmd,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["checkin"]["reason"], "timeout", "{}", r.stdout);
    let failed = last_failure(&sb);
    let spent = network_ms(&sb);
    // Generous: half the bound again for scheduling on a busy machine; a second full
    // timeout for the re-sent request would be 1.9 times the bound.
    assert!(
        spent < (BOUND_S * 1500) as i64,
        "the check-in took {spent} ms with a bound of {BOUND_S} s"
    );
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("within {BOUND_S} s")),
        "{failed}"
    );
}

/// Milliseconds between the newest `boot` entry and the newest `checkin_failed` entry:
/// how long the boot-time check-in took (process start-up and fingerprinting excluded).
fn network_ms(sb: &Sandbox) -> i64 {
    let at = |kind: &str| {
        let e = entries_of(sb, kind).pop().unwrap();
        vmledger::time::parse_at(e["body"]["at"].as_str().unwrap()).unwrap()
    };
    (at("checkin_failed") - at("boot")).num_milliseconds()
}

/// Read one HTTP/1.1 request; returns (request line, body).
fn read_request(s: &TcpStream) -> (String, Vec<u8>) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (line, body)
}

fn respond(mut s: &TcpStream, code: u16, body: &[u8]) {
    write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
}

#[test]
fn http_receipts_resync_and_service_errors() {
    let mut v = Vendor::new();
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    init(&sb, &url, &v);
    let genesis = entries_of(&sb, "genesis").pop().unwrap();
    let genesis_hash = genesis["hash"].as_str().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (i, s) in listener.incoming().enumerate() {
            let s = s.unwrap();
            let (line, body) = read_request(&s);
            assert!(line.starts_with("POST /v1/checkin "), "{line}");
            let req: CheckinRequest = serde_json::from_slice(&body).unwrap();
            req.verify().unwrap();
            seen.push(
                req.body
                    .entries
                    .iter()
                    .map(|e| e.body.seq)
                    .collect::<Vec<_>>(),
            );
            match i {
                // 1: a plain receipt.
                0 => {
                    let r = v.answer(&req, &now(), Answer::default());
                    respond(&s, 200, &serde_json::to_vec(&r).unwrap());
                }
                // 2: the service only has the genesis: 409 with its head; 3: the re-sent
                // request from seq 1 gets its receipt.
                1 => {
                    let e = ServiceError {
                        format: "vmledger-service-error/v1".into(),
                        error: "unknown_prev".into(),
                        message: "resend from the acknowledged head".into(),
                        acked_seq: Some(0),
                        acked_hash: Some(genesis_hash.clone()),
                    };
                    v.acked = Some((0, genesis_hash.clone()));
                    respond(&s, 409, &serde_json::to_vec(&e).unwrap());
                }
                2 => {
                    let r = v.answer(&req, &now(), Answer::default());
                    respond(&s, 200, &serde_json::to_vec(&r).unwrap());
                }
                // 4: refused with a service error body.
                3 => {
                    let e = ServiceError {
                        format: "vmledger-service-error/v1".into(),
                        error: "bad_activation_code".into(),
                        message: "the activation code is wrong".into(),
                        acked_seq: None,
                        acked_hash: None,
                    };
                    respond(&s, 403, &serde_json::to_vec(&e).unwrap());
                    return seen;
                }
                _ => unreachable!(),
            }
        }
        seen
    });
    let checkin = || run_with_deadline(sb.cmd(["checkin", "--json"]).cmd, Duration::from_secs(60));
    let r = checkin();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["via"], "network");
    assert_eq!(r.json()["state"], "active");
    let r = checkin();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = checkin();
    assert_eq!(r.code, 1);
    let f = last_failure(&sb);
    assert_eq!(f["reason"], "refused");
    assert_eq!(f["http_status"], 403);
    assert_eq!(f["service_error"], "bad_activation_code");
    let seen = server.join().unwrap();
    assert_eq!(seen[0][0], 0, "the first request carries the genesis");
    assert_eq!(
        seen[2][0], 1,
        "after the 409 the request restarts after the service's head"
    );
    assert!(
        seen[3][0] > seen[2][seen[2].len() - 1],
        "acknowledged entries are not re-sent"
    );
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn plain_http_is_only_for_loopback() {
    let v = Vendor::new();
    let sb = Sandbox::new();
    let r = sb
        .cmd([
            "init",
            "--serial",
            "SN-N",
            "--service",
            "http://licensing.example.com",
            "--service-key",
        ])
        .arg(v.public_key_b64())
        .run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("loopback"), "{}", r.stderr);
    assert!(
        !sb.state().join("instance.json").exists(),
        "nothing was created"
    );
    let r = sb
        .cmd([
            "init",
            "--serial",
            "SN-N",
            "--service",
            "https://licensing.example.com",
        ])
        .run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--service-key"), "{}", r.stderr);
}

/// Over HTTP, a service (or something in its place) answering with an earlier receipt
/// (replayed: another request's nonce) or a fresh one whose server time is older than
/// the newest receipt held (stale) is refused: recorded as `checkin_failed` with the
/// reason, the license state unchanged, the ledger intact.
#[test]
fn replayed_and_stale_receipts_over_http_are_rejected() {
    let mut v = Vendor::new();
    let sb = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    init(&sb, &url, &v);
    let server = std::thread::spawn(move || {
        let mut first = None;
        for (i, s) in listener.incoming().enumerate() {
            let s = s.unwrap();
            let (_, body) = read_request(&s);
            let req: CheckinRequest = serde_json::from_slice(&body).unwrap();
            let receipt = match i {
                // A genuine answer, server time now.
                0 => {
                    let r = v.answer(&req, &now(), Answer::default());
                    first = Some(r.clone());
                    r
                }
                // The same receipt again, for a new request.
                1 => first.clone().unwrap(),
                // A correctly signed answer to this request, dated a day back.
                2 => {
                    let old = vmledger::time::format_at(
                        vmledger::time::truncate_ms(chrono::Utc::now()) - chrono::Duration::days(1),
                    );
                    v.answer(&req, &old, Answer::default())
                }
                _ => unreachable!(),
            };
            respond(&s, 200, &serde_json::to_vec(&receipt).unwrap());
            if i == 2 {
                return;
            }
        }
    });
    let checkin = || run_with_deadline(sb.cmd(["checkin", "--json"]).cmd, Duration::from_secs(60));
    let r = checkin();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lease = r.json()["receipt"].clone();
    for reason in ["nonce_mismatch", "stale"] {
        let r = checkin();
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let doc = r.json();
        assert_eq!(doc["reason"], reason, "{doc}");
        assert_eq!(doc["state"], "active");
        assert!(r.stderr.contains(reason), "{}", r.stderr);
        let f = last_failure(&sb);
        assert_eq!(f["reason"], reason);
        assert_eq!(f["via"], "network");
        assert!(f["receipt"].is_string(), "{f}");
    }
    server.join().unwrap();
    assert_eq!(entries_of(&sb, "checkin").len(), 1);
    let s = sb.cmd(["status", "--json"]).ok().json();
    assert_eq!(s["last_receipt"], lease);
    assert_eq!(s["last_checkin_failure"]["reason"], "stale");
    sb.cmd(["ledger", "verify"]).ok();
}
