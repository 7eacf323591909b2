//! The cross-check on real appliance ledgers (made with the real binary) and on bad
//! input: truncated and garbled JSON, unknown format versions, a bundle whose public key
//! disagrees with the instance's, bad signatures, broken links, harmless duplicate
//! re-exports, a 2 GB file. Clear reasons naming the file, bounded memory, never a panic.

mod common;

use std::path::Path;

use common::Sandbox;
use serde_json::Value;

/// Run `vmledger ARGS` in the sandbox with the clock faked to `at` (real appliance time).
fn at(sb: &Sandbox, state: &str, when: &str, args: &[&str]) {
    let out = common::service::faked_bin(when)
        .args(["--state-dir", sb.join(state).to_str().unwrap()])
        .args(args)
        .env("HOME", sb.path())
        .current_dir(sb.path())
        .env_remove("VMLEDGER_STATE_DIR")
        .output()
        .expect("faketime");
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn export(sb: &Sandbox, state: &str, file: &str) -> Value {
    at(
        sb,
        state,
        "2027-01-20 12:00:00",
        &["ledger", "export", "-o", file],
    );
    serde_json::from_slice(&std::fs::read(sb.join(file)).unwrap()).unwrap()
}

/// A real appliance with a few boots, exported to `in/a.json`.
fn appliance(sb: &Sandbox) -> Value {
    at(
        sb,
        "a",
        "2027-01-02 08:00:00",
        &["init", "--serial", "SN-1"],
    );
    for day in 2..=6 {
        at(
            sb,
            "a",
            &format!("2027-01-{day:02} 09:00:00"),
            &["boot", "--offline"],
        );
    }
    std::fs::create_dir_all(sb.join("in")).unwrap();
    export(sb, "a", "in/a.json")
}

fn check(sb: &Sandbox, args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json", "crosscheck"];
    all.extend_from_slice(args);
    let r = sb.cmd(all).expect(code);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    common::schemas::assert_valid("crosscheck.schema.json", &doc);
    doc
}

fn only_instance(doc: &Value) -> Value {
    doc["serials"][0]["instances"][0].clone()
}

fn write(sb: &Sandbox, name: &str, v: &Value) {
    std::fs::write(sb.join(name), serde_json::to_vec(v).unwrap()).unwrap();
}

#[test]
fn real_ledgers_and_duplicate_reexports_are_clean() {
    let sb = Sandbox::new();
    let a = appliance(&sb);
    // The same export twice, and an overlapping tail export: harmless.
    std::fs::copy(sb.join("in/a.json"), sb.join("in/a-again.json")).unwrap();
    let mut tail = a.clone();
    tail["entries"] = Value::Array(a["entries"].as_array().unwrap()[3..].to_vec());
    write(&sb, "in/a-tail.json", &tail);
    std::fs::write(sb.join("in/notes.txt"), "not a bundle").unwrap();
    let doc = check(&sb, &["in"], 0);
    let i = only_instance(&doc);
    assert_eq!(i["verdict"], "clean");
    assert_eq!(i["files"].as_array().unwrap().len(), 3);
    let n = a["entries"].as_array().unwrap().len() as u64;
    assert_eq!(i["entries"], n);
    assert!(i["duplicates"].as_u64().unwrap() >= n);
    assert_eq!(doc["summary"]["skipped"], 1);
}

#[test]
fn real_copies_switching_back_and_forth_are_caught() {
    let sb = Sandbox::new();
    appliance(&sb);
    // The owner copies the VM, runs the copy for two days, then the original again: from
    // the ledgers alone that is a restore of a backup (allowed)...
    copy_dir(&sb.join("a"), &sb.join("b"));
    at(&sb, "b", "2027-01-08 09:00:00", &["boot", "--offline"]);
    at(&sb, "b", "2027-01-09 09:00:00", &["boot", "--offline"]);
    at(&sb, "a", "2027-01-11 09:00:00", &["boot", "--offline"]);
    export(&sb, "b", "in/b.json");
    export(&sb, "a", "in/a.json");
    let doc = check(&sb, &["in"], 0);
    assert_eq!(only_instance(&doc)["verdict"], "restored");
    // ...then the copy once more: switching.
    at(&sb, "b", "2027-01-13 09:00:00", &["boot", "--offline"]);
    export(&sb, "b", "in/b.json");
    let doc = check(&sb, &["in", "--html", "r.html"], 1);
    let i = only_instance(&doc);
    assert_eq!(i["verdict"], "switching", "{i}");
    assert_eq!(i["branches"].as_array().unwrap().len(), 2);
    for v in i["verdicts"].as_array().unwrap() {
        vmledger::service::evidence::verify(v).unwrap();
    }
    let html = std::fs::read_to_string(sb.join("r.html")).unwrap();
    assert!(html.contains("switching") && html.contains("<svg"));
}

#[test]
fn bad_input_gets_clear_reasons_and_the_rest_is_judged() {
    let sb = Sandbox::new();
    let a = appliance(&sb);
    let text = std::fs::read_to_string(sb.join("in/a.json")).unwrap();
    std::fs::create_dir_all(sb.join("bad")).unwrap();
    std::fs::write(sb.join("bad/truncated.json"), &text[..text.len() / 2]).unwrap();
    std::fs::write(sb.join("bad/garbled.json"), "{\"format\": vmledger!!").unwrap();
    let mut v2 = a.clone();
    v2["format"] = Value::from("vmledger-export/v2");
    write(&sb, "bad/v2.json", &v2);
    let doc = check(&sb, &["in", "bad"], 2);
    assert_eq!(only_instance(&doc)["verdict"], "clean");
    let reasons: Vec<(String, String)> = doc["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |name: &str| {
        reasons
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not reported: {reasons:?}"))
            .1
            .clone()
    };
    assert!(reason("truncated.json").starts_with("truncated"));
    assert!(reason("garbled.json").contains("not valid JSON"));
    assert!(reason("v2.json").contains("unknown format version"));

    // A 2 GB file is refused without being read.
    let big = std::fs::File::create(sb.join("big.json")).unwrap();
    big.set_len(2 << 30).unwrap();
    let doc = check(&sb, &["big.json", "in"], 2);
    assert!(
        doc["unreadable"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("over the limit")
    );
    // A path that does not exist is a usage error.
    let r = sb.cmd(["crosscheck", "nowhere"]).expect(2);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
}

#[test]
fn key_disagreement_bad_signatures_and_broken_links_are_invalid() {
    let sb = Sandbox::new();
    let a = appliance(&sb);
    let n = a["entries"].as_array().unwrap().len();
    let other = vmledger::keys::SigningKey::from_seed(&[9u8; 32]);

    // Another bundle of the same instance under another key.
    let mut foreign = a.clone();
    foreign["public_key"] = Value::from(other.public_key_b64());
    write(&sb, "in/foreign.json", &foreign);
    let doc = check(&sb, &["in"], 1);
    let i = only_instance(&doc);
    assert_eq!(i["verdict"], "invalid");
    let p = &i["problems"][0];
    assert!(p["file"].as_str().unwrap().ends_with("foreign.json"));
    assert!(p["problem"].as_str().unwrap().contains("disagrees"), "{p}");
    assert_eq!(i["entries"], n as u64, "the good bundle is still judged");
    std::fs::remove_file(sb.join("in/foreign.json")).unwrap();

    // A tip signed by someone else.
    let mut forged = a.clone();
    let tip = forged["entries"][n - 1].clone();
    let e: vmledger::ledger::entry::Entry = serde_json::from_value(tip).unwrap();
    let sig = other.sign(&e.body.message().unwrap());
    forged["entries"][n - 1]["sig"] = Value::from(vmledger::keys::b64_encode(&sig));
    write(&sb, "in/a.json", &forged);
    let i = only_instance(&check(&sb, &["in"], 1));
    assert_eq!(i["verdict"], "invalid");
    assert_eq!(i["problems"][0]["problem"], "bad signature");
    assert_eq!(i["problems"][0]["seq"], (n - 1) as u64);
    assert_eq!(i["entries"], (n - 1) as u64);

    // An interior signature broken: bound by the tip by default, found by --full.
    let mut inner = a.clone();
    inner["entries"][2]["sig"] = inner["entries"][3]["sig"].clone();
    write(&sb, "in/a.json", &inner);
    assert_eq!(only_instance(&check(&sb, &["in"], 0))["verdict"], "clean");
    let i = only_instance(&check(&sb, &["in", "--full"], 1));
    assert_eq!(i["problems"][0]["problem"], "bad signature");
    assert_eq!(i["signatures_checked"], n as u64);

    // A missing entry: broken link, the rest after it left out.
    let mut gap = a.clone();
    gap["entries"].as_array_mut().unwrap().remove(2);
    write(&sb, "in/a.json", &gap);
    let i = only_instance(&check(&sb, &["in"], 1));
    let p = &i["problems"][0];
    assert!(
        p["problem"].as_str().unwrap().starts_with("broken link"),
        "{p}"
    );
    assert_eq!(p["excluded"], (n - 4) as u64);

    // A changed body: hash mismatch.
    let mut edited = a.clone();
    edited["entries"][1]["body"]["boot_id"] = Value::from("edited");
    write(&sb, "in/a.json", &edited);
    let i = only_instance(&check(&sb, &["in"], 1));
    assert!(
        i["problems"][0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("hash mismatch")
    );
}

#[test]
fn a_malformed_entry_is_a_problem_of_its_instance_and_the_rest_is_judged() {
    let sb = Sandbox::new();
    let a = appliance(&sb);
    let n = a["entries"].as_array().unwrap().len() as u64;
    let mut nosig = a.clone();
    nosig["entries"][2].as_object_mut().unwrap().remove("sig");
    let mut extra = a.clone();
    extra["entries"][2]["extra"] = Value::from(1);
    let mut bigseq = a.clone();
    bigseq["entries"][2]["body"]["seq"] = Value::from(987_654_321_u64);
    let bigseq = serde_json::to_string(&bigseq)
        .unwrap()
        .replace("\"seq\":987654321", "\"seq\":18446744073709551616");
    for (name, text, why, seq) in [
        (
            "nosig",
            serde_json::to_string(&nosig).unwrap(),
            "missing field `sig`",
            Value::from(2),
        ),
        (
            "extra",
            serde_json::to_string(&extra).unwrap(),
            "unknown field `extra`",
            Value::from(2),
        ),
        ("bigseq", bigseq, "expected u64", Value::Null),
    ] {
        std::fs::write(sb.join("in/a.json"), &text).unwrap();
        let doc = check(&sb, &["in"], 1);
        assert_eq!(doc["unreadable"], serde_json::json!([]), "{name}");
        let i = only_instance(&doc);
        assert_eq!(i["verdict"], "invalid", "{name}: {i}");
        let p = &i["problems"][0];
        assert!(p["file"].as_str().unwrap().ends_with("in/a.json"), "{p}");
        assert_eq!(p["seq"], seq, "{name}: {p}");
        let problem = p["problem"].as_str().unwrap();
        assert!(problem.starts_with("entry 2 of the bundle"), "{problem}");
        assert!(problem.contains(why), "{name}: {problem}");
        // The entries before it are judged, those after it are left out because of it.
        assert_eq!(i["entries"], 2, "{name}");
        assert_eq!(p["excluded"], n - 3, "{name}: {p}");
        assert_eq!(i["entries_read"], n, "{name}");
        assert_eq!(doc["serials"][0]["verdict"], "invalid");
    }
    // Entries that is not an array: the file is unreadable (named), not a clean instance.
    let mut text = a.clone();
    text["entries"] = Value::from("x");
    write(&sb, "in/a.json", &text);
    let doc = check(&sb, &["in"], 2);
    assert!(
        doc["unreadable"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("a.json")
    );
    let i = only_instance(&doc);
    assert_eq!(i["entries"], 0);
    assert!(
        i["notes"][0]
            .as_str()
            .unwrap()
            .contains("none of its 1 export(s) could be read"),
        "{i}"
    );
}

#[test]
fn files_that_are_not_bundles_are_unreadable_unless_known_vmledger_documents() {
    let sb = Sandbox::new();
    let a = appliance(&sb);
    let mut garbled = a.clone();
    garbled["format"] = Value::from("vmledger-exp0rt/v1");
    write(&sb, "in/garbled.json", &garbled);
    let mut unformatted = a.clone();
    unformatted.as_object_mut().unwrap().remove("format");
    write(&sb, "in/unformatted.json", &unformatted);
    write(
        &sb,
        "in/other.json",
        &serde_json::json!({"name": "not ours"}),
    );
    write(
        &sb,
        "in/policy.json",
        &serde_json::json!({"format": "vmledger-crosscheck-policy/v1"}),
    );
    write(
        &sb,
        "in/labels.json",
        &serde_json::json!({"format": "vmledger-simulate-labels/v1", "instances": []}),
    );
    let doc = check(&sb, &["in"], 2);
    assert_eq!(only_instance(&doc)["verdict"], "clean");
    let names = |k: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = doc[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let p = f["path"].as_str().unwrap();
                (
                    p.rsplit('/').next().unwrap().to_string(),
                    f["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let unreadable = names("unreadable");
    assert_eq!(
        unreadable.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["garbled.json", "other.json", "unformatted.json"]
    );
    assert!(
        unreadable[0]
            .1
            .contains("unknown format `vmledger-exp0rt/v1`")
    );
    assert!(unreadable[1].1.contains("no `format` member"));
    assert!(unreadable[2].1.contains("no `format` member"));
    assert_eq!(
        names("skipped")
            .iter()
            .map(|x| x.0.as_str())
            .collect::<Vec<_>>(),
        ["labels.json", "policy.json"]
    );
}

#[test]
fn exit_status_violation_over_unreadable_over_nothing_found() {
    let sb = Sandbox::new();
    // Nothing found: an empty directory, a directory of other documents.
    std::fs::create_dir_all(sb.join("empty")).unwrap();
    let doc = check(&sb, &["empty"], 2);
    assert_eq!(doc["summary"]["exit_code"], 2);
    let r = sb.cmd(["crosscheck", "empty"]).expect(2);
    assert!(
        r.stdout.contains("no export bundles were found"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("nothing flagged"), "{}", r.stdout);
    assert!(
        r.stderr.contains("no export bundles were found"),
        "{}",
        r.stderr
    );
    std::fs::create_dir_all(sb.join("docs")).unwrap();
    write(
        &sb,
        "docs/policy.json",
        &serde_json::json!({"format": "vmledger-crosscheck-policy/v1"}),
    );
    assert_eq!(check(&sb, &["docs"], 2)["summary"]["skipped"], 1);

    // A violation (an invalid ledger) beside an unreadable file: 1, both reported.
    let a = appliance(&sb);
    let mut forged = a.clone();
    forged["entries"][1]["body"]["boot_id"] = Value::from("edited");
    write(&sb, "in/a.json", &forged);
    std::fs::write(
        sb.join("in/cut.json"),
        "{\"format\": \"vmledger-export/v1\", \"ser",
    )
    .unwrap();
    let doc = check(&sb, &["in"], 1);
    assert_eq!(only_instance(&doc)["verdict"], "invalid");
    assert_eq!(doc["summary"]["unreadable"], 1);
    let r = sb.cmd(["crosscheck", "in"]).expect(1);
    assert!(r.stdout.contains("result: violations"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 file(s) could not be read"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("could not be read"), "{}", r.stderr);
}
