//! Black-box: the service reads time through the standard clock calls, so `vmledger
//! serve` under libfaketime answers in the faked time (server_time, SLA expiry,
//! next_checkin_before), and the alert job computes its stages in it too.

mod common;

use std::time::Duration;

use common::Sandbox;
use common::service::{Copy, ServeProc, init_db, receipt, sla};
use vmledger::protocol::Status;
use vmledger::service::client;

#[test]
fn serve_under_faketime_answers_in_the_faked_time() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2031-06-30", "CODE");
    let p = ServeProc::start(&sb, &db, Some("2031-07-04 12:00:00"), &["--no-alerts"]);
    let a = Copy::init(&sb, "a", "SN-1", "2031-07-04 11:00:00");
    let req =
        client::request_from_state(&a.instance(), 0, Some("CODE"), &vmledger::time::SystemClock)
            .unwrap();
    let r = client::checkin_blocking(&p.url, None, &req, Duration::from_secs(30)).unwrap();
    let rc = receipt(&r);
    rc.verify(&key).unwrap();
    assert!(
        rc.body.server_time.starts_with("2031-07-04T12:"),
        "{}",
        rc.body.server_time
    );
    assert!(
        rc.body.next_checkin_before.starts_with("2031-07-05T12:"),
        "{}",
        rc.body.next_checkin_before
    );
    assert_eq!(rc.body.status, Status::SlaExpired);
    assert_eq!(rc.body.reason.as_deref(), Some("sla_expired"));
    let (s, b) = client::send_blocking(
        &p.url,
        None,
        "GET",
        "/healthz",
        vec![],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&b).contains("\"server_time\":\"2031-07-04T12:"));
    assert_eq!(p.terminate(), 0);
}
