//! The license lifecycle walked along the calendar, through the real binary under the real
//! `faketime`, with the test vendor answering air-gapped request files: daily check-ins,
//! the check-in countdown and the lock, the clock set back, unlocking, the SLA warning,
//! expiry countdown and disable, and a reboot that stays disabled.

mod common;

use common::Sandbox;
use common::vendor::{Answer, Vendor, entries_of, faked, write_json};
use serde_json::Value;

/// One air-gapped check-in at `when`: request file, vendor answer at `server_time`,
/// response file. Returns the request the vendor saw.
fn checkin(
    sb: &Sandbox,
    v: &mut Vendor,
    when: &str,
    server_time: &str,
    a: Answer,
) -> vmledger::protocol::CheckinRequest {
    let req_path = sb.join("request.json");
    let resp_path = sb.join("response.json");
    faked(sb, when, ["checkin", "--request-file"])
        .arg(&req_path)
        .ok();
    let req = v.read_request(&req_path);
    let receipt = v.answer(&req, server_time, a);
    write_json(&resp_path, &receipt);
    let r = faked(sb, when, ["checkin", "--json", "--response-file"])
        .arg(&resp_path)
        .run();
    assert!(
        r.code == 0 || r.code == 3 || r.code == 4,
        "checkin exit {}: {}{}",
        r.code,
        r.stdout,
        r.stderr
    );
    assert_eq!(r.json()["ok"], true, "{}", r.stdout);
    req
}

fn status(sb: &Sandbox, when: &str) -> Value {
    faked(sb, when, ["status", "--json"]).ok().json()
}

fn gate(sb: &Sandbox, when: &str) -> common::Run {
    faked(sb, when, ["gate"]).run()
}

fn last_of(sb: &Sandbox, kind: &str) -> Value {
    entries_of(sb, kind)
        .pop()
        .unwrap_or_else(|| panic!("no `{kind}` entry"))
}

#[test]
fn calendar_walk_lock_unlock_sla_disable() {
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-01-01 09:00:00",
        ["init", "--serial", "SN-1", "--service-key"],
    )
    .arg(v.public_key_b64())
    .arg("--activation-code")
    .arg("ACT-1")
    .ok();
    let s = status(&sb, "2030-01-01 09:30:00");
    assert_eq!(s["state"], "unregistered");
    assert_eq!(s["reason"], "never_checked_in");

    // Daily check-ins for 3 days.
    for day in 1..=3 {
        let when = format!("2030-01-0{day} 10:00:00");
        faked(&sb, &when, ["boot"]).ok();
        let server = format!("2030-01-0{day}T10:01:00.000Z");
        let req = checkin(&sb, &mut v, &when, &server, Answer::default());
        // The activation code goes along until the first successful check-in only.
        let code = req.body.activation_code.as_deref();
        assert_eq!(
            code,
            if day == 1 { Some("ACT-1") } else { None },
            "day {day}"
        );
        let s = status(&sb, &format!("2030-01-0{day} 11:00:00"));
        assert_eq!(s["state"], "active", "day {day}: {s}");
        assert_eq!(
            s["last_checkin_at"].as_str().unwrap()[..10],
            format!("2030-01-0{day}")
        );
        assert_eq!(gate(&sb, &when).code, 0);
    }
    assert_eq!(last_of(&sb, "activated")["body"]["data"]["to"], "active");
    let c = last_of(&sb, "checkin");
    assert_eq!(c["body"]["data"]["server_time"], "2030-01-03T10:01:00.000Z");
    assert_eq!(c["body"]["data"]["via"], "file");

    // No check-in: the countdown starts when the next check-in was due (Jan 4, 10:01).
    let s = status(&sb, "2030-01-04 12:00:00");
    assert_eq!(s["state"], "checkin_overdue");
    assert_eq!(s["countdown_started_at"], "2030-01-04T10:01:00.000Z");
    assert_eq!(s["countdown_ends_at"], "2030-01-11T10:01:00.000Z");
    assert_eq!(s["days_left"], 7);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("2030-01-11 10:01 UTC")
    );
    let cs = last_of(&sb, "countdown_started");
    assert_eq!(
        cs["body"]["data"]["effective_at"],
        "2030-01-04T10:01:00.000Z"
    );
    assert_eq!(cs["body"]["data"]["countdown"], "checkin");
    assert_eq!(
        gate(&sb, "2030-01-11 10:00:00").code,
        0,
        "a minute before the lock"
    );

    // grace_days (7) later: locked; gate exits 3 with the reason on stderr.
    let g = gate(&sb, "2030-01-11 10:02:00");
    assert_eq!(g.code, 3, "{}", g.stderr);
    assert!(g.stderr.contains("locked"), "{}", g.stderr);
    let locked = last_of(&sb, "locked");
    assert_eq!(
        locked["body"]["data"]["effective_at"],
        "2030-01-11T10:01:00.000Z"
    );
    assert_eq!(locked["body"]["data"]["reason"], "checkin_overdue");
    assert_eq!(status(&sb, "2030-01-11 10:03:00")["state"], "locked");
    // `gate -- CMD` does not run CMD while locked.
    let marker = sb.join("ran");
    let r = faked(&sb, "2030-01-11 10:04:00", ["gate", "--", "touch"])
        .arg(&marker)
        .run();
    assert_eq!(r.code, 3);
    assert!(!marker.exists());

    // The clock set back a week: still locked, and the anomaly is on record.
    let anomalies = entries_of(&sb, "clock_anomaly").len();
    assert_eq!(gate(&sb, "2030-01-04 10:05:00").code, 3);
    let s = status(&sb, "2030-01-04 10:06:00");
    assert_eq!(s["state"], "locked");
    assert_ne!(s["trusted_time"]["source"], "system_clock");
    assert_eq!(entries_of(&sb, "clock_anomaly").len(), anomalies + 1);
    // A reboot with the clock still back: still locked.
    faked(&sb, "2030-01-04 10:07:00", ["boot"]).ok();
    assert_eq!(gate(&sb, "2030-01-04 10:08:00").code, 3);

    // A fresh receipt: unlocked, gate exits 0 and runs the command.
    checkin(
        &sb,
        &mut v,
        "2030-01-12 09:00:00",
        "2030-01-12T09:00:30.000Z",
        Answer::default(),
    );
    assert_eq!(last_of(&sb, "unlocked")["body"]["data"]["to"], "active");
    let r = faked(&sb, "2030-01-12 09:05:00", ["gate", "--", "touch"])
        .arg(&marker)
        .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(marker.exists());
    let r = faked(
        &sb,
        "2030-01-12 09:05:00",
        ["gate", "--", "sh", "-c", "exit 7"],
    )
    .run();
    assert_eq!(r.code, 7, "gate passes on the command's status");

    // SLA ends in 20 days (covers 2030-02-01: ends 2030-02-02T00:00Z); the vendor grants a
    // long lease so that only the SLA matters from here on.
    let long = Answer {
        sla_ends: Some("2030-02-01".into()),
        next_checkin_before: Some("2030-06-01T00:00:00.000Z".into()),
        ..Answer::default()
    };
    checkin(
        &sb,
        &mut v,
        "2030-01-13 00:00:00",
        "2030-01-13T00:00:00.000Z",
        long,
    );
    let s = status(&sb, "2030-01-13 00:01:00");
    assert_eq!(s["state"], "sla_warning");
    assert_eq!(s["days_left"], 20);
    assert_eq!(s["sla_ends"], "2030-02-01");
    assert!(s["message"].as_str().unwrap().contains("2030-02-01"));
    assert_eq!(
        last_of(&sb, "sla_warning")["body"]["data"]["to"],
        "sla_warning"
    );

    // The SLA passes: countdown to disable; configuration still allowed.
    let s = status(&sb, "2030-02-02 00:00:01");
    assert_eq!(s["state"], "sla_expired");
    assert_eq!(s["countdown"], "sla");
    assert_eq!(s["countdown_ends_at"], "2030-02-16T00:00:00.000Z");
    assert_eq!(s["days_left"], 14);
    assert_eq!(gate(&sb, "2030-02-02 00:00:02").code, 0);
    let cs = last_of(&sb, "countdown_started");
    assert_eq!(cs["body"]["data"]["countdown"], "sla");
    assert_eq!(
        cs["body"]["data"]["effective_at"],
        "2030-02-02T00:00:00.000Z"
    );

    // Mid-countdown, the clock set back 10 days: the countdown is not extended.
    let s = status(&sb, "2030-02-05 12:00:00");
    assert_eq!(s["days_left"], 11);
    let anomalies = entries_of(&sb, "clock_anomaly").len();
    let s = status(&sb, "2030-01-26 12:00:00");
    assert_eq!(s["state"], "sla_expired");
    assert_eq!(s["countdown_ends_at"], "2030-02-16T00:00:00.000Z");
    assert!(s["days_left"].as_u64().unwrap() <= 11, "{s}");
    assert_eq!(entries_of(&sb, "clock_anomaly").len(), anomalies + 1);
    let a = last_of(&sb, "clock_anomaly");
    assert!(
        a["body"]["data"]["system_clock"]
            .as_str()
            .unwrap()
            .starts_with("2030-01-26")
    );

    // 14 days after the SLA ended: disabled for good; gate 4; boot exits 4.
    let s = status(&sb, "2030-02-16 00:00:01");
    assert_eq!(s["state"], "disabled");
    assert_eq!(s["reason"], "sla_expired");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("permanently disabled")
    );
    assert_eq!(gate(&sb, "2030-02-16 00:00:02").code, 4);
    let d = last_of(&sb, "disabled");
    assert_eq!(
        d["body"]["data"]["effective_at"],
        "2030-02-16T00:00:00.000Z"
    );
    let b = faked(&sb, "2030-02-16 08:00:00", ["boot"]).run();
    assert_eq!(b.code, 4, "{}", b.stderr);
    assert!(b.stderr.contains("disabled"), "{}", b.stderr);
    // A reboot with the clock far back: still disabled.
    assert_eq!(faked(&sb, "2030-01-01 08:00:00", ["boot"]).run().code, 4);
    assert_eq!(status(&sb, "2030-01-01 08:01:00")["state"], "disabled");

    // The history explains itself and verifies.
    sb.cmd(["ledger", "verify"]).ok();
    let kinds: Vec<String> = common::vendor::entries(&sb)
        .iter()
        .map(|e| e["body"]["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "activated",
        "countdown_started",
        "locked",
        "clock_anomaly",
        "unlocked",
        "sla_warning",
        "disabled",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}

#[test]
fn offline_from_the_start_locks_after_first_day_plus_grace() {
    let sb = Sandbox::new();
    faked(&sb, "2030-03-01 00:00:00", ["init", "--serial", "SN-2"]).ok();
    // Off for weeks, then one observation records both steps with their instants.
    let g = gate(&sb, "2030-03-20 00:00:00");
    assert_eq!(g.code, 3);
    let cs = last_of(&sb, "countdown_started");
    // Genesis was written a few milliseconds after 2030-03-01 00:00:00.
    let eff = |e: &Value| {
        e["body"]["data"]["effective_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(eff(&cs).starts_with("2030-03-02T00:00:0"), "{cs}");
    let l = last_of(&sb, "locked");
    assert!(eff(&l).starts_with("2030-03-09T00:00:0"), "{l}");
    assert_eq!(l["body"]["data"]["reason"], "never_checked_in");
    assert!(l["body"]["seq"].as_u64() > cs["body"]["seq"].as_u64());
    // Observing again records nothing new.
    let n = common::vendor::entries(&sb).len();
    assert_eq!(gate(&sb, "2030-03-20 00:01:00").code, 3);
    assert_eq!(common::vendor::entries(&sb).len(), n);
}

#[test]
fn a_receipt_that_disables_names_the_verdict() {
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-04-01 00:00:00",
        ["init", "--serial", "SN-3", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    checkin(
        &sb,
        &mut v,
        "2030-04-01 01:00:00",
        "2030-04-01T01:00:00.000Z",
        Answer::default(),
    );
    let a = Answer {
        status: vmledger::protocol::Status::Disabled,
        reason: Some("concurrent_duplicate".into()),
        verdict: Some("V-2030-0042".into()),
        ..Answer::default()
    };
    checkin(
        &sb,
        &mut v,
        "2030-04-02 01:00:00",
        "2030-04-02T01:00:00.000Z",
        a,
    );
    let s = status(&sb, "2030-04-02 01:01:00");
    assert_eq!(s["state"], "disabled");
    assert_eq!(s["reason"], "concurrent_duplicate");
    assert_eq!(s["verdict"], "V-2030-0042");
    assert!(s["message"].as_str().unwrap().contains("V-2030-0042"));
    assert_eq!(gate(&sb, "2030-04-02 01:02:00").code, 4);
    assert_eq!(faked(&sb, "2030-04-02 02:00:00", ["boot"]).run().code, 4);
    assert_eq!(
        last_of(&sb, "disabled")["body"]["data"]["verdict"],
        "V-2030-0042"
    );
}

/// `faked` with one environment variable set.
fn faked_env(sb: &Sandbox, when: &str, var: (&str, &str), args: &[&str]) -> common::Run {
    let mut c = faked(sb, when, args);
    c.cmd.env(var.0, var.1);
    c.run()
}

#[test]
fn local_settings_cannot_lift_a_recorded_disable_or_lock() {
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-08-01 00:00:00",
        ["init", "--serial", "SN-4", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    // A lease of 10 days on an SLA that ended (covers 2030-07-31): disabled 14 days later.
    let a = Answer {
        sla_ends: Some("2030-07-31".into()),
        next_checkin_before: Some("2030-08-11T00:00:00.000Z".into()),
        ..Answer::default()
    };
    checkin(
        &sb,
        &mut v,
        "2030-08-01 01:00:00",
        "2030-08-01T01:00:00.000Z",
        a,
    );
    assert_eq!(gate(&sb, "2030-08-14 23:59:00").code, 0);
    assert_eq!(gate(&sb, "2030-08-15 00:00:01").code, 4);
    let disabled = entries_of(&sb, "disabled").len();

    // Lengthening the SLA grace period locally is refused outright, naming the variable
    // (or the file and key); nothing is recorded.
    let n = common::vendor::entries(&sb).len();
    let r = faked_env(
        &sb,
        "2030-08-15 00:01:00",
        ("VMLEDGER_SLA_GRACE_DAYS", "100000"),
        &["gate"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("VMLEDGER_SLA_GRACE_DAYS") && r.stderr.contains("at most 14"),
        "{}",
        r.stderr
    );
    let conf = sb.join("long.toml");
    std::fs::write(&conf, "[license]\ngrace_days = 30\n").unwrap();
    let r = faked(&sb, "2030-08-15 00:01:00", ["--config"])
        .arg(&conf)
        .arg("status")
        .run();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("long.toml") && r.stderr.contains("[license] grace_days = 30"),
        "{}",
        r.stderr
    );
    assert_eq!(common::vendor::entries(&sb).len(), n);

    // Shortening is allowed; a later, longer (default) setting does not lift what was
    // recorded under the shorter one.
    let sb = Sandbox::new();
    faked(
        &sb,
        "2030-09-01 00:00:00",
        ["init", "--serial", "SN-5", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    v.acked = None;
    checkin(
        &sb,
        &mut v,
        "2030-09-01 01:00:00",
        "2030-09-01T01:00:00.000Z",
        Answer::default(),
    );
    // Due 2030-09-02 01:00; with grace_days = 1 locked from 2030-09-03 01:00.
    let g = faked_env(
        &sb,
        "2030-09-03 02:00:00",
        ("VMLEDGER_GRACE_DAYS", "1"),
        &["gate"],
    );
    assert_eq!(g.code, 3, "{}", g.stderr);
    assert_eq!(
        last_of(&sb, "locked")["body"]["data"]["effective_at"],
        "2030-09-03T01:00:00.000Z"
    );
    // Back to the default 7 days (the countdown alone would say checkin_overdue): still
    // locked, and no `unlocked` is recorded.
    assert_eq!(gate(&sb, "2030-09-03 03:00:00").code, 3);
    let s = status(&sb, "2030-09-03 03:01:00");
    assert_eq!(
        (&s["state"], &s["reason"]),
        (&"locked".into(), &"checkin_overdue".into())
    );
    assert!(entries_of(&sb, "unlocked").is_empty());
    // Only a check-in lifts it.
    checkin(
        &sb,
        &mut v,
        "2030-09-03 04:00:00",
        "2030-09-03T04:00:00.000Z",
        Answer::default(),
    );
    assert_eq!(gate(&sb, "2030-09-03 04:01:00").code, 0);
    assert_eq!(entries_of(&sb, "unlocked").len(), 1);

    // The same for a disable recorded under a short SLA grace period.
    let sb2 = Sandbox::new();
    faked(
        &sb2,
        "2030-08-01 00:00:00",
        ["init", "--serial", "SN-6", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    v.acked = None;
    let a = Answer {
        sla_ends: Some("2030-07-31".into()),
        next_checkin_before: Some("2030-08-11T00:00:00.000Z".into()),
        ..Answer::default()
    };
    checkin(
        &sb2,
        &mut v,
        "2030-08-01 01:00:00",
        "2030-08-01T01:00:00.000Z",
        a,
    );
    let g = faked_env(
        &sb2,
        "2030-08-02 00:00:01",
        ("VMLEDGER_SLA_GRACE_DAYS", "1"),
        &["gate"],
    );
    assert_eq!(g.code, 4, "{}", g.stderr);
    assert_eq!(gate(&sb2, "2030-08-02 00:01:00").code, 4);
    let s = status(&sb2, "2030-08-02 00:02:00");
    assert_eq!(
        (&s["state"], &s["reason"]),
        (&"disabled".into(), &"sla_expired".into())
    );
    assert!(entries_of(&sb2, "reenabled").is_empty());
    assert!(disabled >= 1);
    sb2.cmd(["ledger", "verify"]).ok();
}

#[test]
fn checkin_records_transitions_due_under_the_old_receipt_first() {
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-10-01 00:00:00",
        ["init", "--serial", "SN-7", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    checkin(
        &sb,
        &mut v,
        "2030-10-01 01:00:00",
        "2030-10-01T01:00:00.000Z",
        Answer::default(),
    );
    // Nothing runs for ten days; then a check-in through files. The request already
    // carries the countdown and the lock, with the instants they took effect.
    let req = checkin(
        &sb,
        &mut v,
        "2030-10-11 12:00:00",
        "2030-10-11T12:00:05.000Z",
        Answer::default(),
    );
    let sent: Vec<(&str, &str)> = req
        .body
        .entries
        .iter()
        .map(|e| {
            (
                e.body.kind.as_str(),
                e.body
                    .data
                    .get("effective_at")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        sent[sent.len() - 2..],
        [
            ("countdown_started", "2030-10-02T01:00:00.000Z"),
            ("locked", "2030-10-09T01:00:00.000Z")
        ],
        "{sent:?}"
    );
    let kinds: Vec<String> = common::vendor::entries(&sb)
        .iter()
        .map(|e| e["body"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 4..],
        ["countdown_started", "locked", "checkin", "unlocked"]
    );
    assert_eq!(gate(&sb, "2030-10-11 12:01:00").code, 0);
}

/// The `checkin` entry is stamped no earlier than the receipt's server time, so the
/// ledger's time carries the service's clock forward (also past a reboot, when the
/// receipt's uptime reference is gone); a system clock behind it is an anomaly.
#[test]
fn checkin_entry_time_is_at_least_the_receipts_server_time() {
    let sb = Sandbox::new();
    let mut v = Vendor::new();
    faked(
        &sb,
        "2030-11-01 10:00:00",
        ["init", "--serial", "SN-8", "--service-key"],
    )
    .arg(v.public_key_b64())
    .ok();
    // The appliance's clock is two hours slow.
    checkin(
        &sb,
        &mut v,
        "2030-11-01 10:00:00",
        "2030-11-01T12:00:00.000Z",
        Answer::default(),
    );
    let c = last_of(&sb, "checkin");
    let at = c["body"]["at"].as_str().unwrap();
    assert!(at >= "2030-11-01T12:00:00.000Z", "{c}");
    // Every later entry is at least as late; the slow clock is recorded as an anomaly.
    faked(&sb, "2030-11-01 10:01:00", ["boot"]).ok();
    assert!(last_of(&sb, "boot")["body"]["at"].as_str().unwrap() >= at);
    let a = last_of(&sb, "clock_anomaly");
    assert!(
        a["body"]["data"]["system_clock"]
            .as_str()
            .unwrap()
            .starts_with("2030-11-01T10:0"),
        "{a}"
    );
    sb.cmd(["ledger", "verify"]).ok();
}
