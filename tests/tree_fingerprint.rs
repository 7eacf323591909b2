//! `vmledger fingerprint tree`: a generated tree of 50,000 files with symlinks (including
//! a loop), a FIFO and an unreadable file; excludes; the golden root-digest vector.

mod common;

use common::{Sandbox, hwfix, schema, treefix};
use serde_json::Value;

fn entry<'a>(tree: &'a Value, path: &str) -> &'a Value {
    tree["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the fingerprint"))
}

#[test]
fn fifty_thousand_files_links_loop_fifo_and_an_unreadable_file() {
    let sb = Sandbox::new();
    let root = sb.join("tree");
    let g = treefix::generate(&root, 50_000);

    // As root (CI): everything is readable, the FIFO is recorded without being opened,
    // symlinks are recorded and never followed (the loop and `up -> ..` are harmless).
    let r = sb
        .cmd(["fingerprint", "tree", "--json", "-o", "fp.json"])
        .arg(&root)
        .ok();
    let doc = r.json();
    schema::assert_valid("tree", &doc);
    let t = &doc["trees"][0];
    assert_eq!(t["complete"], true);
    assert_eq!(t["counts"]["files"], g.files);
    assert_eq!(t["counts"]["symlinks"], g.symlinks);
    assert_eq!(t["counts"]["other"], g.fifos);
    assert_eq!(t["counts"]["dirs"], 101);
    assert_eq!(entry(t, "pipe")["type"], "fifo");
    assert_eq!(entry(t, "links/loop-a")["target"], "loop-b");
    assert_eq!(entry(t, "links/up")["target"], "..");
    assert_eq!(entry(t, "links/absolute")["target"], "/etc/hostname");
    assert_eq!(entry(t, "secret.key")["mode"], "0000");
    let f0 = entry(t, "d000/f00000.txt");
    assert_eq!(f0["size"], 7);
    assert_eq!(f0["sha256"], sha256_hex(b"file 0\n"));
    let paths: Vec<&str> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries are sorted by path");
    // -o wrote the same document.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.join("fp.json")).unwrap()).unwrap();
    assert_eq!(written, doc);
    // Deterministic.
    let again = sb
        .cmd(["fingerprint", "tree", "--json"])
        .arg(&root)
        .ok()
        .json();
    assert_eq!(again["trees"][0]["root"], t["root"]);

    // As an unprivileged user the mode-000 file cannot be read: it is reported by name,
    // the other 50,000 files are still hashed, -o still gets the (incomplete) document,
    // and the exit status is 2.
    hwfix::open_up(&root);
    let dir = sb.join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = dir.join("user.json");
    let r = hwfix::run_as_nobody(
        sb.path(),
        &[
            "fingerprint",
            "tree",
            "-o",
            out.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{}: permission denied", g.unreadable)),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("1 entry could not be read"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("INCOMPLETE"), "{}", r.stdout);
    let partial: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    schema::assert_valid("tree", &partial);
    let pt = &partial["trees"][0];
    assert_eq!(pt["complete"], false);
    assert_eq!(pt["errors"][0]["path"], g.unreadable);
    assert_eq!(pt["counts"]["files"], g.files - 1);

    // With --json and no -o, stdout holds exactly one document: the incomplete
    // fingerprint, the same as -o got; the exit status still says 2.
    let r = hwfix::run_as_nobody(
        sb.path(),
        &["fingerprint", "tree", "--json", root.to_str().unwrap()],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    schema::assert_valid("tree", &doc);
    assert_eq!(doc["format"], "vmledger-tree/v1");
    let jt = &doc["trees"][0];
    assert_eq!(jt["complete"], false);
    assert_eq!(jt["errors"], pt["errors"]);
    assert_eq!(jt["root"], pt["root"]);
    assert!(
        r.stderr
            .contains(&format!("{}: permission denied", g.unreadable)),
        "{}",
        r.stderr
    );
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn excludes_and_several_trees() {
    let sb = Sandbox::new();
    for (d, files) in [
        ("a", &["keep.txt", "skip.log", "cache/x", "sub/cache/y"][..]),
        ("b", &["one"][..]),
    ] {
        for f in files {
            let p = sb.join(d).join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
    }
    let doc = sb
        .cmd([
            "fingerprint",
            "tree",
            "--json",
            "a",
            "b",
            "--exclude",
            "*.log",
            "--exclude",
            "/cache",
        ])
        .ok()
        .json();
    schema::assert_valid("tree", &doc);
    assert_eq!(doc["exclude"], serde_json::json!(["*.log", "/cache"]));
    let paths: Vec<&str> = doc["trees"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["keep.txt", "sub", "sub/cache", "sub/cache/y"]);
    assert_eq!(doc["trees"][1]["path"], "b");
    let r = sb
        .cmd(["fingerprint", "tree", "a", "--exclude", "[z"])
        .expect(2);
    assert!(r.stderr.contains("--exclude"), "{}", r.stderr);
    let r = sb.cmd(["fingerprint", "tree", "a", "nope"]).expect(2);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    let r = sb.cmd(["fingerprint", "tree", "a/keep.txt"]).expect(2);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
}

/// The golden vector in `tests/vectors/tree-v1.json`: a small tree described entry by
/// entry, built on disk with exact modes, must fingerprint to the recorded root digest;
/// the library recomputes the same digest from the recorded entries.
#[test]
fn golden_root_digest_vector() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/tree-v1.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let sb = Sandbox::new();
    let root = sb.join("golden");
    std::fs::create_dir_all(&root).unwrap();
    for e in v["build"].as_array().unwrap() {
        let path = root.join(std::ffi::OsStr::from_bytes(
            &vmledger::fingerprint::tree::unescape(e["path"].as_str().unwrap()).unwrap(),
        ));
        match e["type"].as_str().unwrap() {
            "dir" => std::fs::create_dir_all(&path).unwrap(),
            "file" => std::fs::write(&path, e["content"].as_str().unwrap()).unwrap(),
            "symlink" => std::os::unix::fs::symlink(e["target"].as_str().unwrap(), &path).unwrap(),
            "fifo" => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap(),
            t => panic!("unknown type {t}"),
        }
        if e["type"] != "symlink" {
            let mode = u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let doc = sb
        .cmd(["fingerprint", "tree", "--json", "golden"])
        .ok()
        .json();
    let t = &doc["trees"][0];
    assert_eq!(t["entries"], v["entries"], "entries as specified");
    assert_eq!(t["root"], v["root"], "root digest as specified");
    let entries: Vec<vmledger::fingerprint::tree::Entry> =
        serde_json::from_value(v["entries"].clone()).unwrap();
    assert_eq!(
        vmledger::fingerprint::tree::root_digest(&entries).unwrap(),
        v["root"].as_str().unwrap()
    );
}
