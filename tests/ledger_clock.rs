//! Clock anomalies: a system clock more than 5 minutes behind the ledger's time is recorded
//! once per episode and boot. Repeated `status`/`gate` observations within one boot record
//! nothing more; a reboot with the clock still behind records a new `clock_anomaly` (the
//! boot id changed); a clock seen sane ends the episode. Library-level, with injected time
//! and boot ids (the binary reads the real kernel's boot id).

use serde_json::Map;
use vmledger::identity::{Instance, StateDir};
use vmledger::license::Policy;
use vmledger::license::observe::{append_trusted, observe};
use vmledger::time::FixedClock;

fn anomalies(inst: &Instance) -> Vec<(u64, String, String)> {
    inst.ledger()
        .unwrap()
        .entries_from(0)
        .unwrap()
        .into_iter()
        .filter(|e| e.body.kind == "clock_anomaly")
        .map(|e| {
            (
                e.body.seq,
                e.body.boot_id.clone(),
                e.body.data["system_clock"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn clock_anomaly_once_per_episode_and_boot() {
    let dir = tempfile::tempdir().unwrap();
    let sd = StateDir::new(dir.path().join("state"));
    let mut clock = FixedClock::at("2026-12-04T10:00:00.000Z");
    clock.kernel.boot_id = "boot-a".into();
    let inst = Instance::init(&sd, Some("SN-CLOCK"), &clock).unwrap();
    let ledger = inst.ledger().unwrap();
    let boot = |clock: &FixedClock| {
        append_trusted(&inst, &ledger, "boot", Map::new(), clock)
            .unwrap()
            .into_iter()
            .map(|e| e.body.kind)
            .collect::<Vec<_>>()
    };
    let look = |clock: &FixedClock| {
        observe(&inst, &ledger, &Policy::default(), clock)
            .unwrap()
            .recorded
            .into_iter()
            .filter(|e| e.body.kind == "clock_anomaly")
            .count()
    };
    assert_eq!(boot(&clock), ["boot"]);
    assert!(anomalies(&inst).is_empty());

    // The clock set back an hour in boot A: one anomaly, then silence however often the
    // state is looked at or entries are appended in that boot.
    clock.now -= chrono::Duration::hours(1);
    assert_eq!(boot(&clock), ["clock_anomaly", "boot"]);
    for _ in 0..3 {
        assert_eq!(look(&clock), 0);
    }
    assert_eq!(boot(&clock), ["boot"]);
    assert_eq!(anomalies(&inst).len(), 1);

    // Reboot (boot B) with the clock still behind: a new anomaly, recorded by whichever
    // command runs first, then silence again within boot B.
    clock.kernel.boot_id = "boot-b".into();
    assert_eq!(look(&clock), 1);
    assert_eq!(look(&clock), 0);
    assert_eq!(boot(&clock), ["boot"]);
    let a = anomalies(&inst);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].1, "boot-a");
    assert_eq!(a[1].1, "boot-b");
    assert_eq!(a[1].2, "2026-12-04T09:00:00.000Z");

    // The clock seen right ends the episode; falling behind again in the same boot is a
    // new one.
    clock.now += chrono::Duration::hours(2);
    assert_eq!(boot(&clock), ["boot"]);
    clock.now -= chrono::Duration::hours(3);
    assert_eq!(boot(&clock), ["clock_anomaly", "boot"]);
    assert_eq!(anomalies(&inst).len(), 3);
}
