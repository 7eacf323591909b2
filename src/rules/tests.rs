//! Exhaustive tests of the rules on in-memory graphs. Entries are synthetic (the rules
//! never look at signatures); times are minutes after a fixed origin.

use chrono::{Duration, TimeZone, Utc};

use super::*;

fn t(min: i64) -> Time {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
        .single()
        .expect("valid")
        + Duration::minutes(min)
}

const DAY: i64 = 24 * 60;

/// A copy of an instance writing entries: tracks its own head.
#[derive(Clone)]
struct Copy {
    name: &'static str,
    head: String,
    seq: u64,
    boot_id: String,
    n: u32,
}

impl Copy {
    fn genesis(g: &mut Graph, at: i64) -> (Copy, Outcome) {
        let node = Node {
            hash: "g".into(),
            prev: GENESIS_PREV.into(),
            seq: 0,
            kind: "genesis".into(),
            at: t(at),
            boot_id: "boot-a".into(),
        };
        let o = g.observe(&node, t(at), &Policy::default()).unwrap();
        (
            Copy {
                name: "a",
                head: "g".into(),
                seq: 0,
                boot_id: "boot-a".into(),
                n: 0,
            },
            o,
        )
    }

    /// A copy of this one (a backup or clone taken now), named `name`.
    fn copy(&self, name: &'static str) -> Copy {
        Copy {
            name,
            ..self.clone()
        }
    }

    fn node(&mut self, kind: &str, at: i64) -> Node {
        self.n += 1;
        if kind == "boot" {
            self.boot_id = format!("boot-{}-{}", self.name, self.n);
        }
        let hash = format!("{}{}", self.name, self.n);
        let node = Node {
            hash: hash.clone(),
            prev: self.head.clone(),
            seq: self.seq + 1,
            kind: kind.into(),
            at: t(at),
            boot_id: self.boot_id.clone(),
        };
        self.head = hash;
        self.seq += 1;
        node
    }
}

/// Write an entry and have it observed at `observed` (service arrival time).
fn write(g: &mut Graph, c: &mut Copy, kind: &str, at: i64, observed: i64, p: &Policy) -> Decision {
    let n = c.node(kind, at);
    g.observe(&n, t(observed), p).unwrap().decision
}

/// Write an entry observed when written (cross-check style, or prompt check-ins).
fn now(g: &mut Graph, c: &mut Copy, kind: &str, at: i64) -> Decision {
    write(g, c, kind, at, at, &Policy::default())
}

fn verdict(d: &Decision) -> &Verdict {
    match d {
        Decision::Verdict(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

fn start() -> (Graph, Copy) {
    let mut g = Graph::new("00112233445566778899aabbccddeeff");
    let (mut a, o) = Copy::genesis(&mut g, 0);
    assert_eq!(o.decision, Decision::Genesis);
    for day in 1..=2 {
        assert_eq!(
            now(&mut g, &mut a, "checkin", day * DAY),
            Decision::Extended
        );
    }
    (g, a)
}

#[test]
fn daily_checkins_and_reboots_extend_the_primary() {
    let (mut g, mut a) = start();
    for day in 3..=60 {
        let kind = if day % 7 == 0 { "boot" } else { "checkin" };
        assert_eq!(now(&mut g, &mut a, kind, day * DAY), Decision::Extended);
    }
    assert_eq!(g.state.branches.len(), 1);
    assert_eq!(g.state.verdicts, 0);
    assert_eq!(g.state.standing(g.loc(&a.head).unwrap()), Standing::Primary);
}

#[test]
fn network_outage_entries_arrive_late_and_are_clean() {
    let (mut g, mut a) = start();
    let p = Policy::default();
    // Written on days 3..9 while offline, all delivered on day 10.
    for day in 3..10 {
        assert_eq!(
            write(&mut g, &mut a, "checkin_failed", day * DAY, 10 * DAY, &p),
            Decision::Extended
        );
    }
    assert_eq!(g.state.verdicts, 0);
}

#[test]
fn resent_entries_are_known_and_change_nothing() {
    let (mut g, mut a) = start();
    let n = a.node("checkin", 3 * DAY);
    let p = Policy::default();
    assert_eq!(
        g.observe(&n, t(3 * DAY), &p).unwrap().decision,
        Decision::Extended
    );
    let before = g.state.clone();
    for _ in 0..3 {
        assert_eq!(
            g.observe(&n, t(4 * DAY), &p).unwrap().decision,
            Decision::Known
        );
    }
    assert_eq!(g.state, before);
}

#[test]
fn restore_from_backup_is_allowed_and_supersedes() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b"); // backup taken on day 2
    for day in 3..=5 {
        now(&mut g, &mut a, "checkin", day * DAY);
    }
    // The original dies; the backup is restored and boots on day 6.
    let d = now(&mut g, &mut b, "boot", 6 * DAY);
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::Restored);
    assert_eq!(v.rule, Rule::Restore);
    assert!(v.disabled.is_empty());
    assert!(!v.review);
    assert_eq!(g.state.primary, 1);
    assert_eq!(v.superseded, vec![0]);
    let fork = v.fork.as_ref().unwrap();
    assert_eq!(fork.point.hash, "a2");
    assert_eq!(fork.children[0].hash, "a3");
    assert_eq!(fork.children[1].hash, "b3");
    assert_eq!(v.witness.as_ref().unwrap().hash, "a5");
    // The restored copy continues cleanly.
    for day in 7..=30 {
        assert_eq!(
            now(&mut g, &mut b, "checkin", day * DAY),
            Decision::Extended
        );
    }
    assert_eq!(g.state.standing(g.loc(&b.head).unwrap()), Standing::Primary);
    assert_eq!(g.state.standing(g.loc(&a.head).unwrap()), Standing::Live);
}

#[test]
fn snapshot_revert_without_reboot_counts_as_restore() {
    let (mut g, mut a) = start();
    let mut snap = a.copy("s");
    for day in 3..=5 {
        now(&mut g, &mut a, "checkin", day * DAY);
    }
    // Reverted in place: same kernel boot, next entry is a check-in, not a boot.
    let d = now(&mut g, &mut snap, "checkin", 5 * DAY + 60);
    assert_eq!(verdict(&d).kind, Kind::Restored);
    assert_eq!(
        now(&mut g, &mut snap, "checkin", 6 * DAY),
        Decision::Extended
    );
}

#[test]
fn old_copy_returning_without_reboot_is_a_concurrent_duplicate() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    verdict(&now(&mut g, &mut b, "boot", 4 * DAY));
    // The old copy never stopped: it checks in again, same kernel boot.
    let d = now(&mut g, &mut a, "checkin", 5 * DAY);
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::ConcurrentDuplicate);
    assert_eq!(v.rule, Rule::Resumed);
    assert_eq!(v.disabled, vec![0]);
    assert_eq!(v.primary, 1);
    let fork = v.fork.as_ref().unwrap();
    assert_eq!(fork.point.hash, "a2");
    assert_eq!(
        [
            fork.children[0].hash.as_str(),
            fork.children[1].hash.as_str()
        ],
        ["a3", "b3"]
    );
    assert_eq!(v.trigger.hash, "a4");
    assert_eq!(v.witness.as_ref().unwrap().hash, "b3");
    // The primary continues, the disabled copy stays disabled.
    assert_eq!(now(&mut g, &mut b, "checkin", 6 * DAY), Decision::Extended);
    assert!(matches!(
        now(&mut g, &mut a, "boot", 7 * DAY),
        Decision::StillDisabled {
            reason: Kind::ConcurrentDuplicate,
            verdict: 2
        }
    ));
    assert!(matches!(
        g.state.standing(g.loc(&a.head).unwrap()),
        Standing::Disabled { .. }
    ));
    assert_eq!(g.state.standing(g.loc(&b.head).unwrap()), Standing::Primary);
}

#[test]
fn old_copy_returning_after_reboot_is_switching_and_disables_all() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    verdict(&now(&mut g, &mut b, "boot", 4 * DAY));
    now(&mut g, &mut b, "checkin", 5 * DAY);
    let d = now(&mut g, &mut a, "boot", 6 * DAY);
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::Switching);
    assert_eq!(v.rule, Rule::Rebooted);
    let mut disabled = v.disabled.clone();
    disabled.sort();
    assert_eq!(disabled, vec![0, 1]);
    assert!(g.state.branches.iter().all(|b| b.state.is_disabled()));
    assert!(matches!(
        now(&mut g, &mut b, "checkin", 7 * DAY),
        Decision::StillDisabled {
            reason: Kind::Switching,
            ..
        }
    ));
}

#[test]
fn reboot_detected_by_boot_id_even_without_a_boot_entry_first() {
    // The agent may record e.g. a clock_anomaly before the boot entry.
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 2 * DAY + 60);
    verdict(&now(&mut g, &mut b, "boot", 3 * DAY));
    a.boot_id = "another-kernel-boot".into();
    let v = now(&mut g, &mut a, "clock_anomaly", 4 * DAY);
    assert_eq!(verdict(&v).kind, Kind::Switching);
}

#[test]
fn alternating_copies_are_switching() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    // A runs day 3, is shut down; B boots day 4; B shut down; A boots day 5...
    now(&mut g, &mut a, "boot", 3 * DAY);
    assert_eq!(
        verdict(&now(&mut g, &mut b, "boot", 4 * DAY)).kind,
        Kind::Restored
    );
    let v = now(&mut g, &mut a, "boot", 5 * DAY);
    assert_eq!(verdict(&v).kind, Kind::Switching);
    assert!(!g.state.any_live());
}

#[test]
fn clone_reported_late_is_disabled_by_overlap() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy::default();
    // The clone boots on day 3 but is offline; the original keeps checking in.
    let b3 = b.node("boot", 3 * DAY);
    for day in 3..=5 {
        now(&mut g, &mut a, "checkin", day * DAY + 60);
    }
    let d = g.observe(&b3, t(6 * DAY), &p).unwrap().decision;
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::ConcurrentDuplicate);
    assert_eq!(v.rule, Rule::Overlap);
    assert_eq!(v.disabled, vec![1]);
    assert_eq!(v.primary, 0);
    assert_eq!(v.witness.as_ref().unwrap().hash, "a5");
    // The original is untouched.
    assert_eq!(now(&mut g, &mut a, "checkin", 7 * DAY), Decision::Extended);
    // Entries of the clone written later are stored but stay disabled.
    assert!(matches!(
        write(&mut g, &mut b, "checkin", 4 * DAY, 7 * DAY, &p),
        Decision::StillDisabled { .. }
    ));
}

#[test]
fn clone_reported_first_supersedes_then_original_is_caught() {
    // Prompt check-ins of a clone running beside its original.
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    assert_eq!(
        verdict(&now(&mut g, &mut b, "boot", 3 * DAY + 600)).kind,
        Kind::Restored
    );
    let v = now(&mut g, &mut a, "checkin", 4 * DAY);
    assert_eq!(verdict(&v).kind, Kind::ConcurrentDuplicate);
    assert_eq!(
        now(&mut g, &mut b, "checkin", 4 * DAY + 600),
        Decision::Extended
    );
}

#[test]
fn crosscheck_replay_by_at_finds_the_same_violations() {
    // Entries of a clone and its original, replayed in `at` order (observed = at).
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let mut events = Vec::new();
    for day in 3..=8 {
        events.push((a.node("checkin", day * DAY), day * DAY));
        events.push((b.node("checkin", day * DAY + 300), day * DAY + 300));
    }
    events.sort_by_key(|(n, _)| (n.at, n.seq));
    let kinds: Vec<Kind> = events
        .iter()
        .filter_map(
            |(n, _)| match g.observe(n, n.at, &Policy::default()).unwrap().decision {
                Decision::Verdict(v) => Some(v.kind),
                _ => None,
            },
        )
        .collect();
    assert_eq!(kinds, vec![Kind::Restored, Kind::ConcurrentDuplicate]);
}

#[test]
fn clock_step_within_tolerance_is_never_flagged() {
    // A restore whose clock is 5 minutes behind the dead original's last entry.
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy::default();
    let a_early = a.node("checkin", 3 * DAY - 600);
    let a_last = a.node("checkin", 3 * DAY);
    let b_first = b.node("boot", 3 * DAY - 5);
    // Service order: the original's entries arrived first.
    let mut g2 = g.clone();
    g2.observe(&a_early, t(3 * DAY - 600), &p).unwrap();
    g2.observe(&a_last, t(3 * DAY), &p).unwrap();
    let d = g2.observe(&b_first, t(3 * DAY + 10), &p).unwrap().decision;
    assert_eq!(verdict(&d).kind, Kind::Restored);
    // Cross-check order (by at): the restore comes before the original's last entry,
    // which is late history within the tolerance, not a returning copy.
    for n in [&a_early, &b_first, &a_last] {
        let d = g.observe(n, n.at, &p).unwrap().decision;
        match n.hash.as_str() {
            "b3" => assert_eq!(verdict(&d).kind, Kind::Restored),
            "a4" => assert_eq!(d, Decision::Tolerated(Tolerance::LateHistory)),
            _ => assert_eq!(d, Decision::Extended),
        }
    }
    // ...but the original writing again an hour and a half later is caught.
    let d = now(&mut g, &mut a, "checkin", 3 * DAY + 90);
    assert_eq!(verdict(&d).kind, Kind::ConcurrentDuplicate);
}

#[test]
fn clock_steps_inside_one_copy_are_clean() {
    let (mut g, mut a) = start();
    // Ledger time holds still while the clock is behind: equal `at`s are fine.
    for _ in 0..5 {
        assert_eq!(
            now(&mut g, &mut a, "clock_anomaly", 2 * DAY),
            Decision::Extended
        );
    }
}

#[test]
fn restores_beyond_restore_warn_are_reported_never_disabled() {
    let (mut g, mut a) = start();
    let mut copies: Vec<Copy> = (0..4).map(|i| a.copy(["b", "c", "d", "e"][i])).collect();
    now(&mut g, &mut a, "checkin", 3 * DAY);
    let mut reviews = Vec::new();
    for (i, c) in copies.iter_mut().enumerate() {
        let d = now(&mut g, c, "boot", (4 + i as i64) * DAY);
        let v = verdict(&d);
        assert_eq!(v.kind, Kind::Restored);
        assert!(v.disabled.is_empty());
        reviews.push(v.review);
    }
    assert_eq!(reviews, vec![false, false, true, true]);
    assert!(g.state.any_live());
    // Outside the 30-day window the count starts again.
    let mut f = a.copy("f");
    let d = now(&mut g, &mut f, "boot", 60 * DAY);
    assert!(!verdict(&d).review);
}

#[test]
fn restore_of_the_superseded_lineage_is_another_restore() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    let mut a_backup = a.copy("c"); // backup of the original's own later state
    now(&mut g, &mut a, "checkin", 4 * DAY);
    assert_eq!(
        verdict(&now(&mut g, &mut b, "boot", 5 * DAY)).kind,
        Kind::Restored
    );
    now(&mut g, &mut b, "checkin", 6 * DAY);
    let d = now(&mut g, &mut a_backup, "boot", 7 * DAY);
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::Restored);
    assert_eq!(v.fork.as_ref().unwrap().point.hash, "a3");
    assert_eq!(g.state.primary, 2);
}

#[test]
fn copy_of_a_disabled_copy_is_born_disabled() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy::default();
    let b3 = b.node("boot", 3 * DAY);
    let mut b_backup = b.copy("x");
    now(&mut g, &mut a, "checkin", 4 * DAY);
    verdict(&g.observe(&b3, t(5 * DAY), &p).unwrap().decision); // overlap: b disabled
    now(&mut g, &mut b, "checkin", 5 * DAY);
    let d = now(&mut g, &mut b_backup, "boot", 9 * DAY);
    assert!(matches!(d, Decision::StillDisabled { .. }), "{d:?}");
    assert_eq!(now(&mut g, &mut a, "checkin", 9 * DAY), Decision::Extended);
}

#[test]
fn declared_pair_is_never_flagged_during_its_window() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy {
        windows: vec![Window {
            instance: g.state.instance.clone(),
            from: t(0),
            until: t(20 * DAY),
            reason: "HA pair".into(),
        }],
        ..Policy::default()
    };
    for day in 3..=20 {
        for c in [&mut a, &mut b] {
            let d = write(
                &mut g,
                c,
                if day % 5 == 0 { "boot" } else { "checkin" },
                day * DAY,
                day * DAY,
                &p,
            );
            assert!(
                matches!(
                    d,
                    Decision::Extended | Decision::Tolerated(Tolerance::AllowConcurrent { .. })
                ),
                "day {day}: {d:?}"
            );
        }
    }
    assert_eq!(g.state.verdicts, 0);
    // After the window, the secondary still running is a duplicate (never switching).
    now(&mut g, &mut a, "checkin", 21 * DAY);
    let d = now(&mut g, &mut b, "boot", 21 * DAY + 600);
    // b's entry is later than a's: it takes over (a failover), a is superseded...
    assert_eq!(verdict(&d).kind, Kind::Restored);
    assert_eq!(verdict(&d).rule, Rule::WindowEnded);
}

#[test]
fn declared_pair_after_window_overlap_disables_only_the_secondary() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy {
        windows: vec![Window {
            instance: g.state.instance.clone(),
            from: t(0),
            until: t(5 * DAY),
            reason: "DR test".into(),
        }],
        ..Policy::default()
    };
    write(&mut g, &mut a, "checkin", 2 * DAY + 60, 2 * DAY + 60, &p);
    let d = write(&mut g, &mut b, "boot", 3 * DAY, 3 * DAY, &p);
    assert!(matches!(
        d,
        Decision::Tolerated(Tolerance::AllowConcurrent { .. })
    ));
    // After the window: the secondary reports an entry older than the primary's latest.
    write(&mut g, &mut a, "checkin", 7 * DAY, 7 * DAY, &p);
    let d = write(&mut g, &mut b, "checkin", 6 * DAY, 7 * DAY + 1, &p);
    let v = verdict(&d);
    assert_eq!(v.kind, Kind::ConcurrentDuplicate);
    assert_eq!(v.rule, Rule::WindowEnded);
    assert_eq!(v.disabled, vec![1]);
    assert_eq!(
        write(&mut g, &mut a, "checkin", 8 * DAY, 8 * DAY, &p),
        Decision::Extended
    );
}

#[test]
fn window_also_covers_a_superseded_copy() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 2 * DAY + 60);
    verdict(&now(&mut g, &mut b, "boot", 3 * DAY));
    let p = Policy {
        windows: vec![Window {
            instance: g.state.instance.clone(),
            from: t(3 * DAY),
            until: t(10 * DAY),
            reason: "DR test".into(),
        }],
        ..Policy::default()
    };
    let d = write(&mut g, &mut a, "boot", 4 * DAY, 4 * DAY, &p);
    assert!(matches!(
        d,
        Decision::Tolerated(Tolerance::AllowConcurrent { .. })
    ));
    assert_eq!(g.state.verdicts, 1);
}

#[test]
fn operator_overrides_primary_and_reinstate() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    verdict(&now(&mut g, &mut b, "boot", 4 * DAY));
    now(&mut g, &mut a, "boot", 5 * DAY); // switching: all disabled
    assert!(!g.state.any_live());
    let back = g.state.reinstate(t(6 * DAY));
    assert_eq!(back.len(), 2);
    assert_eq!(g.state.primary, 1);
    assert_eq!(g.state.branches[1].state, BranchState::Primary);
    assert!(matches!(
        g.state.branches[0].state,
        BranchState::Superseded { .. }
    ));
    // The operator decides the original is the one to keep.
    g.state.set_primary(0, t(6 * DAY + 1)).unwrap();
    assert_eq!(g.state.primary, 0);
    assert_eq!(now(&mut g, &mut a, "checkin", 7 * DAY), Decision::Extended);
    // The other copy writing again is judged by rule 3.
    let d = now(&mut g, &mut b, "checkin", 8 * DAY);
    assert_eq!(verdict(&d).kind, Kind::ConcurrentDuplicate);
    assert!(g.state.set_primary(9, t(9 * DAY)).is_err());
}

#[test]
fn bad_bookkeeping_is_an_error_not_a_panic() {
    let (mut g, mut a) = start();
    let p = Policy::default();
    let mut n = a.node("checkin", 3 * DAY);
    n.prev = "unknown".into();
    assert!(matches!(
        g.observe(&n, t(3 * DAY), &p),
        Err(RuleError::UnknownParent { .. })
    ));
    let second = Node {
        hash: "g2".into(),
        prev: GENESIS_PREV.into(),
        seq: 0,
        kind: "genesis".into(),
        at: t(0),
        boot_id: String::new(),
    };
    assert!(matches!(
        g.observe(&second, t(1), &p),
        Err(RuleError::SecondGenesis { .. })
    ));
    let mut s = InstanceState::new("x");
    let n = Node {
        hash: "h".into(),
        prev: "p".into(),
        seq: 3,
        kind: "boot".into(),
        at: t(0),
        boot_id: String::new(),
    };
    assert!(matches!(
        s.observe(&n, None, None, t(0), &p),
        Err(RuleError::NotGenesis { .. })
    ));
    assert!(matches!(
        s.observe(&n, Some(Loc { branch: 4, seq: 2 }), None, t(0), &p),
        Err(RuleError::UnknownBranch { .. })
    ));
    let mut g = Graph::new("y");
    assert!(matches!(
        g.observe(&n, t(0), &p),
        Err(RuleError::NotGenesis { .. })
    ));
}

#[test]
fn state_round_trips_through_json() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    now(&mut g, &mut a, "checkin", 3 * DAY);
    verdict(&now(&mut g, &mut b, "boot", 4 * DAY));
    now(&mut g, &mut a, "checkin", 5 * DAY);
    let text = serde_json::to_string(&g.state).unwrap();
    let back: InstanceState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, g.state);
    assert!(text.contains("\"state\":\"disabled\""), "{text}");
    assert!(
        text.contains("\"reason\":\"concurrent_duplicate\""),
        "{text}"
    );
}

mod serial_level {
    use super::*;

    fn node(hash: &str, kind: &str, at: i64, boot: &str) -> Node {
        Node {
            hash: hash.into(),
            prev: "p".into(),
            seq: 1,
            kind: kind.into(),
            at: t(at),
            boot_id: boot.into(),
        }
    }

    #[test]
    fn reinstall_supersedes_and_old_instance_returning_is_judged() {
        let p = Policy::default();
        let mut s = SerialState::new("SN-1");
        assert_eq!(
            s.observe("x", &node("x1", "genesis", 0, "k1"), t(0), &p),
            SerialDecision::Accepted
        );
        assert_eq!(
            s.observe("x", &node("x2", "checkin", DAY, "k1"), t(DAY), &p),
            SerialDecision::Accepted
        );
        assert_eq!(s.activate("y", t(2 * DAY)), vec!["x".to_string()]);
        assert_eq!(
            s.observe("y", &node("y1", "genesis", 2 * DAY, "k2"), t(2 * DAY), &p),
            SerialDecision::Accepted
        );
        // Late history from x within the tolerance.
        assert_eq!(
            s.observe(
                "x",
                &node("x3", "checkin", 2 * DAY, "k1"),
                t(2 * DAY + 5),
                &p
            ),
            SerialDecision::Tolerated(Tolerance::LateHistory)
        );
        let mut s2 = s.clone();
        // x keeps running: concurrent_duplicate, only x disabled.
        let SerialDecision::Verdict(v) =
            s.observe("x", &node("x4", "checkin", 3 * DAY, "k1"), t(3 * DAY), &p)
        else {
            panic!("expected a verdict")
        };
        assert_eq!(v.kind, Kind::ConcurrentDuplicate);
        assert_eq!(v.rule, Rule::SerialResumed);
        assert_eq!(v.disabled, vec!["x".to_string()]);
        assert_eq!(v.witness.as_ref().unwrap().hash, "y1");
        assert_eq!(s.member("y").unwrap().state, MemberState::Active);
        // x boots again instead: switching, both disabled.
        let SerialDecision::Verdict(v) =
            s2.observe("x", &node("x4", "boot", 3 * DAY, "k9"), t(3 * DAY), &p)
        else {
            panic!("expected a verdict")
        };
        assert_eq!(v.kind, Kind::Switching);
        assert_eq!(v.disabled.len(), 2);
        assert!(matches!(
            s2.observe("y", &node("y2", "checkin", 4 * DAY, "k2"), t(4 * DAY), &p),
            SerialDecision::StillDisabled { .. }
        ));
        // The operator reinstates y.
        assert!(s2.reinstate("y", t(5 * DAY)));
        assert_eq!(
            s2.observe("y", &node("y3", "checkin", 5 * DAY, "k2"), t(5 * DAY), &p),
            SerialDecision::Accepted
        );
        assert!(!s2.reinstate("nope", t(5 * DAY)));
    }

    #[test]
    fn declared_window_suspends_the_serial_rule() {
        let mut s = SerialState::new("SN-1");
        let p = Policy {
            windows: vec![Window {
                instance: "y".into(),
                from: t(0),
                until: t(10 * DAY),
                reason: "HA pair".into(),
            }],
            ..Policy::default()
        };
        s.observe("x", &node("x1", "genesis", 0, "k1"), t(0), &p);
        s.observe("y", &node("y1", "genesis", DAY, "k2"), t(DAY), &p);
        for day in 2..10 {
            let d = s.observe("x", &node("xx", "boot", day * DAY, "k3"), t(day * DAY), &p);
            assert!(matches!(
                d,
                SerialDecision::Tolerated(Tolerance::AllowConcurrent { .. })
            ));
        }
        assert_eq!(s.verdicts, 0);
    }
}

#[test]
fn pending_entries_of_the_old_copy_are_late_history_and_its_boot_is_switching() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy::default();
    now(&mut g, &mut a, "checkin", 3 * DAY);
    // Written after its last check-in, not sent yet (the agent's `checkin` entry).
    let pending = a.node("checkin", 3 * DAY + 1);
    assert_eq!(
        verdict(&now(&mut g, &mut b, "boot", 4 * DAY)).kind,
        Kind::Restored
    );
    // Day 6: the old copy boots again; its request carries the pending entry and the boot.
    assert_eq!(
        g.observe(&pending, t(6 * DAY), &p).unwrap().decision,
        Decision::Tolerated(Tolerance::LateHistory)
    );
    let boot = a.node("boot", 6 * DAY);
    let d = g.observe(&boot, t(6 * DAY), &p).unwrap().decision;
    assert_eq!(verdict(&d).kind, Kind::Switching);
}

#[test]
fn a_copy_holding_its_clock_back_is_caught_on_its_next_report() {
    let (mut g, mut a) = start();
    let mut b = a.copy("b");
    let p = Policy::default();
    now(&mut g, &mut a, "checkin", 3 * DAY);
    assert_eq!(
        verdict(&now(&mut g, &mut b, "boot", 4 * DAY)).kind,
        Kind::Restored
    );
    // The old copy keeps running with its clock set back: ledger time stays at day 3.
    let d = write(&mut g, &mut a, "checkin", 3 * DAY, 5 * DAY, &p);
    assert_eq!(d, Decision::Tolerated(Tolerance::LateHistory));
    let d = write(&mut g, &mut a, "checkin", 3 * DAY, 6 * DAY, &p);
    assert_eq!(verdict(&d).kind, Kind::ConcurrentDuplicate);
}
