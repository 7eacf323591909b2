//! Black-box: the service reads time through the standard clock calls, so `vmledger
//! serve` under libfaketime answers in the faked time (server_time, SLA expiry,
//! next_checkin_before), and the real agent under faketime at the same date agrees with
//! it about what that means.

mod common;

use common::Sandbox;
use common::service::{Copy, ServeProc, http, init_db, receipt, sla};
use vmledger::protocol::Status;

#[test]
fn serve_under_faketime_answers_in_the_faked_time() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2031-06-30", "CODE");
    let p = ServeProc::start(&sb, &db, Some("2031-07-04 12:00:00"), &["--no-alerts"]);
    let a = Copy::init(
        &sb,
        "a",
        "SN-1",
        &p.url,
        &key,
        Some("CODE"),
        "2031-07-04 11:59:00",
    );
    let r = a.checkin("2031-07-04 12:00:00");
    let rc = receipt(&r);
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
    // The agent counts down from the end of the SLA's last day, as the service does.
    let s = a.status("2031-07-04 12:01:00");
    assert_eq!(s["state"], "sla_expired", "{s:#}");
    assert_eq!(s["sla_ends_at"], "2031-07-01T00:00:00.000Z");
    assert_eq!(s["countdown_ends_at"], "2031-07-15T00:00:00.000Z");
    let (s, b) = http(&p.url, "GET", "/healthz", vec![]);
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&b).contains("\"server_time\":\"2031-07-04T12:"));
    assert_eq!(p.terminate(), 0);
}
