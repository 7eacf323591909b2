//! `vmledger diff` on two tree fingerprints: added, removed and changed paths (content,
//! mode, symlink target, type); exit 0 only when the trees are the same.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use common::{Sandbox, schema};
use serde_json::Value;

fn snap(sb: &Sandbox, name: &str) {
    sb.cmd(["fingerprint", "tree", "app", "-o", name]).ok();
}

fn paths(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let what: Vec<&str> = c
                .get("what")
                .and_then(Value::as_array)
                .map(|w| w.iter().map(|x| x.as_str().unwrap()).collect())
                .unwrap_or_default();
            if what.is_empty() {
                c["path"].as_str().unwrap().to_string()
            } else {
                format!("{} ({})", c["path"].as_str().unwrap(), what.join(","))
            }
        })
        .collect()
}

#[test]
fn added_removed_and_changed_paths_are_listed() {
    let sb = Sandbox::new();
    let app = sb.join("app");
    fs::create_dir_all(app.join("etc")).unwrap();
    fs::write(app.join("etc/app.conf"), "port = 8443\n").unwrap();
    fs::write(app.join("etc/old.conf"), "x").unwrap();
    fs::write(app.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::write(app.join("data"), "d").unwrap();
    symlink("etc/app.conf", app.join("current")).unwrap();
    snap(&sb, "before.json");
    sb.cmd(["diff", "before.json", "before.json"]).ok();

    fs::write(app.join("etc/app.conf"), "port = 9443\n").unwrap();
    fs::remove_file(app.join("etc/old.conf")).unwrap();
    fs::write(app.join("etc/new.conf"), "y").unwrap();
    fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(app.join("current")).unwrap();
    symlink("etc/new.conf", app.join("current")).unwrap();
    fs::remove_file(app.join("data")).unwrap();
    fs::create_dir(app.join("data")).unwrap();
    snap(&sb, "after.json");

    let d = sb
        .cmd(["diff", "--json", "before.json", "after.json"])
        .expect(1)
        .json();
    schema::assert_valid("tree-diff", &d);
    assert_eq!(d["same"], false);
    let t = &d["trees"][0];
    assert_eq!(paths(&t["added"]), ["etc/new.conf"]);
    assert_eq!(paths(&t["removed"]), ["etc/old.conf"]);
    assert_eq!(
        paths(&t["changed"]),
        [
            "current (target)",
            "data (type,mode)",
            "etc/app.conf (content)",
            "run.sh (mode)"
        ]
    );
    let text = sb
        .cmd(["diff", "before.json", "after.json"])
        .expect(1)
        .stdout;
    assert!(text.contains("+ etc/new.conf (file)"), "{text}");
    assert!(text.contains("- etc/old.conf (file)"), "{text}");
    assert!(text.contains("~ etc/app.conf (content)"), "{text}");
}

#[test]
fn edited_documents_and_mismatched_tree_counts_are_errors() {
    let sb = Sandbox::new();
    fs::create_dir_all(sb.join("app")).unwrap();
    fs::write(sb.join("app/a"), "a").unwrap();
    snap(&sb, "a.json");
    let mut doc: Value =
        serde_json::from_str(&fs::read_to_string(sb.join("a.json")).unwrap()).unwrap();
    doc["trees"][0]["entries"][0]["sha256"] = Value::from("f".repeat(64));
    fs::write(sb.join("edited.json"), doc.to_string()).unwrap();
    let r = sb.cmd(["diff", "a.json", "edited.json"]).expect(2);
    assert!(
        r.stderr.contains("edited.json") && r.stderr.contains("does not match its entries"),
        "{}",
        r.stderr
    );

    doc["trees"][0]["entries"][0]["mode"] = Value::from("rw-r--r--");
    fs::write(sb.join("bad.json"), doc.to_string()).unwrap();
    let r = sb.cmd(["diff", "a.json", "bad.json"]).expect(2);
    assert!(
        r.stderr.contains("trees[0].entries[0].mode"),
        "{}",
        r.stderr
    );

    doc["trees"][0]["entries"][0]["kind"] = Value::from("file");
    fs::write(sb.join("shape.json"), doc.to_string()).unwrap();
    let r = sb.cmd(["diff", "a.json", "shape.json"]).expect(2);
    assert!(
        r.stderr.contains("trees[0].entries[0]") && r.stderr.contains("kind"),
        "{}",
        r.stderr
    );

    sb.cmd(["fingerprint", "tree", "app", "app", "-o", "two.json"])
        .ok();
    let r = sb.cmd(["diff", "a.json", "two.json"]).expect(2);
    assert!(
        r.stderr.contains("different numbers of trees"),
        "{}",
        r.stderr
    );
}
