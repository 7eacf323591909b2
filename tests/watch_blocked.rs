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
fn watch_with_nothing_configured_exits_0_and_bad_paths_fail() {
    let sb = locked_sandbox();
    // Nothing configured is not a failure (the systemd unit would restart it forever).
    let r = faked(&sb, LOCKED, ["watch", "--json"]).run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("nothing to watch") && r.stderr.contains("[watch] paths"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["recorded"], 0);
    let conf = sb.join("empty.toml");
    std::fs::write(&conf, "[watch]\nrestore = true\n").unwrap();
    let r = faked(&sb, LOCKED, ["--config"])
        .arg(&conf)
        .arg("watch")
        .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("empty.toml"), "{}", r.stderr);
    let r = faked(&sb, LOCKED, ["watch", "/nonexistent-dir/x.conf"]).run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent-dir/x.conf"), "{}", r.stderr);
}

/// Owner, group and mode of `p`.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn restore_puts_back_owner_group_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let root = nix::unistd::geteuid().is_root();
    let sb = locked_sandbox();
    let dir = sb.join("etc-own");
    std::fs::create_dir(&dir).unwrap();
    let conf = dir.join("app.conf");
    std::fs::write(&conf, "port = 80\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    // As root (CI), the file belongs to another user and group, like a service's config.
    let (uid, gid) = (65534, 65533);
    if root {
        std::os::unix::fs::chown(&conf, Some(uid), Some(gid)).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    } else {
        eprintln!("not root: only the mode is checked (restoring an owner needs root)");
    }
    let before = owner_mode(&conf);
    let dir_before = owner_mode(&dir);
    let mut w = start_watch(
        &sb,
        &[
            dir.to_str().unwrap(),
            "--restore",
            "--json",
            "--exit-after",
            "2",
        ],
    );
    // An editor's save as root: a new file, owned by root, mode 0600.
    let tmp = dir.join(".app.conf.swp");
    std::fs::write(&tmp, "port = 8080\n").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &conf).unwrap();
    let l = w.wait_for("blocked change");
    assert!(l.contains("app.conf") && l.contains("restored"), "{l}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "port = 80\n");
    assert_eq!(owner_mode(&conf), before, "owner, group and mode restored");
    // A change of the mode alone is a modification too, and is put back.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).unwrap();
    let l = w.wait_for("blocked change");
    assert!(l.contains("modified"), "{l}");
    w.finish();
    assert_eq!(owner_mode(&conf), before);
    assert_eq!(owner_mode(&dir), dir_before);
    if root {
        assert_eq!((before.0, before.1), (uid, gid));
    }
}

#[test]
fn changes_made_while_not_watching_are_found_at_start() {
    let sb = locked_sandbox();
    let dir = sb.join("etc-off");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.conf"), "a = 1\n").unwrap();
    std::fs::write(dir.join("b.conf"), "b = 2\n").unwrap();
    std::fs::write(dir.join("sub/c.conf"), "c = 3\n").unwrap();
    // The copy of this lock episode is taken, then nothing watches.
    let r = faked(&sb, LOCKED, ["watch", "--exit-after", "0"])
        .arg(&dir)
        .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("kept a copy"), "{}", r.stderr);
    // Changes while `watch` is not running: an edit, a removal, a new directory with a
    // file, a removed directory.
    std::fs::write(dir.join("a.conf"), "a = 666\n").unwrap();
    std::fs::remove_file(dir.join("b.conf")).unwrap();
    std::fs::create_dir(dir.join("new")).unwrap();
    std::fs::write(dir.join("new/x.conf"), "x\n").unwrap();
    std::fs::remove_dir_all(dir.join("sub")).unwrap();
    let mut w = start_watch(
        &sb,
        &[
            dir.to_str().unwrap(),
            "--restore",
            "--json",
            "--exit-after",
            "4",
        ],
    );
    w.wait_for("blocked change");
    let doc = w.finish();
    assert_eq!(doc["recorded"], 4, "{doc}");
    let found: Vec<(String, String)> = entries_of(&sb, "config_change_blocked")
        .iter()
        .map(|e| {
            let d = &e["body"]["data"];
            assert_eq!(d["at_start"], true, "{d}");
            assert_eq!(d["restored"], true, "{d}");
            let p = d["path"].as_str().unwrap();
            (
                p.strip_prefix(dir.to_str().unwrap()).unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("/a.conf", "modified"),
        ("/b.conf", "removed"),
        ("/new", "created"),
        ("/sub", "removed"),
    ];
    assert_eq!(
        found,
        want.map(|(p, k)| (p.to_string(), k.to_string())),
        "one entry per change, nothing below a created or removed directory"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("a.conf")).unwrap(),
        "a = 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("b.conf")).unwrap(),
        "b = 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/c.conf")).unwrap(),
        "c = 3\n"
    );
    assert!(!dir.join("new").exists());
    // Started again with nothing changed: nothing is recorded.
    let r = faked(&sb, LOCKED, ["watch", "--exit-after", "0"])
        .arg(&dir)
        .run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(entries_of(&sb, "config_change_blocked").len(), 4);
    sb.cmd(["ledger", "verify"]).ok();
}
