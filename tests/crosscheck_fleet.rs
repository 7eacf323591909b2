//! The cross-check on a small simulated fleet, through the real binary: every scenario
//! (legitimate and violating) appears; the report matches its schema; every verdict's
//! evidence re-verifies offline; the confusion matrix is perfect (every violation caught
//! with the right verdict, no false positive); the HTML report is self-contained; the
//! simulator is deterministic for a seed.

mod common;

use common::Sandbox;
use serde_json::Value;

fn simulate(sb: &Sandbox, dir: &str, seed: &str) -> Value {
    let r = sb
        .cmd([
            "--json",
            "simulate",
            "--instances",
            "40",
            "--days",
            "45",
            "--seed",
            seed,
            "--out",
            dir,
        ])
        .ok();
    serde_json::from_str(&r.stdout).expect("simulate --json")
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
