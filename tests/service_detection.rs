//! The service's detection rules end to end, with the real agent on both sides of the
//! wire: a real service (in-process, time injected), appliance copies that are state dirs
//! driven by the real `vmledger` binary (`init --service ... --activation-code ...`,
//! `boot`, `checkin`, `status`, under faketime at the simulated date), state dirs copied to
//! simulate VM copies, backups and snapshots. Each verdict reaches the copy it concerns in
//! a signed receipt, and the copy enforces it.

mod common;

use chrono::Duration;
use common::Sandbox;
use common::service::{
    Copy, Reply, Svc, TestClock, assert_status, http, init_db, receipt, show, sla, validate,
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

    /// A new appliance: `init` with the service settings and the activation code, then its
    /// first `boot`, which checks in (with the code) and activates it.
    fn appliance(&self, name: &str) -> Copy {
        let c = Copy::init(
            &self.sb,
            name,
            "SN-1",
            &self.svc.url,
            &self.svc.key,
            Some(CODE),
            &*self.clock,
        );
        assert_status(&self.boot(&c), Status::Active, None);
        c
    }

    fn day(&self) {
        self.clock.advance(Duration::days(1));
    }

    fn hours(&self, h: i64) {
        self.clock.advance(Duration::hours(h));
    }

    fn checkin(&self, c: &Copy) -> Reply {
        c.checkin(&*self.clock)
    }

    /// An appliance that checked in for a day, and a copy of its state dir made then (a
    /// clone, a backup or a snapshot, named `name`).
    fn copied_on_day_one(name: &str) -> (World, Copy, Copy) {
        let w = World::new();
        let a = w.appliance("a");
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
        let copy = a.copy_to(&w.sb, name);
        (w, a, copy)
    }

    /// `vmledger boot`, which checks in; returns the boot-time check-in.
    fn boot(&self, c: &Copy) -> Reply {
        c.boot(&*self.clock).checkin.expect("boot checks in")
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

    /// The copy learnt from its signed receipt that it is disabled: `status` says so with
    /// the service's verdict reference (which `admin show` finds), `gate` exits 4, and a
    /// reboot exits 4.
    fn enforces_disabled(&self, c: &Copy, reason: &str) {
        let s = c.status(&*self.clock);
        assert_eq!(s["state"], "disabled", "{s:#}");
        assert_eq!(s["reason"], reason, "{s:#}");
        let verdict = s["verdict"]
            .as_str()
            .expect("a verdict reference")
            .to_string();
        assert!(s["message"].as_str().unwrap().contains(&verdict), "{s:#}");
        let doc = self.show(&verdict);
        assert!(
            doc["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["id"] == verdict && v["kind"] == reason),
            "{doc:#}"
        );
        let g = c.run(&*self.clock, &["gate"]);
        assert_eq!(g.code, 4, "{}", g.stderr);
        assert!(g.stderr.contains(&verdict), "{}", g.stderr);
        let b = c.boot(&*self.clock);
        assert_eq!(b.code, 4, "{:#}", b.doc);
        assert_eq!(b.doc["state"], "disabled");
        let kinds = c.kinds();
        assert!(kinds.iter().any(|k| k == "disabled"), "{kinds:?}");
    }

    /// The copy's own license state is active (`gate` exits 0).
    fn enforces_active(&self, c: &Copy) {
        let s = c.status(&*self.clock);
        assert_eq!(s["state"], "active", "{s:#}");
        assert_eq!(c.run(&*self.clock, &["gate"]).code, 0);
    }
}

#[test]
fn sixty_days_of_daily_checkins_are_clean() {
    let w = World::new();
    let a = w.appliance("a");
    for day in 1..=60 {
        w.day();
        // Every tenth day the appliance reboots; its boot-time check-in is the day's.
        let r = if day % 10 == 0 {
            w.boot(&a)
        } else {
            w.checkin(&a)
        };
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
        // The receipt acknowledges the copy's head when it sent; the copy then recorded
        // the `checkin` entry citing it.
        assert_eq!(rc.body.acked_seq + 2, a.len(), "day {day}");
        validate("receipt", &serde_json::to_value(rc).unwrap());
    }
    w.enforces_active(&a);
    assert!(w.verdicts().is_empty());
    let doc = w.show(&a.instance_id());
    let inst = &doc["instances"][0];
    assert_eq!(inst["status"], "active");
    assert_eq!(inst["branches"].as_array().unwrap().len(), 1);
    // Every entry but the newest `checkin` entry is stored.
    assert_eq!(inst["entries"].as_u64().unwrap() + 1, a.len());
    // Nothing but boots, check-ins and the one activation: no transition, no anomaly.
    let kinds = a.kinds();
    for k in &kinds {
        assert!(
            [
                "genesis",
                "service_configured",
                "boot",
                "checkin",
                "activated"
            ]
            .contains(&k.as_str()),
            "{kinds:?}"
        );
    }
    a.ok(&*w.clock, &["ledger", "verify"]);
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
    let (w, a, b) = World::copied_on_day_one("b"); // the clone
    w.hours(2);
    let mut replies = vec![("b", w.boot(&b))];
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
    let (loser, winner) = if loser == "a" { (&a, &b) } else { (&b, &a) };
    // The disabled copy learns it and enforces it, even across a reboot; that reboot of
    // a disabled copy is not held against the copy that continues.
    w.enforces_disabled(loser, "concurrent_duplicate");
    w.hours(1);
    assert_status(&w.checkin(winner), Status::Active, None);
    w.enforces_active(winner);
    w.evidence_verifies();
}

#[test]
fn clone_reporting_late_is_disabled_and_the_original_continues() {
    let (w, a, b) = World::copied_on_day_one("b");
    w.hours(1);
    b.boot_offline(&*w.clock); // the clone runs offline...
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
    w.enforces_disabled(&b, "concurrent_duplicate");
    w.hours(1);
    assert_status(&w.checkin(&a), Status::Active, None);
    w.enforces_active(&a);
    w.evidence_verifies();
}

/// A copy backed up on day 1 runs until day 3 and dies; the backup is restored on day 5
/// and boots (its boot-time check-in is judged a restore).
fn restored_world() -> (World, Copy, Copy) {
    let (w, a, backup) = World::copied_on_day_one("backup");
    for _ in 0..2 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    w.day();
    w.day();
    let b = backup.copy_to(&w.sb, "b");
    let r = w.boot(&b);
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
    w.enforces_active(&b);
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
    w.enforces_disabled(&a, "concurrent_duplicate");
    w.hours(1);
    assert_status(&w.checkin(&b), Status::Active, None);
    w.enforces_active(&b);
    w.evidence_verifies();
}

#[test]
fn old_copy_returning_after_reboot_after_a_restore_is_switching() {
    let (w, a, b) = restored_world();
    w.day();
    assert_status(&w.boot(&a), Status::Disabled, Some("switching"));
    w.hours(1);
    assert_status(&w.checkin(&b), Status::Disabled, Some("switching"));
    assert_eq!(
        w.verdicts().last().unwrap(),
        &("switching".to_string(), "3-rebooted".to_string())
    );
    w.enforces_disabled(&a, "switching");
    w.enforces_disabled(&b, "switching");
    w.evidence_verifies();
}

#[test]
fn alternating_copies_are_switching_and_both_are_disabled() {
    let (w, a, b) = World::copied_on_day_one("b");
    // A runs, is shut down; B is started; then A again; then B again.
    w.day();
    assert_status(&w.boot(&a), Status::Active, None);
    w.day();
    assert_status(&w.boot(&b), Status::Active, Some("restored"));
    w.day();
    assert_status(&w.boot(&a), Status::Disabled, Some("switching"));
    w.day();
    assert_status(&w.boot(&b), Status::Disabled, Some("switching"));
    w.enforces_disabled(&a, "switching");
    w.enforces_disabled(&b, "switching");
    w.evidence_verifies();
}

#[test]
fn snapshot_revert_without_reboot_is_a_restore() {
    let (w, a, snapshot) = World::copied_on_day_one("snapshot");
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
    w.enforces_active(&a);
}

#[test]
fn declared_ha_pair_gets_no_verdict() {
    let (w, a, b) = World::copied_on_day_one("b");
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
            assert_status(&w.boot(&a), Status::Active, None);
            assert_status(&w.boot(&b), Status::Active, None);
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
    w.enforces_active(&a);
    w.enforces_active(&b);
}

/// The number of check-ins the service answered with `code`, from its metrics.
fn answered(url: &str, code: u16) -> u64 {
    let (s, b) = http(url, "GET", "/metrics", vec![]);
    assert_eq!(s, 200);
    let text = String::from_utf8(b).unwrap();
    let key = format!("vmledger_http_requests_total{{route=\"/v1/checkin\",code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A consistent online backup of the service database (`sqlite3 .backup`).
fn backup_db(sb: &Sandbox, db: &std::path::Path, name: &str) -> std::path::PathBuf {
    common::require("sqlite3");
    let backup = sb.join(name);
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(format!(".backup '{}'", backup.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    backup
}

/// Stop the service, put `backup` in place of its database, start it again (elsewhere).
fn restore_db(svc: Svc, backup: &std::path::Path, clock: &std::sync::Arc<TestClock>) -> Svc {
    let (db, key) = (svc.db.clone(), svc.key);
    svc.stop();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(backup, &db).unwrap();
    Svc::start(&db, key, clock.clone())
}

#[test]
fn service_database_restored_from_backup_resyncs_through_409() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    sla(&sb, &db, "SN-1", "2028-12-31", CODE);
    sla(&sb, &db, "SN-2", "2028-12-31", CODE);
    let clock = TestClock::at("2027-01-10T10:00:00Z");
    let svc = Svc::start(&db, key, clock.clone());
    let a = Copy::init(&sb, "a", "SN-1", &svc.url, &key, Some(CODE), &*clock);
    assert_status(
        &a.boot(&*clock).checkin.expect("boot checks in"),
        Status::Active,
        None,
    );
    for _ in 0..3 {
        clock.advance(Duration::days(1));
        assert_status(&a.checkin(&*clock), Status::Active, None);
    }
    let backup = backup_db(&sb, &db, "backup.sqlite");
    // Another appliance is activated after the backup.
    let b = Copy::init(&sb, "b", "SN-2", &svc.url, &key, Some(CODE), &*clock);
    for _ in 0..3 {
        clock.advance(Duration::days(1));
        assert_status(&a.checkin(&*clock), Status::Active, None);
        assert_status(&b.checkin(&*clock), Status::Active, None);
    }
    let svc = restore_db(svc, &backup, &clock);
    clock.advance(Duration::days(1));
    // The restarted service listens elsewhere: the admin points the appliances at it.
    a.point_to(&*clock, &svc.url);
    b.point_to(&*clock, &svc.url);
    // A's first attempt is refused with 409 and the service's head; the agent re-sends
    // from there and gets its receipt: one check-in for the agent, nothing lost.
    let r = a.checkin(&*clock);
    assert_status(&r, Status::Active, None);
    assert_eq!((answered(&svc.url, 409), answered(&svc.url, 200)), (1, 1));
    // B is unknown to the restored service: it re-sends with its stored activation code
    // (403 activation_code_required), then from genesis (409: nothing held of it).
    let r = b.checkin(&*clock);
    assert_status(&r, Status::Active, None);
    assert_eq!(answered(&svc.url, 403), 1);
    assert_eq!((answered(&svc.url, 409), answered(&svc.url, 200)), (2, 2));
    for (c, serial) in [(&a, "SN-1"), (&b, "SN-2")] {
        assert!(!c.kinds().iter().any(|k| k == "checkin_failed"));
        let doc = show(&sb, &db, serial);
        assert!(doc["verdicts"].as_array().unwrap().is_empty());
        assert_eq!(
            doc["instances"][0]["entries"].as_u64().unwrap() + 1,
            c.len()
        );
        assert_eq!(doc["instances"][0]["branches"].as_array().unwrap().len(), 1);
    }
    // And they go on as before.
    clock.advance(Duration::days(1));
    assert_status(&a.checkin(&*clock), Status::Active, None);
    assert_status(&b.checkin(&*clock), Status::Active, None);
}

#[test]
fn restored_service_database_and_a_restored_copy_resync_from_genesis() {
    let (w, a, backup) = World::copied_on_day_one("backup");
    for _ in 0..2 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    // The service's database is backed up while the original still runs.
    let db_backup = backup_db(&w.sb, &w.svc.db, "service-backup.sqlite");
    w.day();
    w.day();
    // The appliance dies and is restored from its own backup: a restore, allowed.
    let b = backup.copy_to(&w.sb, "b");
    assert_status(&w.boot(&b), Status::Active, Some("restored"));
    w.day();
    assert_status(&w.checkin(&b), Status::Active, None);
    // Then the service's database is restored too: it knows the original's branch only.
    let World { sb, svc, clock } = w;
    let svc = restore_db(svc, &db_backup, &clock);
    let w = World { sb, svc, clock };
    w.day();
    b.point_to(&*w.clock, &w.svc.url);
    // The service's head (the original's) is not in B's ledger: B re-sends everything
    // from genesis, and the service judges it again as what it is, a restore.
    let r = w.checkin(&b);
    assert_status(&r, Status::Active, Some("restored"));
    assert_eq!(answered(&w.svc.url, 409), 1);
    assert!(!b.kinds().iter().any(|k| k == "checkin_failed"));
    w.day();
    assert_status(&w.checkin(&b), Status::Active, None);
    assert_eq!(w.verdicts(), vec![("restored".into(), "2-restore".into())]);
    w.enforces_active(&b);
    w.evidence_verifies();
}

#[test]
fn operator_overrides_take_effect_on_the_running_service() {
    let (w, a, b) = restored_world();
    w.day();
    assert_status(&w.boot(&a), Status::Disabled, Some("switching"));
    let inst = a.instance_id();
    // Reinstate: the primary branch (the restored copy) continues at once, and the copy
    // is re-enabled by its next receipt.
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
    w.enforces_active(&b);
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
    // The original learnt it was disabled (switching); its next receipt re-enables it.
    assert_status(&w.checkin(&a), Status::Active, None);
    w.enforces_active(&a);
    let kinds = a.kinds();
    let disabled = kinds.iter().rposition(|k| k == "disabled").unwrap();
    let reenabled = kinds.iter().rposition(|k| k == "reenabled").unwrap();
    assert!(disabled < reenabled, "{kinds:?}");
    w.hours(1);
    assert_status(
        &w.checkin(&b),
        Status::Disabled,
        Some("concurrent_duplicate"),
    );
    w.enforces_disabled(&b, "concurrent_duplicate");
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

/// Run `sql` on a copy's ledger database with the append-only triggers dropped (as an
/// owner with root would, with the real `sqlite3`), then put the triggers back.
fn tamper_ledger(c: &Copy, sql: &str) {
    common::require("sqlite3");
    let db = c.dir.join("ledger.sqlite");
    let q = |sql: &str| {
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(sql)
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let upd = q("SELECT sql FROM sqlite_master WHERE name='entries_no_update'");
    let del = q("SELECT sql FROM sqlite_master WHERE name='entries_no_delete'");
    q(&format!(
        "DROP TRIGGER entries_no_update; DROP TRIGGER entries_no_delete; {sql}; {}; {};",
        upd.trim(),
        del.trim()
    ));
}

/// Deleting the entries that recorded a disable does not lift it: `ledger verify` names
/// the receipt and the seq it acknowledged, the state still rests on the stored receipt
/// (re-recorded), and with the receipts wiped too, the service disables the copy again at
/// its next check-in.
#[test]
fn truncating_a_disabled_copys_ledger_lifts_nothing() {
    let (w, a, b) = World::copied_on_day_one("b");
    w.hours(1);
    b.boot_offline(&*w.clock);
    for _ in 0..2 {
        w.day();
        assert_status(&w.checkin(&a), Status::Active, None);
    }
    w.hours(1);
    let r = w.checkin(&b);
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    let acked = receipt(&r).body.acked_seq;
    let verdict = receipt(&r).body.verdict.clone().unwrap();
    assert_eq!(b.status(&*w.clock)["state"], "disabled");

    // Everything after the acknowledged head goes: the `checkin` entry citing the
    // disabling receipt and the `disabled` transition.
    tamper_ledger(&b, &format!("DELETE FROM entries WHERE seq > {acked}"));
    let v = b.run(&*w.clock, &["ledger", "verify", "--json"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let doc = v.json();
    let problem = doc["first_bad"]["problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!(
            "truncated after seq {acked} was acknowledged by the service"
        )),
        "{problem}"
    );
    assert!(
        problem.contains(&receipt(&r).hash().unwrap()[..16]),
        "{problem}"
    );
    // The state computation still finds the receipt: disabled, the verdict named, and the
    // receipt recorded again.
    let s = b.status(&*w.clock);
    assert_eq!(
        (&s["state"], &s["verdict"]),
        (&"disabled".into(), &verdict.clone().into())
    );
    let c = b
        .instance()
        .ledger()
        .unwrap()
        .latest_of_kind("checkin")
        .unwrap()
        .unwrap();
    assert_eq!(c.body.data["recovered"], true);
    assert_eq!(c.body.data["receipt"], receipt(&r).hash().unwrap());
    assert_eq!(b.run(&*w.clock, &["gate"]).code, 4);

    // The receipts wiped too (and the entries after the acknowledged head again): nothing
    // local is left to say so, and the copy runs on its older receipt; the service
    // disables it again at its next check-in.
    tamper_ledger(
        &b,
        &format!("DELETE FROM entries WHERE seq > {acked}; DELETE FROM receipts"),
    );
    let v = b.run(&*w.clock, &["ledger", "verify"]);
    assert_eq!(v.code, 0, "nothing left to tell locally: {}", v.stdout);
    assert_ne!(b.status(&*w.clock)["state"], "disabled");
    w.hours(1);
    let r = w.checkin(&b);
    assert_status(&r, Status::Disabled, Some("concurrent_duplicate"));
    assert_eq!(receipt(&r).body.verdict.as_deref(), Some(verdict.as_str()));
    let s = b.status(&*w.clock);
    assert_eq!(s["state"], "disabled", "{s:#}");
    assert_eq!(b.run(&*w.clock, &["gate"]).code, 4);

    // Deeper: the acknowledged entry too, and new entries written in its place.
    let acked = receipt(&r).body.acked_seq;
    tamper_ledger(&b, &format!("DELETE FROM entries WHERE seq >= {acked}"));
    b.boot_offline(&*w.clock);
    let doc = b.run(&*w.clock, &["ledger", "verify", "--json"]).json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["first_bad"]["seq"], acked, "{doc}");
    assert!(
        doc["first_bad"]["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("truncated after seq {acked}")),
        "{doc}"
    );
    assert_eq!(b.run(&*w.clock, &["gate"]).code, 4);
    w.hours(1);
    assert_status(&w.checkin(&a), Status::Active, None);
}
