//! The service's detection rules end to end: a real service (in-process, time injected),
//! appliance copies made with the real binary (`init`, `boot` under faketime at the
//! simulated date), state dirs copied to simulate VM copies, check-ins signed with each
//! copy's real key.

mod common;

use chrono::Duration;
use common::Sandbox;
use common::service::{
    Copy, Svc, TestClock, assert_status, init_db, receipt, refused, show, sla, validate,
};
use serde_json::Value;
use vmledger::protocol::Status;

const CODE: &str = "CODE-1";

struct World {
    sb: Sandbox,
    svc: Svc,
    clock: std::sync::Arc<TestClock>,
}

impl World {
    fn new() -> World {
        let sb = Sandbox::new();
        let (db, key) = init_db(&sb);
        sla(&sb, &db, "SN-1", "2028-12-31", CODE);
        let clock = TestClock::at("2027-01-10T10:00:00Z");
        let svc = Svc::start(&db, key, clock.clone());
        World { sb, svc, clock }
    }

    /// A new appliance: init + boot with the real binary, first check-in with the code.
    fn appliance(&self, name: &str) -> Copy {
        let c = Copy::init(&self.sb, name, "SN-1", &self.clock.faketime());
        c.boot(&self.sb, &self.clock);
        let r = c.checkin(&self.svc.url, &self.svc.key, Some(CODE), &*self.clock);
        assert_status(&r, Status::Active, None);
        c
    }

    fn day(&self) {
        self.clock.advance(Duration::days(1));
    }

    fn hours(&self, h: i64) {
        self.clock.advance(Duration::hours(h));
    }

    fn checkin(&self, c: &Copy) -> vmledger::service::client::Reply {
        c.checkin(&self.svc.url, &self.svc.key, None, &*self.clock)
    }

    fn boot(&self, c: &Copy) {
        c.boot(&self.sb, &self.clock);
    }

    fn show(&self, what: &str) -> Value {
        let doc = show(&self.sb, &self.svc.db, what);
        validate("admin-show", &doc);
        doc
    }

    fn verdicts(&self) -> Vec<(String, String)> {
        self.show("SN-1")["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["rule"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every verdict's evidence verifies offline and matches its schema; a tampered copy
    /// does not verify.
    fn evidence_verifies(&self) {
        for v in self.show("SN-1")["verdicts"].as_array().unwrap() {
            validate("evidence", &v["evidence"]);
            vmledger::service::evidence::verify(&v["evidence"])
                .unwrap_or_else(|e| panic!("{}: {e}", v["id"]));
            let mut t = v["evidence"].clone();
            t["trigger"]["entry"]["body"]["at"] = serde_json::json!("2020-01-01T00:00:00.000Z");
            assert!(
                vmledger::service::evidence::verify(&t).is_err(),
                "tampered evidence verified"
            );
        }
    }
}

#[test]
fn sixty_days_of_daily_checkins_are_clean() {
    let w = World::new();
    let a = w.appliance("a");
    for day in 1..=60 {
        w.day();
        if day % 10 == 0 {
            w.boot(&a);
        }
        let r = w.checkin(&a);
        let rc = receipt(&r);
        assert_eq!(rc.body.status, Status::Active, "day {day}");
        assert_eq!(rc.body.reason, None);
        assert_eq!(rc.body.sla_ends.as_deref(), Some("2028-12-31"));
        assert_eq!(
            rc.body.server_time,
            vmledger::time::format_at(w.clock.now_ms())
        );
        let next = vmledger::time::parse_at(&rc.body.next_checkin_before).unwrap();
        assert_eq!(next - w.clock.now_ms(), Duration::hours(24));
        // The receipt acknowledges the copy's head.
        assert_eq!(rc.body.acked_seq + 2, a.len(), "day {day}");
        validate("receipt", &serde_json::to_value(rc).unwrap());
    }
    assert!(w.verdicts().is_empty());
    let doc = w.show(&a.instance_id());
    let inst = &doc["instances"][0];
    assert_eq!(inst["status"], "active");
    assert_eq!(inst["branches"].as_array().unwrap().len(), 1);
    // Every entry but the newest `checkin` entry is stored.
    assert_eq!(inst["entries"].as_u64().unwrap() + 1, a.len());
}

trait NowMs {
    fn now_ms(&self) -> chrono::DateTime<chrono::Utc>;
}
impl NowMs for TestClock {
    fn now_ms(&self) -> chrono::DateTime<chrono::Utc> {
        vmledger::time::Clock::now(self)
    }
}

#[test]
fn clone_running_beside_the_original_is_a_concurrent_duplicate() {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let b = a.copy_to(&w.sb, "b"); // the clone
    w.hours(2);
    w.boot(&b);
    let mut replies = Vec::new();
    for _ in 0..3 {
        w.day();
        replies.push(("a", w.checkin(&a)));
        w.hours(1);
        replies.push(("b", w.checkin(&b)));
    }
    // Exactly one copy ends up disabled, for good; the other stays active throughout.
    let disabled: Vec<&str> = replies
        .iter()
        .filter(|(_, r)| receipt(r).body.status == Status::Disabled)
        .map(|(n, _)| *n)
        .collect();
    assert!(!disabled.is_empty(), "no copy was disabled");
    let loser = disabled[0];
    let mut seen_disabled = false;
    for (n, r) in &replies {
        let rc = receipt(r);
        if *n != loser {
            assert_eq!(rc.body.status, Status::Active, "{n}: {:?}", rc.body);
        } else if rc.body.status == Status::Disabled {
            seen_disabled = true;
            assert_eq!(rc.body.reason.as_deref(), Some("concurrent_duplicate"));
            assert!(rc.body.verdict.is_some());
        } else {
            assert!(!seen_disabled, "a disabled copy came back: {:?}", rc.body);
        }
    }
    let kinds: Vec<String> = w.verdicts().into_iter().map(|(k, _)| k).collect();
    assert!(
        kinds.contains(&"concurrent_duplicate".to_string()),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"switching".to_string()), "{kinds:?}");
    w.evidence_verifies();
}

#[test]
fn clone_reporting_late_is_disabled_and_the_original_continues() {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let b = a.copy_to(&w.sb, "b");
    w.hours(1);
    w.boot(&b); // the clone runs offline...
    for _ in 0..3 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    w.hours(1);
    let r = w.checkin(&b); // ...and reports days later
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    assert_eq!(
        w.verdicts(),
        vec![("concurrent_duplicate".into(), "2-overlap".into())]
    );
    w.day();
    assert_status(&w.checkin(&a), Status::Active, None);
    assert_status(
        &w.checkin(&b),
        Status::Disabled,
        Some("concurrent_duplicate"),
    );
    w.evidence_verifies();
}

/// A copy backed up on day 1 runs until day 3 and dies; the backup is restored on day 5.
fn restored_world() -> (World, Copy, Copy) {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let backup = a.copy_to(&w.sb, "backup");
    for _ in 0..2 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    w.day();
    w.day();
    let b = backup.copy_to(&w.sb, "b");
    w.boot(&b);
    let r = w.checkin(&b);
    assert_status(&r, Status::Active, Some("restored"));
    assert!(receipt(&r).body.verdict.is_some());
    w.day();
    assert_status(&w.checkin(&b), Status::Active, None);
    assert_eq!(w.verdicts(), vec![("restored".into(), "2-restore".into())]);
    (w, a, b)
}

#[test]
fn one_restore_from_backup_is_allowed() {
    let (w, _a, b) = restored_world();
    for _ in 0..5 {
        w.day();
        assert_status(&w.checkin(&b), Status::Active, None);
    }
    w.evidence_verifies();
}

#[test]
fn old_copy_returning_without_reboot_after_a_restore_is_a_concurrent_duplicate() {
    let (w, a, b) = restored_world();
    w.day();
    // It never stopped. Its first report only delivers what it wrote before the restore
    // (late history); the next one proves it kept running.
    assert_status(&w.checkin(&a), Status::Active, None);
    w.day();
    let r = w.checkin(&a);
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    assert_status(&w.checkin(&b), Status::Active, None);
    assert_eq!(
        w.verdicts().last().unwrap(),
        &("concurrent_duplicate".to_string(), "3-resumed".to_string())
    );
    w.evidence_verifies();
}

#[test]
fn old_copy_returning_after_reboot_after_a_restore_is_switching() {
    let (w, a, b) = restored_world();
    w.day();
    w.boot(&a);
    assert_status(&w.checkin(&a), Status::Disabled, Some("switching"));
    w.hours(1);
    assert_status(&w.checkin(&b), Status::Disabled, Some("switching"));
    assert_eq!(
        w.verdicts().last().unwrap(),
        &("switching".to_string(), "3-rebooted".to_string())
    );
    w.evidence_verifies();
}

#[test]
fn alternating_copies_are_switching_and_both_are_disabled() {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let b = a.copy_to(&w.sb, "b");
    // A runs, is shut down; B is started; then A again.
    w.day();
    w.boot(&a);
    assert_status(&w.checkin(&a), Status::Active, None);
    w.day();
    w.boot(&b);
    assert_status(&w.checkin(&b), Status::Active, Some("restored"));
    w.day();
    w.boot(&a);
    assert_status(&w.checkin(&a), Status::Disabled, Some("switching"));
    w.day();
    w.boot(&b);
    assert_status(&w.checkin(&b), Status::Disabled, Some("switching"));
    w.evidence_verifies();
}

#[test]
fn snapshot_revert_without_reboot_is_a_restore() {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let snapshot = a.copy_to(&w.sb, "snapshot");
    for _ in 0..2 {
        w.day();
        w.checkin(&a);
    }
    // Revert the running appliance to the snapshot: no reboot, it just goes on.
    a.restore_from(&snapshot);
    w.day();
    assert_status(&w.checkin(&a), Status::Active, None);
    w.day();
    assert_status(&w.checkin(&a), Status::Active, Some("restored"));
    for _ in 0..3 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    assert_eq!(w.verdicts(), vec![("restored".into(), "2-restore".into())]);
}

#[test]
fn declared_ha_pair_gets_no_verdict() {
    let w = World::new();
    let a = w.appliance("a");
    w.day();
    w.checkin(&a);
    let b = a.copy_to(&w.sb, "b");
    w.sb.cmd([
        "admin",
        "allow-concurrent",
        &a.instance_id(),
        "--until",
        "2027-03-01",
        "--reason",
        "HA pair at site 4",
        "--db",
    ])
    .arg(&w.svc.db)
    .ok();
    for day in 0..10 {
        w.day();
        if day % 3 == 0 {
            w.boot(&a);
            w.boot(&b);
        }
        assert_status(&w.checkin(&a), Status::Active, None);
        w.hours(1);
        assert_status(&w.checkin(&b), Status::Active, None);
    }
    assert!(w.verdicts().is_empty(), "{:?}", w.verdicts());
    let doc = w.show("SN-1");
    assert_eq!(
        doc["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["kind"] == "allow_concurrent")
            .count(),
        1
    );
}

#[test]
fn service_database_restored_from_backup_resyncs_through_409() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let svc = Svc::start(&db, key, clock.clone());
    let a = Copy::init(&sb, "a", "SN-1", &clock.faketime());
    a.boot(&sb, &clock);
    assert_status(
        &a.checkin(&svc.url, &key, Some(CODE), &*clock),
        Status::Active,
        None,
    );
    for _ in 0..3 {
        clock.advance(Duration::days(1));
        a.checkin(&svc.url, &key, None, &*clock);
    }
    // A consistent online backup of the service database.
    common::require("sqlite3");
    let backup = sb.join("backup.sqlite");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(".backup '{}'", backup.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for _ in 0..3 {
        clock.advance(Duration::days(1));
        a.checkin(&svc.url, &key, None, &*clock);
    }
    svc.stop();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&backup, &db).unwrap();
    let svc = Svc::start(&db, key, clock.clone());
    clock.advance(Duration::days(1));
    // The first attempt is refused with 409 and the service's head; the agent re-sends.
    let req = a.request(None, &*clock);
    let first = vmledger::service::client::checkin_blocking(
        &svc.url,
        None,
        &req,
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let (status, err) = refused(&first);
    assert_eq!(status, 409);
    assert_eq!(err.error, "unknown_prev");
    validate("service-error", &serde_json::to_value(err).unwrap());
    assert!(err.acked_seq.is_some() && err.acked_hash.is_some());
    let r = a.checkin(&svc.url, &key, None, &*clock);
    assert_status(&r, Status::Active, None);
    let doc = show(&sb, &db, "SN-1");
    assert!(doc["verdicts"].as_array().unwrap().is_empty());
    assert_eq!(
        doc["instances"][0]["entries"].as_u64().unwrap() + 1,
        a.len()
    );
    assert_eq!(doc["instances"][0]["branches"].as_array().unwrap().len(), 1);
}

#[test]
fn operator_overrides_take_effect_on_the_running_service() {
    let (w, a, b) = restored_world();
    w.day();
    w.boot(&a);
    assert_status(&w.checkin(&a), Status::Disabled, Some("switching"));
    let inst = a.instance_id();
    // Reinstate: the primary branch (the restored copy) continues at once.
    w.sb.cmd([
        "admin",
        "reinstate",
        &inst,
        "--reason",
        "owner explained the DR test",
        "--db",
    ])
    .arg(&w.svc.db)
    .ok();
    w.hours(1);
    assert_status(&w.checkin(&b), Status::Active, None);
    // The operator decides the original is the one to keep.
    // An entry of the original's branch the service holds: its last boot.
    let boot = a
        .instance()
        .ledger()
        .unwrap()
        .latest_of_kind("boot")
        .unwrap()
        .unwrap();
    w.sb.cmd([
        "admin",
        "primary",
        &inst,
        "--branch",
        &boot.hash,
        "--reason",
        "customer choice",
        "--db",
    ])
    .arg(&w.svc.db)
    .ok();
    w.day();
    assert_status(&w.checkin(&a), Status::Active, None);
    w.hours(1);
    assert_status(
        &w.checkin(&b),
        Status::Disabled,
        Some("concurrent_duplicate"),
    );
    let doc = w.show(&inst);
    let kinds: Vec<&str> = doc["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"reinstate") && kinds.contains(&"primary"),
        "{kinds:?}"
    );
    // Bad override input is a clear error, exit 2.
    let r =
        w.sb.cmd(["admin", "primary", &inst, "--branch", "feedface", "--db"])
            .arg(&w.svc.db)
            .expect(2);
    assert!(
        r.stderr.contains("no branch containing entry feedface"),
        "{}",
        r.stderr
    );
    let r =
        w.sb.cmd(["admin", "reinstate", "0123", "--reason", "x", "--db"])
            .arg(&w.svc.db)
            .expect(2);
    assert!(r.stderr.contains("unknown instance 0123"), "{}", r.stderr);
}
