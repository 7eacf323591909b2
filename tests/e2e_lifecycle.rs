//! The license lifecycle black box, both sides real: the appliance agent (`vmledger boot`,
//! `checkin`, `status`, `gate`, `watch` under `faketime`) against the real `vmledger
//! serve` on 127.0.0.1, whose clock libfaketime reads from a file the test rewrites, so
//! both clocks walk the calendar together: daily check-ins, the service gone (countdown
//! from when the next check-in was due, then locked, `gate` 3, `watch` records a blocked
//! change, the clock set back a week changes nothing), the service back (one check-in
//! unlocks), an SLA end set with `vmledger admin sla set` (warning, agreed with the
//! service's alert stage; countdown; disabled 14 days later, across reboots; the clock set
//! back mid-countdown extends nothing), and a hanging service (`boot` returns within its
//! bound).

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use common::service::{
    Copy, Reply, ServeProc, ServeTime, init_db, receipt, set_time_file, show, validate,
};
use common::vendor::faked;
use common::watch::Watch;
use serde_json::Value;
use vmledger::ledger::Entry;
use vmledger::protocol::Status;

const SERIAL: &str = "SN-E2E";
const CODE: &str = "ACT-E2E";
const CONTACT: &str = "ops@customer.example";

struct Walk {
    sb: Sandbox,
    db: PathBuf,
    key: [u8; 32],
    time_file: PathBuf,
    serve: Option<ServeProc>,
    listen: String,
    a: Copy,
}

impl Walk {
    fn new(start: &str) -> Walk {
        let sb = Sandbox::new();
        let (db, key) = init_db(&sb);
        sla_set(&sb, &db, "2031-12-31");
        let time_file = sb.join("service-time");
        set_time_file(&time_file, start);
        let serve = serve(&sb, &db, &time_file, "127.0.0.1:0");
        let a = Copy::init(&sb, "a", SERIAL, &serve.url, &key, Some(CODE), start);
        Walk {
            listen: serve.url.trim_start_matches("http://").to_string(),
            serve: Some(serve),
            sb,
            db,
            key,
            time_file,
            a,
        }
    }

    /// Set both clocks to `when` (`YYYY-MM-DD hh:mm:ss`): the service's (it runs on from
    /// there) and the one the agent's next command starts at.
    fn at<'a>(&self, when: &'a str) -> &'a str {
        set_time_file(&self.time_file, when);
        when
    }

    /// Start the service again at the same address.
    fn start_service(&mut self) {
        self.serve = Some(serve(&self.sb, &self.db, &self.time_file, &self.listen));
    }

    fn stop_service(&mut self) {
        let p = self.serve.take().expect("service running");
        assert_eq!(p.terminate(), 0);
    }

    /// `vmledger admin sla set SERIAL --ends ENDS` on the running service's database.
    fn sla(&self, ends: &str) {
        sla_set(&self.sb, &self.db, ends);
    }

    /// The SLA alerts the service would send at `when` (`admin alerts --dry-run`).
    fn alerts_due(&self, when: &str) -> Vec<Value> {
        let doc = faked(
            &self.sb,
            when,
            ["admin", "alerts", "--dry-run", "--json", "--db"],
        )
        .arg(&self.db)
        .ok()
        .json();
        validate("admin-alerts", &doc);
        doc["due"].as_array().unwrap().clone()
    }

    fn checkin(&self, when: &str) -> Reply {
        self.a.checkin(self.at(when))
    }

    fn status(&self, when: &str) -> Value {
        self.a.status(self.at(when))
    }

    fn gate(&self, when: &str) -> i32 {
        self.a.run(self.at(when), &["gate"]).code
    }

    fn latest(&self, kind: &str) -> Entry {
        self.a
            .instance()
            .ledger()
            .unwrap()
            .latest_of_kind(kind)
            .unwrap()
            .unwrap_or_else(|| panic!("no `{kind}` entry"))
    }

    fn count(&self, kind: &str) -> usize {
        self.a.kinds().iter().filter(|k| *k == kind).count()
    }

    /// `checkin --request-file`: the request the agent would send now.
    fn request_file(&self, when: &str) -> vmledger::protocol::CheckinRequest {
        let p = self.sb.join("request.json");
        let doc = self
            .a
            .ok(
                when,
                &["checkin", "--json", "--request-file", p.to_str().unwrap()],
            )
            .json();
        validate("checkin", &doc);
        let req: vmledger::protocol::CheckinRequest =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        validate("checkin-request", &serde_json::to_value(&req).unwrap());
        req
    }
}

/// The real `vmledger serve` on `listen`, its clock read from `time_file`.
fn serve(sb: &Sandbox, db: &Path, time_file: &Path, listen: &str) -> ServeProc {
    ServeProc::start_on(sb, db, ServeTime::File(time_file), listen, &["--no-alerts"])
}

fn sla_set(sb: &Sandbox, db: &Path, ends: &str) {
    common::service::sla_set(sb, db, SERIAL, ends, Some(CODE), Some(CONTACT));
}

fn data<'a>(e: &'a Entry, key: &str) -> &'a str {
    e.body.data.get(key).and_then(Value::as_str).unwrap_or("")
}

fn plus_days(at: &str, days: i64) -> String {
    vmledger::time::format_at(vmledger::time::parse_at(at).unwrap() + chrono::Duration::days(days))
}

fn failed(r: &Reply, want: &str) {
    match r {
        Reply::Failed { reason, .. } => assert_eq!(reason, want, "{r:?}"),
        other => panic!("expected a `{want}` failure, got {other:?}"),
    }
}

#[test]
fn calendar_walk_against_the_real_service() {
    let mut w = Walk::new("2030-01-01 09:00:00");
    let s = w.status("2030-01-01 09:30:00");
    assert_eq!(
        (&s["state"], &s["reason"]),
        (&"unregistered".into(), &"never_checked_in".into())
    );
    // Before the first check-in the request carries the activation code, and always the
    // hardware summary `boot` records.
    let req = w.request_file("2030-01-01 09:31:00");
    assert_eq!(req.body.activation_code.as_deref(), Some(CODE));
    let hw = req.body.hardware.clone().expect("hardware summary");
    assert!(
        hw["components"].as_array().is_some_and(|c| !c.is_empty()),
        "{hw}"
    );

    // Daily check-ins for 3 days, at boot.
    let mut due = String::new();
    for day in 1..=3 {
        let when = format!("2030-01-0{day} 10:00:00");
        let b = w.a.boot(w.at(&when));
        assert_eq!(b.code, 0, "{:#}", b.doc);
        let r = b.checkin.expect("boot checks in");
        let rc = receipt(&r);
        assert_eq!(rc.body.status, Status::Active);
        assert!(
            rc.body
                .server_time
                .starts_with(&format!("2030-01-0{day}T10:00:"))
        );
        due = rc.body.next_checkin_before.clone();
        assert_eq!(due, plus_days(&rc.body.server_time, 1));
        assert_eq!(
            w.status(&format!("2030-01-0{day} 11:00:00"))["state"],
            "active"
        );
        assert_eq!(w.gate(&format!("2030-01-0{day} 11:01:00")), 0);
        // The boot entry recorded the same hardware the check-in requests carry.
        assert_eq!(
            w.latest("boot").body.data["hardware"]["digest"],
            hw["digest"]
        );
    }
    assert_eq!(data(&w.latest("activated"), "to"), "active");
    // The activation code went along only until the first successful check-in.
    let req = w.request_file("2030-01-03 11:02:00");
    assert_eq!(req.body.activation_code, None);
    assert_eq!(req.body.hardware.as_ref().unwrap()["digest"], hw["digest"]);

    // The service is gone. The countdown starts when the next check-in was due.
    w.stop_service();
    failed(&w.checkin("2030-01-04 12:00:00"), "connect");
    let lock_at = plus_days(&due, 7);
    let s = w.status("2030-01-04 12:01:00");
    assert_eq!(s["state"], "checkin_overdue", "{s:#}");
    assert_eq!(s["countdown"], "checkin");
    assert_eq!(s["countdown_started_at"], due.as_str());
    assert_eq!(s["countdown_ends_at"], lock_at.as_str());
    assert_eq!(s["days_left"], 7);
    assert_eq!(s["last_checkin_failure"]["reason"], "connect");
    let cs = w.latest("countdown_started");
    assert_eq!(
        (data(&cs, "effective_at"), data(&cs, "countdown")),
        (due.as_str(), "checkin")
    );
    // The daily timer keeps trying.
    for day in 5..=10 {
        failed(&w.checkin(&format!("2030-01-{day:02} 10:00:00")), "connect");
    }
    assert_eq!(w.gate("2030-01-11 09:59:00"), 0, "a minute before the lock");

    // grace_days (7) later: locked; gate exits 3 and does not run the command.
    assert_eq!(w.gate("2030-01-11 10:01:00"), 3);
    let locked = w.latest("locked");
    assert_eq!(data(&locked, "effective_at"), lock_at);
    assert_eq!(data(&locked, "reason"), "checkin_overdue");
    let marker = w.sb.join("configured");
    let g = w.a.run(
        w.at("2030-01-11 10:01:30"),
        &["gate", "--", "touch", marker.to_str().unwrap()],
    );
    assert_eq!(g.code, 3);
    assert!(g.stderr.contains("locked"), "{}", g.stderr);
    assert!(!marker.exists());
    // `watch` records a blocked configuration change.
    let conf = w.sb.join("appliance.conf");
    std::fs::write(&conf, "mtu = 1500\n").unwrap();
    let mut watch = Watch::spawn(w.a.command(
        w.at("2030-01-11 10:02:00"),
        &[
            "watch",
            conf.to_str().unwrap(),
            "--json",
            "--exit-after",
            "1",
        ],
    ));
    std::fs::write(conf.with_extension("swp"), "mtu = 9000\n").unwrap();
    std::fs::rename(conf.with_extension("swp"), &conf).unwrap();
    watch.wait_for("blocked change");
    assert_eq!(watch.finish()["recorded"], 1);
    let blocked = w.latest("config_change_blocked");
    assert_eq!(data(&blocked, "path"), conf.to_str().unwrap());
    assert_eq!(data(&blocked, "state"), "locked");

    // The clock set back a week: still locked, the anomaly on record, even after a reboot.
    let anomalies = w.count("clock_anomaly");
    assert_eq!(w.gate("2030-01-04 10:05:00"), 3);
    let s = w.status("2030-01-04 10:06:00");
    assert_eq!(s["state"], "locked");
    assert_ne!(s["trusted_time"]["source"], "system_clock");
    assert_eq!(w.count("clock_anomaly"), anomalies + 1);
    let b = w.a.boot(w.at("2030-01-04 10:07:00"));
    assert_eq!(
        b.code, 0,
        "locked is not disabled: the appliance keeps running"
    );
    failed(&b.checkin.unwrap(), "connect");
    assert_eq!(w.gate("2030-01-04 10:08:00"), 3);

    // The service is back: one check-in unlocks.
    w.at("2030-01-12 09:00:00");
    w.start_service();
    let r = w.checkin("2030-01-12 09:00:00");
    assert_eq!(receipt(&r).body.status, Status::Active);
    assert_eq!(data(&w.latest("unlocked"), "to"), "active");
    let g = w.a.run(
        w.at("2030-01-12 09:05:00"),
        &["gate", "--", "touch", marker.to_str().unwrap()],
    );
    assert_eq!(g.code, 0, "{}", g.stderr);
    assert!(marker.exists());

    // The vendor sets the SLA to end in 20 days (it covers 2030-02-01, UTC).
    w.sla("2030-02-01");
    let r = w.checkin("2030-01-13 00:00:00");
    assert_eq!(receipt(&r).body.sla_ends.as_deref(), Some("2030-02-01"));
    let s = w.status("2030-01-13 00:00:10");
    assert_eq!(s["state"], "sla_warning", "{s:#}");
    assert_eq!(s["days_left"], 20);
    assert_eq!(s["sla_ends"], "2030-02-01");
    assert_eq!(s["sla_ends_at"], "2030-02-02T00:00:00.000Z");
    assert!(s["message"].as_str().unwrap().contains("2030-02-01"));
    assert_eq!(data(&w.latest("sla_warning"), "to"), "sla_warning");
    // The service's e-mail agrees with the banner: the 30-day stage, 20 days left.
    let due_alerts = w.alerts_due("2030-01-13 00:00:20");
    let mine: Vec<&Value> = due_alerts
        .iter()
        .filter(|a| a["serial"] == SERIAL)
        .collect();
    assert_eq!(mine.len(), 1, "{due_alerts:#?}");
    assert_eq!(mine[0]["stage"], "30");
    assert!(
        mine[0]["subject"]
            .as_str()
            .unwrap()
            .contains("(20 days left)"),
        "{:#}",
        mine[0]
    );
    for day in 14..=31 {
        let r = w.checkin(&format!("2030-01-{day:02} 10:00:00"));
        assert_eq!(receipt(&r).body.status, Status::Active, "Jan {day}");
    }
    let r = w.checkin("2030-02-01 23:59:00");
    assert_eq!(
        receipt(&r).body.status,
        Status::Active,
        "its last day is covered"
    );
    assert_eq!(w.status("2030-02-01 23:59:10")["state"], "sla_warning");

    // The SLA passes: the countdown to disable starts at the end of its last day.
    let s = w.status("2030-02-02 00:00:01");
    assert_eq!(s["state"], "sla_expired", "{s:#}");
    assert_eq!(s["countdown"], "sla");
    assert_eq!(s["countdown_ends_at"], "2030-02-16T00:00:00.000Z");
    assert_eq!(s["days_left"], 14);
    let cs = w.latest("countdown_started");
    assert_eq!(
        (data(&cs, "effective_at"), data(&cs, "countdown")),
        ("2030-02-02T00:00:00.000Z", "sla")
    );
    assert_eq!(
        w.gate("2030-02-02 00:00:02"),
        0,
        "configuration still allowed"
    );
    let r = w.checkin("2030-02-02 10:00:00");
    assert_eq!(receipt(&r).body.status, Status::SlaExpired);
    assert_eq!(receipt(&r).body.reason.as_deref(), Some("sla_expired"));
    assert_eq!(w.status("2030-02-02 10:00:10")["state"], "sla_expired");
    let ended: Vec<Value> = w
        .alerts_due("2030-02-02 10:00:20")
        .into_iter()
        .filter(|a| a["serial"] == SERIAL)
        .collect();
    assert_eq!(ended[0]["stage"], "ended", "{ended:#?}");
    for day in 3..=5 {
        let r = w.checkin(&format!("2030-02-{day:02} 10:00:00"));
        assert_eq!(receipt(&r).body.status, Status::SlaExpired);
    }

    // Mid-countdown, the clock set back 10 days: the countdown is not extended, also not by
    // a check-in made with the clock back (the service's clock is right).
    assert_eq!(w.status("2030-02-05 12:00:00")["days_left"], 11);
    let anomalies = w.count("clock_anomaly");
    let s = w.a.status("2030-01-26 12:00:00");
    assert_eq!(s["state"], "sla_expired");
    assert_eq!(s["countdown_ends_at"], "2030-02-16T00:00:00.000Z");
    assert!(s["days_left"].as_u64().unwrap() <= 11, "{s:#}");
    assert_eq!(w.count("clock_anomaly"), anomalies + 1);
    assert!(data(&w.latest("clock_anomaly"), "system_clock").starts_with("2030-01-26"));
    w.at("2030-02-05 12:05:00");
    let r = w.a.checkin("2030-01-26 12:05:00");
    assert_eq!(receipt(&r).body.status, Status::SlaExpired);
    assert!(w.latest("checkin").body.at.as_str() >= "2030-02-05T12:00:00.000Z");
    let s = w.a.status("2030-01-26 12:06:00");
    assert_eq!(s["countdown_ends_at"], "2030-02-16T00:00:00.000Z");
    assert!(s["days_left"].as_u64().unwrap() <= 11, "{s:#}");
    for day in 6..=15 {
        let r = w.checkin(&format!("2030-02-{day:02} 10:00:00"));
        assert_eq!(receipt(&r).body.status, Status::SlaExpired);
    }

    // 14 days after the SLA ended: disabled for good; gate 4; a reboot stays disabled.
    let s = w.status("2030-02-16 00:00:01");
    assert_eq!(
        (&s["state"], &s["reason"]),
        (&"disabled".into(), &"sla_expired".into())
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("permanently disabled")
    );
    assert_eq!(w.gate("2030-02-16 00:00:02"), 4);
    assert_eq!(
        data(&w.latest("disabled"), "effective_at"),
        "2030-02-16T00:00:00.000Z"
    );
    let b = w.a.boot(w.at("2030-02-16 08:00:00"));
    assert_eq!(b.code, 4, "{:#}", b.doc);
    assert_eq!(receipt(&b.checkin.unwrap()).body.status, Status::SlaExpired);
    let b = w.a.boot(w.at("2030-01-01 08:00:00"));
    assert_eq!(b.code, 4, "clock far back: still disabled");
    assert_eq!(w.a.status("2030-01-01 08:01:00")["state"], "disabled");

    // A hanging service: boot gives up on the network within its bound and still enforces.
    let serve = w.serve.as_ref().unwrap();
    serve.signal(nix::sys::signal::Signal::SIGSTOP);
    let b = w.a.boot(w.at("2030-02-17 08:00:00"));
    serve.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(b.code, 4);
    assert_eq!(b.doc["checkin"]["reason"], "timeout", "{:#}", b.doc);
    let f = w.latest("checkin_failed");
    assert_eq!(data(&f, "reason"), "timeout");
    assert!(data(&f, "detail").contains("5 s"), "{}", data(&f, "detail"));
    w.stop_service();

    // Both sides' records hold up: the ledger verifies and explains itself; the service
    // holds one branch of this instance and no verdict.
    w.a.ok("2030-02-17 08:01:00", &["ledger", "verify"]);
    let kinds = w.a.kinds();
    for k in [
        "activated",
        "checkin_failed",
        "countdown_started",
        "locked",
        "config_change_blocked",
        "clock_anomaly",
        "unlocked",
        "sla_warning",
        "disabled",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    let doc = show(&w.sb, &w.db, SERIAL);
    assert!(doc["verdicts"].as_array().unwrap().is_empty(), "{doc:#}");
    assert_eq!(doc["instances"][0]["branches"].as_array().unwrap().len(), 1);
}

#[test]
fn unknown_serial_is_recorded_and_shown() {
    let w = Walk::new("2030-03-01 09:00:00");
    let b = Copy::init(
        &w.sb,
        "b",
        "SN-NOBODY",
        &w.serve.as_ref().unwrap().url,
        &w.key,
        Some(CODE),
        w.at("2030-03-01 09:00:00"),
    );
    let r = b.checkin(w.at("2030-03-01 09:01:00"));
    match &r {
        Reply::Refused { status, error, .. } => {
            assert_eq!((*status, error.as_str()), (404, "unknown_serial"))
        }
        other => panic!("{other:?}"),
    }
    let f = b
        .instance()
        .ledger()
        .unwrap()
        .latest_of_kind("checkin_failed")
        .unwrap()
        .unwrap();
    assert_eq!(data(&f, "reason"), "unknown_serial");
    let s = b.status(w.at("2030-03-01 09:02:00"));
    assert_eq!(
        (&s["state"], &s["reason"]),
        (&"unregistered".into(), &"unknown_serial".into())
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("does not know serial SN-NOBODY"),
        "{s:#}"
    );
    // The vendor registers it: the next check-in activates.
    w.sb.cmd([
        "admin",
        "sla",
        "set",
        "SN-NOBODY",
        "--ends",
        "2031-01-01",
        "--activation-code",
        CODE,
        "--db",
    ])
    .arg(&w.db)
    .ok();
    let r = b.checkin(w.at("2030-03-01 10:00:00"));
    assert_eq!(receipt(&r).body.status, Status::Active);
    assert_eq!(b.status(w.at("2030-03-01 10:01:00"))["state"], "active");
}

/// A lock that began under the old receipt while nothing ran is recorded by the next
/// `boot` before its check-in (with the instants it took effect), so the history explains
/// itself and the service receives it; the check-in then unlocks.
#[test]
fn boot_records_a_lock_that_began_while_off_before_checking_in() {
    let w = Walk::new("2030-05-01 09:00:00");
    let b = w.a.boot(w.at("2030-05-01 10:00:00"));
    let due = receipt(&b.checkin.expect("boot checks in"))
        .body
        .next_checkin_before
        .clone();
    // Off for ten days: the countdown started a day later, the lock a week after that.
    let b = w.a.boot(w.at("2030-05-11 10:00:00"));
    assert_eq!(b.code, 0, "{:#}", b.doc);
    assert_eq!(receipt(&b.checkin.unwrap()).body.status, Status::Active);
    assert_eq!(b.doc["state"], "active");
    let ledger = w.a.instance().ledger().unwrap();
    let entries = ledger.entries_from(0).unwrap();
    let last_boot = entries.iter().rposition(|e| e.body.kind == "boot").unwrap();
    let after: Vec<&str> = entries[last_boot..]
        .iter()
        .map(|e| e.body.kind.as_str())
        .collect();
    assert_eq!(
        after,
        ["boot", "countdown_started", "locked", "checkin", "unlocked"],
        "the transitions come before the check-in that lifts them"
    );
    let locked = &entries[last_boot + 2];
    assert_eq!(data(locked, "effective_at"), plus_days(&due, 7));
    assert_eq!(data(&entries[last_boot + 1], "effective_at"), due);
    // The service received them: it acknowledged the `locked` entry.
    let checkin = &entries[last_boot + 3];
    assert_eq!(
        checkin.body.data["acked_seq"].as_u64(),
        Some(locked.body.seq)
    );
}
