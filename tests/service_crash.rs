//! SIGKILL of the real `vmledger serve` in the middle of check-ins by the real agent from
//! several appliances: every entry a receipt acknowledged survives, the agents record the
//! failed attempts and retry from what they hold as acknowledged after the restart, and
//! the retries never look like a fork (no verdict, one branch per instance).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Sandbox;
use common::service::{Copy, RealTime, Reply, ServeProc, init_db, show, sla};

#[test]
fn sigkill_mid_checkins_loses_nothing_acknowledged_and_forges_no_fork() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    let mut server = ServeProc::start(&sb, &db, None, &["--no-alerts"]);
    let copies: Vec<(String, Copy)> = (0..4)
        .map(|i| {
            let serial = format!("SN-{i}");
            sla(&sb, &db, &serial, "2099-12-31", "CODE");
            let c = Copy::init(
                &sb,
                &format!("c{i}"),
                &serial,
                &server.url,
                &key,
                Some("CODE"),
                &RealTime,
            );
            (serial, c)
        })
        .collect();
    // Activate everything first.
    for (_, c) in &copies {
        assert!(matches!(c.checkin(&RealTime), Reply::Receipt(_)));
    }
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut failures = 0;
    for round in 0..6 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = copies
            .iter()
            .map(|(_, c)| {
                let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) && n < 400 {
                        n += 1;
                        match c.checkin(&RealTime) {
                            Reply::Receipt(r) => acked
                                .lock()
                                .unwrap()
                                .push((r.body.instance.clone(), r.body.acked_hash.clone())),
                            // The server is gone: the agent recorded the failure.
                            Reply::Failed { reason, .. } => {
                                assert!(
                                    ["connect", "transport", "timeout"].contains(&reason.as_str()),
                                    "{reason}"
                                );
                                return 1;
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                    0
                })
            })
            .collect();
        // Let some check-ins through, then kill the server without warning.
        let target = (round + 1) * 20;
        while acked.lock().unwrap().len() < target {
            std::thread::sleep(Duration::from_millis(5));
        }
        let port = server.url.rsplit(':').next().unwrap().to_string();
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            failures += w.join().unwrap();
        }
        // The service comes back at the same address; every copy retries from what it
        // holds as acknowledged.
        server = ServeProc::start_on(
            &sb,
            &db,
            common::service::ServeTime::Real,
            &format!("127.0.0.1:{port}"),
            &["--no-alerts"],
        );
        for (_, c) in &copies {
            match c.checkin(&RealTime) {
                Reply::Receipt(r) => {
                    assert_eq!(
                        r.body.status,
                        vmledger::protocol::Status::Active,
                        "{:?}",
                        r.body
                    );
                    acked
                        .lock()
                        .unwrap()
                        .push((r.body.instance.clone(), r.body.acked_hash.clone()));
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    drop(server);
    assert!(failures > 0, "no check-in was cut off by the kill");
    // Every acknowledged entry is stored; no verdict, no second branch.
    common::require("sqlite3");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 120, "{}", acked.len());
    for (instance, hash) in &acked {
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(format!(
                "SELECT count(*) FROM entries WHERE instance = '{instance}' AND hash = '{hash}'"
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "acknowledged {hash} lost"
        );
    }
    for (serial, c) in &copies {
        let doc = show(&sb, &db, serial);
        assert!(
            doc["verdicts"].as_array().unwrap().is_empty(),
            "{serial}: {:#}",
            doc["verdicts"]
        );
        let inst = &doc["instances"][0];
        assert_eq!(inst["branches"].as_array().unwrap().len(), 1);
        assert_eq!(inst["entries"].as_u64().unwrap() + 1, c.len());
        // The copies are fine: they verify and are active.
        c.ok(&RealTime, &["ledger", "verify"]);
        assert_eq!(c.status(&RealTime)["state"], "active");
    }
}
