//! The cross-check on a small simulated fleet, through the real binary: every scenario
//! (legitimate and violating) appears; the report matches its schema; every verdict's
//! evidence re-verifies offline; the confusion matrix is perfect (every violation caught
//! with the right verdict, no false positive); the HTML report is self-contained; the
//! simulator is deterministic for a seed.

mod common;

use common::Sandbox;
use serde_json::Value;

fn simulate(sb: &Sandbox, dir: &str, seed: &str) -> Value {
    simulate_with(sb, dir, seed, "40", "45")
}

fn simulate_with(sb: &Sandbox, dir: &str, seed: &str, appliances: &str, days: &str) -> Value {
    let r = sb
        .cmd([
            "--json",
            "simulate",
            "--instances",
            appliances,
            "--days",
            days,
            "--seed",
            seed,
            "--out",
            dir,
        ])
        .ok();
    let doc: Value = serde_json::from_str(&r.stdout).expect("simulate --json");
    common::schemas::assert_valid("simulate.schema.json", &doc);
    doc
}

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn simulated_fleet_is_judged_perfectly_with_verifiable_evidence() {
    let sb = Sandbox::new();
    let out = simulate(&sb, "fleet", "3");
    assert_eq!(out["format"], "vmledger-simulate/v1");
    let dir = sb.join("fleet");
    let labels: Value =
        serde_json::from_slice(&std::fs::read(dir.join("labels.json")).unwrap()).unwrap();
    common::schemas::assert_valid("simulate-labels.schema.json", &labels);
    let policy: Value =
        serde_json::from_slice(&std::fs::read(dir.join("policy.json")).unwrap()).unwrap();
    common::schemas::assert_valid("crosscheck-policy.schema.json", &policy);
    // Every scenario is in the fleet, legitimate behaviours happened.
    let scenarios = labels["scenarios"].as_object().unwrap();
    assert_eq!(scenarios.len(), 13, "{scenarios:?}");
    let sum = |k: &str| -> u64 {
        labels["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["behaviours"][k].as_u64().unwrap())
            .sum()
    };
    for k in [
        "boots",
        "checkins_failed",
        "clock_steps",
        "hardware_changes",
        "outages",
    ] {
        assert!(sum(k) > 0, "no {k} in the fleet");
    }

    let r = sb
        .cmd([
            "--json",
            "crosscheck",
            "fleet/exports",
            "--policy",
            "fleet/policy.json",
            "--html",
            "report.html",
        ])
        .expect(1);
    std::fs::write(sb.join("report.json"), &r.stdout).unwrap();
    let report: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    common::schemas::assert_valid("crosscheck.schema.json", &report);
    assert_eq!(report["summary"]["exit_code"], 1);
    assert!(report["summary"]["duplicates"].as_u64().unwrap() > 0);

    // Every evidence document verifies offline and matches the service's schema; a
    // tampered copy does not verify.
    let mut docs = Vec::new();
    for s in report["serials"].as_array().unwrap() {
        docs.extend(s["verdicts"].as_array().unwrap().iter().cloned());
        for i in s["instances"].as_array().unwrap() {
            docs.extend(i["verdicts"].as_array().unwrap().iter().cloned());
        }
    }
    let kinds: std::collections::BTreeSet<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["concurrent_duplicate", "restored", "switching"]
    );
    for d in &docs {
        vmledger::service::evidence::verify(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        common::schemas::assert_valid("evidence.schema.json", d);
    }
    let mut bad = docs
        .iter()
        .find(|d| d["scope"] == "instance" && !d["fork"].is_null())
        .expect("a fork in evidence")
        .clone();
    bad["fork"]["children"][1]["entry"]["body"]["at"] = Value::from("2027-01-01T00:00:00.000Z");
    assert!(vmledger::service::evidence::verify(&bad).is_err());

    // The confusion matrix: every violation caught with the right verdict, no false positive.
    let s = sb
        .cmd([
            "--json",
            "simulate",
            "score",
            "--labels",
            "fleet/labels.json",
            "report.json",
        ])
        .ok();
    let score: Value = serde_json::from_str(&s.stdout).unwrap();
    common::schemas::assert_valid("simulate-score.schema.json", &score);
    for scope in ["instances", "serials"] {
        let c = &score[scope];
        assert!(c["violations"].as_u64().unwrap() > 0);
        assert_eq!(c["violations"], c["violations_caught"], "{scope}: {c}");
        assert_eq!(c["false_positives"], 0, "{scope}: {c}");
        assert_eq!(c["mismatches"], 0, "{scope}: {c}");
        assert_eq!(c["missing"], 0, "{scope}: {c}");
    }

    // The HTML page: self-contained, one SVG timeline per flagged instance.
    let html = std::fs::read_to_string(sb.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"));
    assert!(html.contains("fork point"));
    for forbidden in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(forbidden), "{forbidden} in the HTML report");
    }
    let flagged = report["summary"]["instances"]["restored"].as_u64().unwrap()
        + report["summary"]["flagged"].as_u64().unwrap();
    assert_eq!(html.matches("<section id=\"i-").count() as u64, flagged);
    // Mark tooltips name entry kinds as the ledger does.
    assert!(html.contains(" checkin at 20"), "no check-in tooltip");
    assert!(!html.contains("Checkin") && !html.contains("CheckinFailed"));
    // One timeline per serial with a serial-level verdict: a lane per instance, the time
    // both ran shaded.
    let serial_level: Vec<&Value> = report["serials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["verdicts"].as_array().unwrap().is_empty())
        .collect();
    assert!(serial_level.len() >= 2, "concurrent and switching installs");
    let sections: Vec<&str> = html.split("<section id=\"s-").skip(1).collect();
    assert_eq!(sections.len(), serial_level.len());
    for (sec, s) in sections.iter().zip(&serial_level) {
        let sec = &sec[..sec.find("</section>").unwrap()];
        assert!(sec.contains(s["serial"].as_str().unwrap()));
        let svg = &sec[sec.find("<svg").expect("a serial timeline")..];
        for i in s["instances"].as_array().unwrap() {
            let lane = format!("instance {}…", &i["instance"].as_str().unwrap()[..12]);
            assert!(svg.contains(&lane), "no lane {lane}");
        }
        assert!(svg.contains("both instances"));
    }

    // The human table names the flagged instances and the totals.
    let t = sb
        .cmd([
            "crosscheck",
            "fleet/exports",
            "--policy",
            "fleet/policy.json",
        ])
        .expect(1);
    assert!(t.stdout.contains("switching"), "{}", t.stdout);
    assert!(t.stdout.contains("concurrent_duplicate"));
    assert!(t.stdout.contains("result: violations"));
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    let sb = Sandbox::new();
    simulate(&sb, "a", "9");
    simulate(&sb, "b", "9");
    simulate(&sb, "c", "10");
    let (a, b, c) = (
        files(&sb.join("a")),
        files(&sb.join("b")),
        files(&sb.join("c")),
    );
    assert!(a.len() > 40);
    assert!(a == b, "same seed, different output");
    assert!(a != c, "different seeds, same output");
    // Refuses to overwrite.
    let r = sb
        .cmd(["simulate", "--instances", "2", "--days", "20", "--out", "a"])
        .expect(2);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
}

#[test]
fn a_bundle_header_cannot_hide_a_serial_level_verdict() {
    let sb = Sandbox::new();
    simulate_with(&sb, "f", "4", "26", "30");
    let labels: Value =
        serde_json::from_slice(&std::fs::read(sb.join("f/labels.json")).unwrap()).unwrap();
    let serial = labels["serials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == "concurrent_install")
        .expect("a concurrent install")["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let instances: Vec<(String, String)> = labels["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["serial"] == serial.as_str())
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                i["expected"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(instances.len(), 2);
    // That serial's exports alone.
    std::fs::create_dir_all(sb.join("one")).unwrap();
    for e in walkdir::WalkDir::new(sb.join("f/exports")) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if instances.iter().any(|(i, _)| name.starts_with(i.as_str())) {
            std::fs::copy(e.path(), sb.join("one").join(&name)).unwrap();
        }
    }
    let judge = || -> Value {
        let r = sb.cmd(["--json", "crosscheck", "one"]).expect(1);
        let doc: Value = serde_json::from_str(&r.stdout).unwrap();
        common::schemas::assert_valid("crosscheck.schema.json", &doc);
        doc
    };
    let doc = judge();
    assert_eq!(doc["serials"][0]["verdict"], "concurrent_duplicate");
    let (older, _) = instances
        .iter()
        .find(|(_, v)| v == "concurrent_duplicate")
        .expect("the instance that ran on");
    // Its headers (unsigned) say no serial, or another one: it is no longer grouped with
    // the newer instance, so the serial-level rule cannot see it; the mismatch is flagged.
    for header in [Value::Null, Value::from("SN-ELSEWHERE")] {
        for e in std::fs::read_dir(sb.join("one")).unwrap() {
            let p = e.unwrap().path();
            if !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(older.as_str())
            {
                continue;
            }
            let mut b: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            b["serial"] = header.clone();
            std::fs::write(&p, serde_json::to_vec(&b).unwrap()).unwrap();
        }
        let doc = judge();
        assert_eq!(doc["summary"]["exit_code"], 1);
        let i = doc["serials"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["instances"].as_array().unwrap())
            .find(|i| i["instance"] == older.as_str())
            .unwrap();
        assert_eq!(i["verdict"], "invalid", "{header}: {i}");
        assert_eq!(
            i["serial"],
            serial.as_str(),
            "the signed serial is reported"
        );
        let p = &i["problems"][0];
        assert!(p["file"].as_str().unwrap().contains(older.as_str()));
        assert!(
            p["problem"].as_str().unwrap().contains(&format!(
                "the bundle's header names {}",
                header
                    .as_str()
                    .map_or("no serial (null)".into(), |s| format!("serial {s}"))
            )),
            "{p}"
        );
    }
}
