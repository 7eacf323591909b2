//! The load generator (`vmledger bench checkin`) against a real `vmledger serve`: a tiny
//! run checks that it activates its simulated instances, that every check-in is
//! acknowledged, that nothing acknowledged is missing from the database, and that its
//! report matches its schema. (The figures themselves come from `benches/service.sh`.)

mod common;

use common::Sandbox;
use common::service::{ServeProc, init_db, validate};

#[test]
fn bench_checkin_reports_and_loses_nothing() {
    let sb = Sandbox::new();
    let (db, _) = init_db(&sb);
    let mut csv = String::from("serial,ends,contact,activation_code\n");
    for i in 0..5 {
        csv.push_str(&format!("B-{i:05},2099-12-31,,BENCH\n"));
    }
    std::fs::write(sb.join("s.csv"), csv).unwrap();
    sb.cmd(["admin", "sla", "import", "--db"])
        .arg(&db)
        .arg(sb.join("s.csv"))
        .ok();
    let p = ServeProc::start(&sb, &db, None, &["--no-alerts", "--json"]);
    let key = sb.cmd(["service", "key", "--db"]).arg(&db).ok().stdout;
    let pid = p.child.id().to_string();
    let r = sb
        .cmd([
            "bench",
            "checkin",
            "--json",
            "--url",
            &p.url,
            "--instances",
            "5",
            "--rate",
            "20",
            "--duration",
            "1",
            "--serial-prefix",
            "B-",
            "--activation-code",
            "BENCH",
            "--service-key",
            key.trim(),
            "--server-pid",
            &pid,
            "--db",
        ])
        .arg(&db)
        .ok()
        .json();
    validate("bench-checkin", &r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["refused"], 0);
    assert_eq!(r["lost"], 0);
    assert!(r["ok"].as_u64().unwrap() >= 15, "{r:#}");
    assert!(r["ed25519_verify_per_s"].as_f64().unwrap() > 0.0);
    // Wrong activation code: the run fails clearly (exit 2).
    let bad = sb
        .cmd([
            "bench",
            "checkin",
            "--url",
            &p.url,
            "--instances",
            "2",
            "--rate",
            "10",
            "--duration",
            "1",
            "--serial-prefix",
            "B-",
            "--activation-code",
            "WRONG",
            "--seed",
            "9",
        ])
        .expect(2);
    assert!(bad.stderr.contains("bad_activation_code"), "{}", bad.stderr);
    assert_eq!(p.terminate(), 0);
}
