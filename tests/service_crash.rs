//! SIGKILL of the real `vmledger serve` in the middle of check-ins from several
//! appliances: every acknowledged entry survives, and retries after the restart never
//! look like a fork (no verdict, one branch per instance).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Sandbox;
use common::service::{Copy, ServeProc, TestClock, init_db, show, sla};
use vmledger::service::client::Reply;

#[test]
fn sigkill_mid_checkins_loses_nothing_acknowledged_and_forges_no_fork() {
    let sb = Sandbox::new();
    let (db, key) = init_db(&sb);
    let clock = TestClock::at("2026-12-04T00:00:00Z");
    let copies: Vec<(String, Copy)> = (0..4)
        .map(|i| {
            let serial = format!("SN-{i}");
            sla(&sb, &db, &serial, "2099-12-31", "CODE");
            let c = Copy::init(&sb, &format!("c{i}"), &serial, &clock.faketime());
            (serial, c)
        })
        .collect();
    let real = vmledger::time::SystemClock;
    // Activate everything first.
    let mut server = ServeProc::start(&sb, &db, None, &["--no-alerts"]);
    for (_, c) in &copies {
        assert!(matches!(
            c.checkin(&server.url, &key, Some("CODE"), &real),
            Reply::Receipt(_)
        ));
    }
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..6 {
        let url = server.url.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = copies
            .iter()
            .map(|(_, c)| {
                let (c, url, stop, acked) = (c.clone(), url.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) && n < 400 {
                        n += 1;
                        match std::panic::catch_unwind(|| {
                            c.checkin(&url, &key, None, &vmledger::time::SystemClock)
                        }) {
                            Ok(Reply::Receipt(r)) => acked
                                .lock()
                                .unwrap()
                                .push((r.body.instance.clone(), r.body.acked_hash.clone())),
                            // The server is gone: the agent would record the failure.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        // Let some check-ins through, then kill the server without warning.
        let target = (round + 1) * 40;
        while acked.lock().unwrap().len() < target {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        server = ServeProc::start(&sb, &db, None, &["--no-alerts"]);
        // Every copy retries from what it holds as acknowledged.
        for (_, c) in &copies {
            let r = c.checkin(&server.url, &key, None, &real);
            match r {
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
                Reply::Refused { status, error } => panic!("round {round}: {status} {error:?}"),
            }
        }
    }
    drop(server);
    // Every acknowledged entry is stored; no verdict, no second branch.
    common::require("sqlite3");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 240, "{}", acked.len());
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
    }
}
