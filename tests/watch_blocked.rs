//! `vmledger watch` through the real binary under `faketime` on a locked instance: an
//! editor's rename-and-replace save is recorded as `config_change_blocked`; with
//! `--restore` changes are undone from the copy taken when the lock began, including a
//! move of the watched directory itself, after which watching goes on.

mod common;

use std::path::Path;

use common::Sandbox;
use common::vendor::{entries_of, faked};
use common::watch::Watch;

const T0: &str = "2030-07-01 00:00:00";
const LOCKED: &str = "2030-07-20 00:00:00";

/// `vmledger watch ARGS` under faketime on the locked sandbox.
fn start_watch(sb: &Sandbox, args: &[&str]) -> Watch {
    let mut c = faked(sb, LOCKED, ["watch"]);
    c.cmd.args(args);
    Watch::spawn(c.cmd)
}

fn locked_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    faked(&sb, T0, ["init", "--serial", "SN-W"]).ok();
    assert_eq!(faked(&sb, LOCKED, ["gate"]).run().code, 3);
    sb
}

/// Save like an editor: write a temporary file beside it, then rename over it.
fn editor_save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn rename_and_replace_save_is_recorded() {
    let sb = locked_sandbox();
    let conf = sb.join("appliance.conf");
    std::fs::write(&conf, "mtu = 1500\n").unwrap();
    let mut w = start_watch(
        &sb,
        &[conf.to_str().unwrap(), "--json", "--exit-after", "1"],
    );
    editor_save(&conf, "mtu = 9000\n");
    w.wait_for("blocked change");
    let doc = w.finish();
    assert_eq!(doc["format"], "vmledger-watch/v1");
    assert_eq!(doc["recorded"], 1);
    let e = entries_of(&sb, "config_change_blocked").pop().unwrap();
    let d = &e["body"]["data"];
    assert_eq!(d["path"], conf.to_str().unwrap());
    assert_eq!(d["kind"], "modified");
    assert_eq!(d["state"], "locked");
    assert_eq!(d["restored"], false);
    // Without --restore the change stays (it is only recorded).
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "mtu = 9000\n");
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn restore_undoes_changes_and_survives_a_directory_move() {
    let sb = locked_sandbox();
    let dir = sb.join("etc-app");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.conf"), "a = 1\n").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b.conf"), "b = 2\n").unwrap();
    let mut w = start_watch(
        &sb,
        &[
            dir.to_str().unwrap(),
            "--restore",
            "--json",
            "--exit-after",
            "3",
        ],
    );
    // 1: an edit inside is put back.
    editor_save(&dir.join("a.conf"), "a = 666\n");
    let l = w.wait_for("blocked change");
    assert!(l.contains("a.conf") && l.contains("restored"), "{l}");
    assert_eq!(
        std::fs::read_to_string(dir.join("a.conf")).unwrap(),
        "a = 1\n"
    );

    // 2: the whole directory moved away: recreated from the copy.
    std::fs::rename(&dir, sb.join("etc-app.old")).unwrap();
    let l = w.wait_for("blocked change");
    assert!(l.contains("removed"), "{l}");
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/b.conf")).unwrap(),
        "b = 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("a.conf")).unwrap(),
        "a = 1\n"
    );

    // 3: still watching the recreated directory: a new file is removed again.
    std::fs::write(dir.join("sub/new.conf"), "x\n").unwrap();
    let l = w.wait_for("blocked change");
    assert!(l.contains("new.conf") && l.contains("created"), "{l}");
    let doc = w.finish();
    assert_eq!(doc["recorded"], 3);
    assert!(!dir.join("sub/new.conf").exists());
    let kinds: Vec<String> = entries_of(&sb, "config_change_blocked")
        .iter()
        .map(|e| e["body"]["data"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["modified", "removed", "created"]);
    for e in entries_of(&sb, "config_change_blocked") {
        assert_eq!(e["body"]["data"]["restored"], true);
    }
    // The copy belongs to the lock episode that began when the countdown ended.
    let locked = entries_of(&sb, "locked").pop().unwrap();
    let e = entries_of(&sb, "config_change_blocked").pop().unwrap();
    assert_eq!(
        e["body"]["data"]["episode"],
        locked["body"]["data"]["blocked_since"]
    );
}

#[test]
fn watch_needs_paths_and_an_instance() {
    let sb = locked_sandbox();
    let r = faked(&sb, LOCKED, ["watch"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("[watch] paths"), "{}", r.stderr);
    let r = faked(&sb, LOCKED, ["watch", "/nonexistent-dir/x.conf"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent-dir/x.conf"), "{}", r.stderr);
}
