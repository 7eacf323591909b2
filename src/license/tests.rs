//! The state machine over tables of (history, now), including every boundary instant.

use super::*;
use crate::time::parse_at;

fn t(s: &str) -> DateTime<Utc> {
    parse_at(s).unwrap()
}

const MS: Duration = Duration::milliseconds(1);

fn created() -> DateTime<Utc> {
    t("2026-12-01T00:00:00.000Z")
}

fn lease(status: Status, next: &str, sla: Option<&str>) -> Lease {
    Lease {
        receipt: "ab".repeat(32),
        seq: 5,
        checked_in_at: t("2026-12-04T10:00:00.000Z"),
        server_time: t("2026-12-04T10:00:00.000Z"),
        status,
        reason: None,
        verdict: None,
        sla_ends: sla.map(|s| parse_date(s).unwrap()),
        next_checkin_before: t(next),
    }
}

fn facts(serial: Option<&str>, lease: Option<Lease>) -> Facts {
    Facts {
        serial: serial.map(str::to_string),
        created_at: created(),
        lease,
        refusal: None,
        disabled: None,
        locked: None,
    }
}

/// (now, expected state, expected reason, expected days_left)
type Row = (DateTime<Utc>, State, Option<&'static str>, Option<u64>);

fn check(name: &str, f: &Facts, rows: &[Row]) {
    let p = Policy::default();
    for (now, state, reason, days) in rows {
        let e = evaluate(f, &p, *now);
        assert_eq!(
            (e.state, e.reason.as_deref(), e.days_left),
            (*state, *reason, *days),
            "{name} at {}",
            time::format_at(*now)
        );
    }
}

#[test]
fn never_checked_in_counts_down_from_genesis() {
    let due = created() + FIRST_CHECKIN_WITHIN; // 2026-12-02T00:00Z
    let lock = due + Duration::days(7); // 2026-12-09T00:00Z
    let rows: Vec<Row> = vec![
        (
            created(),
            State::Unregistered,
            Some(why::NEVER_CHECKED_IN),
            None,
        ),
        (
            due - MS,
            State::Unregistered,
            Some(why::NEVER_CHECKED_IN),
            None,
        ),
        (
            due,
            State::CheckinOverdue,
            Some(why::NEVER_CHECKED_IN),
            Some(7),
        ),
        (
            due + MS,
            State::CheckinOverdue,
            Some(why::NEVER_CHECKED_IN),
            Some(7),
        ),
        (
            lock - MS,
            State::CheckinOverdue,
            Some(why::NEVER_CHECKED_IN),
            Some(1),
        ),
        (lock, State::Locked, Some(why::NEVER_CHECKED_IN), None),
        (
            lock + Duration::days(400),
            State::Locked,
            Some(why::NEVER_CHECKED_IN),
            None,
        ),
    ];
    check(
        "serial, never checked in",
        &facts(Some("SN-1"), None),
        &rows,
    );

    let no_serial: Vec<Row> = rows
        .iter()
        .map(|(n, s, _, d)| (*n, *s, Some(why::NO_SERIAL), *d))
        .collect();
    check("no serial", &facts(None, None), &no_serial);

    let mut f = facts(Some("SN-1"), None);
    f.refusal = Some(why::UNKNOWN_SERIAL.into());
    check(
        "unknown serial",
        &f,
        &[(
            due - MS,
            State::Unregistered,
            Some(why::UNKNOWN_SERIAL),
            None,
        )],
    );
}

#[test]
fn daily_lease_overdue_then_locked() {
    // SLA far away, next check-in due 2026-12-05T10:00Z.
    let f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2026-12-05T10:00:00.000Z",
            Some("2028-12-31"),
        )),
    );
    let due = t("2026-12-05T10:00:00.000Z");
    let lock = t("2026-12-12T10:00:00.000Z");
    check(
        "daily lease",
        &f,
        &[
            (t("2026-12-04T10:00:00.000Z"), State::Active, None, None),
            (due - MS, State::Active, None, None),
            (
                due,
                State::CheckinOverdue,
                Some(why::CHECKIN_OVERDUE),
                Some(7),
            ),
            (
                due + Duration::hours(12),
                State::CheckinOverdue,
                Some(why::CHECKIN_OVERDUE),
                Some(7),
            ),
            (
                due + Duration::days(1),
                State::CheckinOverdue,
                Some(why::CHECKIN_OVERDUE),
                Some(6),
            ),
            (
                lock - MS,
                State::CheckinOverdue,
                Some(why::CHECKIN_OVERDUE),
                Some(1),
            ),
            (lock, State::Locked, Some(why::CHECKIN_OVERDUE), None),
            (lock + MS, State::Locked, Some(why::CHECKIN_OVERDUE), None),
        ],
    );
    let e = evaluate(&f, &Policy::default(), due);
    assert_eq!(
        e.countdown,
        Some(Countdown {
            kind: CountdownKind::Checkin,
            started_at: due,
            ends_at: lock
        })
    );
}

#[test]
fn sla_warning_expiry_and_disable() {
    // A long lease (an air-gapped site) so that only the SLA matters until 2027-08-01.
    let f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2027-08-01T00:00:00.000Z",
            Some("2027-06-30"),
        )),
    );
    let end = t("2027-07-01T00:00:00.000Z");
    let warn = end - Duration::days(30);
    let disable = end + Duration::days(14);
    check(
        "sla",
        &f,
        &[
            (warn - MS, State::Active, None, None),
            (warn, State::SlaWarning, Some(why::SLA_ENDING), Some(30)),
            (
                warn + MS,
                State::SlaWarning,
                Some(why::SLA_ENDING),
                Some(30),
            ),
            (
                end - Duration::days(20),
                State::SlaWarning,
                Some(why::SLA_ENDING),
                Some(20),
            ),
            (end - MS, State::SlaWarning, Some(why::SLA_ENDING), Some(1)),
            (end, State::SlaExpired, Some(why::SLA_EXPIRED), Some(14)),
            (
                disable - MS,
                State::SlaExpired,
                Some(why::SLA_EXPIRED),
                Some(1),
            ),
            (disable, State::Disabled, Some(reason::SLA_EXPIRED), None),
            (
                disable + Duration::days(1000),
                State::Disabled,
                Some(reason::SLA_EXPIRED),
                None,
            ),
        ],
    );
    let e = evaluate(&f, &Policy::default(), end);
    assert_eq!(e.sla_end_at, Some(end));
    assert_eq!(e.disable_at, Some(disable));
}

#[test]
fn sla_and_checkin_countdowns_together() {
    // Due 2027-06-25T00:00Z, lock 2027-07-02T00:00Z; SLA ends 2027-07-01T00:00Z.
    let f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2027-06-25T00:00:00.000Z",
            Some("2027-06-30"),
        )),
    );
    let p = Policy::default();
    let due = t("2027-06-25T00:00:00.000Z");
    let end = t("2027-07-01T00:00:00.000Z");
    let lock = t("2027-07-02T00:00:00.000Z");
    check(
        "both",
        &f,
        &[
            (due - MS, State::SlaWarning, Some(why::SLA_ENDING), Some(7)),
            // Overdue beats the warning: its countdown is the urgent one.
            (
                due,
                State::CheckinOverdue,
                Some(why::CHECKIN_OVERDUE),
                Some(7),
            ),
            // SLA ended: its countdown (to disable) is shown.
            (end, State::SlaExpired, Some(why::SLA_EXPIRED), Some(14)),
            (
                lock - MS,
                State::SlaExpired,
                Some(why::SLA_EXPIRED),
                Some(14),
            ),
            // Locked, with the disable countdown still running.
            (lock, State::Locked, Some(why::CHECKIN_OVERDUE), Some(13)),
            (
                end + Duration::days(14),
                State::Disabled,
                Some(reason::SLA_EXPIRED),
                None,
            ),
        ],
    );
    let e = evaluate(&f, &p, lock);
    assert_eq!(e.countdown.map(|c| c.kind), Some(CountdownKind::Sla));
}

#[test]
fn receipts_that_disable_or_say_sla_expired() {
    let mut l = lease(
        Status::Disabled,
        "2026-12-05T10:00:00.000Z",
        Some("2028-01-01"),
    );
    l.reason = Some(reason::CONCURRENT_DUPLICATE.into());
    l.verdict = Some("V-42".into());
    let f = facts(Some("SN-1"), Some(l));
    let e = evaluate(&f, &Policy::default(), t("2026-12-04T10:00:00.000Z"));
    assert_eq!(e.state, State::Disabled);
    assert_eq!(e.reason.as_deref(), Some(reason::CONCURRENT_DUPLICATE));
    assert_eq!(e.verdict.as_deref(), Some("V-42"));
    // Even a clock far in the past cannot undo it.
    let e = evaluate(&f, &Policy::default(), t("2000-01-01T00:00:00.000Z"));
    assert_eq!(e.state, State::Disabled);

    let mut l = lease(Status::Disabled, "2026-12-05T10:00:00.000Z", None);
    l.reason = None;
    let e = evaluate(&facts(Some("SN-1"), Some(l)), &Policy::default(), created());
    assert_eq!(e.reason.as_deref(), Some(why::DISABLED_BY_SERVICE));

    // `sla_expired` without a date: the SLA ended by the receipt's server time.
    let l = lease(Status::SlaExpired, "2026-12-05T10:00:00.000Z", None);
    let server = l.server_time;
    let f = facts(Some("SN-1"), Some(l));
    check(
        "sla_expired receipt",
        &f,
        &[
            (
                server - MS,
                State::SlaWarning,
                Some(why::SLA_ENDING),
                Some(1),
            ),
            (server, State::SlaExpired, Some(why::SLA_EXPIRED), Some(14)),
            (
                server + Duration::days(14),
                State::Disabled,
                Some(reason::SLA_EXPIRED),
                None,
            ),
        ],
    );
    // `sla_expired` with a later date: the status wins.
    let l = lease(
        Status::SlaExpired,
        "2026-12-05T10:00:00.000Z",
        Some("2027-01-01"),
    );
    assert_eq!(l.sla_end(), Some(server));
}

#[test]
fn no_sla_date_means_no_sla_states() {
    let f = facts(
        Some("SN-1"),
        Some(lease(Status::Active, "2026-12-05T10:00:00.000Z", None)),
    );
    let e = evaluate(&f, &Policy::default(), t("2026-12-05T09:59:59.999Z"));
    assert_eq!(e.state, State::Active);
    assert_eq!(e.sla_end_at, None);
    assert_eq!(breakpoints(&f, &Policy::default()).len(), 2);
}

#[test]
fn custom_policy_lengths() {
    let p = Policy {
        grace: Duration::days(2),
        warn: Duration::days(5),
        sla_grace: Duration::days(1),
    };
    let f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2027-02-01T00:00:00.000Z",
            Some("2027-01-09"),
        )),
    );
    let at = |s: &str| evaluate(&f, &p, t(s)).state;
    assert_eq!(at("2027-01-04T23:59:59.999Z"), State::Active);
    assert_eq!(at("2027-01-05T00:00:00.000Z"), State::SlaWarning);
    assert_eq!(at("2027-01-10T00:00:00.000Z"), State::SlaExpired);
    assert_eq!(at("2027-01-11T00:00:00.000Z"), State::Disabled);
    let g = facts(
        Some("SN-1"),
        Some(lease(Status::Active, "2026-12-05T00:00:00.000Z", None)),
    );
    assert_eq!(
        evaluate(&g, &p, t("2026-12-06T23:59:59.999Z")).state,
        State::CheckinOverdue
    );
    assert_eq!(
        evaluate(&g, &p, t("2026-12-07T00:00:00.000Z")).state,
        State::Locked
    );
}

/// Between breakpoints the state is constant, and for fixed facts time only ever makes
/// things worse: the state sequence follows the severity order.
#[test]
fn state_changes_only_at_breakpoints_and_never_improves_with_time() {
    fn severity(s: State) -> u8 {
        match s {
            State::Active => 0,
            State::Unregistered => 0,
            State::SlaWarning => 1,
            State::CheckinOverdue => 2,
            State::SlaExpired => 3,
            State::Locked => 4,
            State::Disabled => 5,
        }
    }
    let cases = [
        facts(None, None),
        facts(Some("SN-1"), None),
        facts(
            Some("SN-1"),
            Some(lease(
                Status::Active,
                "2026-12-05T10:00:00.000Z",
                Some("2026-12-20"),
            )),
        ),
        facts(
            Some("SN-1"),
            Some(lease(
                Status::Active,
                "2027-06-25T00:00:00.000Z",
                Some("2027-06-30"),
            )),
        ),
        facts(
            Some("SN-1"),
            Some(lease(
                Status::Active,
                "2027-08-01T00:00:00.000Z",
                Some("2027-06-30"),
            )),
        ),
        facts(
            Some("SN-1"),
            Some(lease(Status::SlaExpired, "2026-12-05T10:00:00.000Z", None)),
        ),
    ];
    let p = Policy::default();
    for f in &cases {
        let bps = breakpoints(f, &p);
        let mut probes: Vec<DateTime<Utc>> = vec![created()];
        for b in &bps {
            probes.extend([*b - MS, *b, *b + MS]);
        }
        probes.push(bps.last().copied().unwrap_or(created()) + Duration::days(3650));
        probes.sort();
        let mut prev: Option<(DateTime<Utc>, State)> = None;
        for now in probes {
            let s = evaluate(f, &p, now).state;
            if let Some((pt, ps)) = prev {
                if ps != s {
                    assert!(
                        bps.contains(&now),
                        "{f:?}: {ps} -> {s} at {now}, not a breakpoint"
                    );
                }
                assert!(
                    severity(s) >= severity(ps) || ps == State::Unregistered,
                    "{f:?}: {ps} at {pt} -> {s} at {now}"
                );
            }
            prev = Some((now, s));
        }
    }
}

#[test]
fn transition_kinds() {
    use transition::kind;
    assert_eq!(
        kind(State::Active, State::CheckinOverdue),
        "countdown_started"
    );
    assert_eq!(
        kind(State::SlaWarning, State::SlaExpired),
        "countdown_started"
    );
    assert_eq!(kind(State::CheckinOverdue, State::Locked), "locked");
    assert_eq!(kind(State::Locked, State::Active), "unlocked");
    assert_eq!(kind(State::Locked, State::Disabled), "disabled");
    assert_eq!(kind(State::Disabled, State::Active), "reenabled");
    assert_eq!(kind(State::Active, State::SlaWarning), "sla_warning");
    assert_eq!(kind(State::SlaWarning, State::Active), "sla_renewed");
    assert_eq!(kind(State::Unregistered, State::Active), "activated");
    assert_eq!(
        kind(State::CheckinOverdue, State::Active),
        "countdown_cleared"
    );
    for from in State::ALL {
        for to in State::ALL {
            if from != to {
                assert!(transition::KINDS.contains(&kind(from, to)));
            }
        }
    }
}

#[test]
fn lease_from_checkin_data() {
    let data: Map<String, Value> = serde_json::from_value(serde_json::json!({
        "receipt": "ab".repeat(32),
        "server_time": "2026-12-04T10:00:00.000Z",
        "status": "active",
        "reason": null,
        "sla_ends": "2027-06-30",
        "next_checkin_before": "2026-12-05T10:00:00.000Z",
    }))
    .unwrap();
    let l = Lease::from_checkin(7, "2026-12-04T10:00:01.000Z", &data).unwrap();
    assert_eq!(l.seq, 7);
    assert_eq!(l.status, Status::Active);
    assert_eq!(l.sla_end(), Some(t("2027-07-01T00:00:00.000Z")));
    let mut bad = data.clone();
    bad.insert("sla_ends".into(), Value::String("2027-6-30".into()));
    assert_eq!(
        Lease::from_checkin(7, "2026-12-04T10:00:01.000Z", &bad)
            .unwrap_err()
            .field,
        "sla_ends"
    );
    let mut bad = data;
    bad.insert("status".into(), Value::String("happy".into()));
    assert!(Lease::from_checkin(7, "2026-12-04T10:00:01.000Z", &bad).is_err());
    assert_eq!(days_until(created(), created()), 0);
    assert_eq!(days_until(created(), created() + MS), 1);
    assert_eq!(days_until(created(), created() + Duration::days(2)), 2);
}

#[test]
fn recorded_disabled_and_locked_stay_until_a_newer_lease() {
    let p = Policy::default();
    let now = t("2026-12-04T12:00:00.000Z");
    // An active lease at seq 5; a `disabled` recorded after it (seq 9) holds although the
    // lease alone says active, with the recorded reason and verdict.
    let mut f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2026-12-05T10:00:00.000Z",
            Some("2027-06-30"),
        )),
    );
    assert_eq!(evaluate(&f, &p, now).state, State::Active);
    f.disabled = Some(Recorded {
        seq: 9,
        reason: Some("concurrent_duplicate".into()),
        verdict: Some("V-1".into()),
    });
    let e = evaluate(&f, &p, now);
    assert_eq!(
        (e.state, e.reason.as_deref(), e.verdict.as_deref()),
        (State::Disabled, Some("concurrent_duplicate"), Some("V-1"))
    );
    assert_eq!(e.days_left, None);
    // A lease newer than the recorded disable (a later receipt) decides again.
    f.lease.as_mut().unwrap().seq = 10;
    assert_eq!(evaluate(&f, &p, now).state, State::Active);

    // A recorded lock after the lease holds even where the countdown says overdue only
    // (e.g. the grace period was configured longer after the lock).
    let mut f = facts(
        Some("SN-1"),
        Some(lease(
            Status::Active,
            "2026-12-04T11:00:00.000Z",
            Some("2027-06-30"),
        )),
    );
    assert_eq!(evaluate(&f, &p, now).state, State::CheckinOverdue);
    f.locked = Some(Recorded {
        seq: 8,
        reason: Some(why::CHECKIN_OVERDUE.into()),
        verdict: None,
    });
    let e = evaluate(&f, &p, now);
    assert_eq!(
        (e.state, e.reason.as_deref(), e.countdown, e.days_left),
        (State::Locked, Some(why::CHECKIN_OVERDUE), None, None)
    );
    // Disabled wins over a recorded lock; a newer lease lifts the lock.
    f.disabled = Some(Recorded {
        seq: 7,
        reason: Some(why::SLA_EXPIRED.into()),
        verdict: None,
    });
    assert_eq!(evaluate(&f, &p, now).state, State::Disabled);
    f.disabled = None;
    f.lease.as_mut().unwrap().seq = 12;
    assert_eq!(evaluate(&f, &p, now).state, State::CheckinOverdue);

    // Never checked in: a recorded lock stays (no lease can be newer).
    let mut f = facts(Some("SN-1"), None);
    f.locked = Some(Recorded {
        seq: 3,
        reason: Some(why::NEVER_CHECKED_IN.into()),
        verdict: None,
    });
    assert_eq!(evaluate(&f, &p, created()).state, State::Locked);
}
