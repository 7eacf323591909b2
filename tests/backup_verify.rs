//! `vmledger backup manifest` and `backup verify`: a manifest signed by the host key with
//! the domain and its host ledger head; a copy modified with qemu-io reported with exactly
//! the right byte ranges (exit 1); and what restoring means, from the host ledger, which
//! never changes the exit status.

mod common;

use std::path::{Path, PathBuf};

use common::images::{qemu_compare, qemu_img, qemu_io};
use common::libvirt::{DiskSpec, domain_xml};
use common::{Run, Sandbox, have, schemas};
use serde_json::Value;

const UA: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const MIB: u64 = 1 << 20;

struct Host {
    sb: Sandbox,
    xml: String,
    img: PathBuf,
}

impl Host {
    /// Domain app-a on a.qcow2 ran (its guest wrote), stopped, and its disk was
    /// fingerprinted at rest.
    fn new() -> Host {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.join("run")).unwrap();
        std::fs::write(
            sb.join("config.toml"),
            format!(
                "[hooks]\nlibvirt_run_dir = \"{}\"\n",
                sb.join("run").display()
            ),
        )
        .unwrap();
        let img = sb.join("a.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"]);
        qemu_io(
            &img,
            "qcow2",
            &["write -P 0x11 0 3M", "write -P 0x33 20M 1M"],
        );
        let xml = domain_xml(
            "app-a",
            Some(UA),
            None,
            None,
            &[DiskSpec::qcow2("vda", &img)],
            None,
        );
        let h = Host { sb, xml, img };
        h.hook("prepare", "begin");
        qemu_io(&h.img, "qcow2", &["write -P 0x22 1M 64k"]);
        h.hook("stopped", "end");
        h.hook("release", "end");
        h.cmd(&["hook", "settle", &UA.replace('-', ""), "--wait"])
            .ok();
        h
    }

    fn cmd(&self, args: &[&str]) -> common::Cmd {
        let mut c = self
            .sb
            .cmd(["--config", self.sb.join("config.toml").to_str().unwrap()]);
        for a in args {
            c = c.arg(a);
        }
        c
    }

    fn hook(&self, op: &str, sub: &str) {
        self.cmd(&["hook", "libvirt", "app-a", op, sub, "-"])
            .stdin(self.xml.as_bytes().to_vec())
            .ok();
    }

    fn manifest(&self, img: &Path, out: &Path) -> Value {
        let d = self
            .cmd(&["--json", "backup", "manifest"])
            .arg(img)
            .arg("-o")
            .arg(out)
            .ok()
            .json();
        schemas::assert_valid("backup-manifest-written.schema.json", &d);
        let file: Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
        schemas::assert_valid("backup-manifest.schema.json", &file);
        d
    }

    fn verify(&self, img: &Path, manifest: &Path, code: i32) -> Value {
        let r = self
            .cmd(&["--json", "backup", "verify"])
            .arg(img)
            .arg("--manifest")
            .arg(manifest)
            .expect(code)
            .json();
        schemas::assert_valid("backup-verify.schema.json", &r);
        r
    }

    fn verify_text(&self, img: &Path, manifest: &Path, code: i32) -> Run {
        self.cmd(&["backup", "verify"])
            .arg(img)
            .arg("--manifest")
            .arg(manifest)
            .expect(code)
    }
}

fn ranges(v: &Value) -> Vec<(u64, u64)> {
    v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect()
}

#[test]
fn the_manifest_is_signed_with_the_domain_and_its_host_ledger_head() {
    let h = Host::new();
    let m = h.sb.join("a.manifest.json");
    let d = h.manifest(&h.img, &m);
    assert_eq!(d["domain"]["uuid"], UA);
    assert_eq!(d["domain"]["name"], "app-a");
    let status = h.cmd(&["--json", "hook", "status", "app-a"]).ok().json();
    let head = &status["domains"][0]["head"];
    assert_eq!(d["host_ledger"]["seq"], head["seq"]);
    assert_eq!(d["host_ledger"]["hash"], head["hash"]);
    assert_eq!(d["public_key"], status["host_key"]);
    // The image's content root is the one `fingerprint image` computes.
    let fp =
        h.sb.cmd(["fingerprint", "image", "--json"])
            .arg(&h.img)
            .ok()
            .json();
    assert_eq!(d["image"]["content_root"], fp["content_root"]);
    // A manifest of an image no domain uses names none, or the one given.
    let other = h.sb.join("other.raw");
    std::fs::write(&other, vec![5u8; 1 << 20]).unwrap();
    let d = h.manifest(&other, &h.sb.join("other.json"));
    assert_eq!(d["domain"], Value::Null);
    assert_eq!(d["host_ledger"], Value::Null);
    let d = h
        .cmd(&["--json", "backup", "manifest", "--domain", "app-a"])
        .arg(&other)
        .arg("-o")
        .arg(h.sb.join("other2.json"))
        .ok()
        .json();
    assert_eq!(d["domain"]["name"], "app-a");
    let r = h
        .cmd(&["backup", "manifest", "--domain", "nobody"])
        .arg(&other)
        .arg("-o")
        .arg(h.sb.join("x.json"))
        .expect(2);
    assert!(r.stderr.contains("nobody"), "{}", r.stderr);
}

#[test]
fn a_modified_copy_is_reported_with_the_exact_byte_ranges() {
    let h = Host::new();
    let m = h.sb.join("a.manifest.json");
    h.manifest(&h.img, &m);
    let v = h.verify(&h.img, &m, 0);
    assert_eq!(v["identical"], true);
    assert!(ranges(&v).is_empty());

    // One 4 KiB write inside chunk 1: exactly chunk 1 differs.
    let copy = h.sb.join("restore.qcow2");
    std::fs::copy(&h.img, &copy).unwrap();
    qemu_io(&copy, "qcow2", &["write -P 0x55 5M 4k"]);
    let v = h.verify(&copy, &m, 1);
    assert_eq!(v["identical"], false);
    assert_eq!(ranges(&v), [(4 * MIB, 4 * MIB)]);
    assert_eq!(v["differing_bytes"], 4 * MIB);
    let first = qemu_compare(&h.img, &copy, false).expect("qemu-img sees a difference");
    assert!((4 * MIB..8 * MIB).contains(&first), "{first}");

    // A write across a chunk boundary, and one far away: adjacent chunks merge.
    qemu_io(
        &copy,
        "qcow2",
        &["write -P 0x66 8388000 1000", "write -P 0x77 40M 512"],
    );
    let v = h.verify(&copy, &m, 1);
    assert_eq!(ranges(&v), [(4 * MIB, 8 * MIB), (40 * MIB, 4 * MIB)]);
    assert_eq!(v["differing_bytes"], 12 * MIB);
    let t = h.verify_text(&copy, &m, 1);
    // 1,512 bytes were written; the text says which regions contain them without
    // claiming that 12 MiB changed.
    assert!(
        t.stdout
            .contains("2 regions (12 MiB in all, whole 4 MiB chunks) contain changes"),
        "{}",
        t.stdout
    );
    assert!(!t.stdout.contains("bytes differ"), "{}", t.stdout);
    assert!(
        t.stdout.contains("offset 4194304 length 8388608"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout.contains("offset 41943040 length 4194304"),
        "{}",
        t.stdout
    );

    // A resized copy differs from the old end on.
    let grown = h.sb.join("grown.qcow2");
    std::fs::copy(&h.img, &grown).unwrap();
    qemu_img(&["resize", "-q", grown.to_str().unwrap(), "72M"]);
    let v = h.verify(&grown, &m, 1);
    assert_eq!(ranges(&v), [(64 * MIB, 8 * MIB)]);
}

#[test]
fn the_licensing_impact_follows_the_host_ledger_and_never_changes_the_exit_status() {
    let h = Host::new();
    let m = h.sb.join("a.manifest.json");
    h.manifest(&h.img, &m);
    let backup = h.sb.join("backup.qcow2");
    std::fs::copy(&h.img, &backup).unwrap();

    // Right after the backup: it is the domain's latest state.
    let v = h.verify(&backup, &m, 0);
    let l = &v["licensing"];
    assert_eq!(l["known"], true);
    assert_eq!(l["domain"]["name"], "app-a");
    assert_eq!(l["state"]["source"], "at_rest");
    assert_eq!(l["meaning"], "latest");
    assert_eq!(l["runs_since"], 0);

    // The domain runs again: restoring now would be a duplicate; still exit 0.
    h.hook("prepare", "begin");
    let v = h.verify(&backup, &m, 0);
    assert_eq!(v["licensing"]["meaning"], "duplicate");
    assert_eq!(v["licensing"]["running_now"], true);
    let t = h.verify_text(&backup, &m, 0);
    assert!(t.stdout.contains("is running now"), "{}", t.stdout);
    assert!(t.stdout.contains("duplicate"), "{}", t.stdout);

    // It stopped again (a newer state ran): restoring is a restore; a damaged backup still
    // exits 1, with the same licensing words.
    qemu_io(&h.img, "qcow2", &["write -P 0x44 2M 64k"]);
    h.hook("stopped", "end");
    h.hook("release", "end");
    qemu_io(&backup, "qcow2", &["write -P 0x55 30M 4k"]);
    let v = h.verify(&backup, &m, 1);
    let l = &v["licensing"];
    assert_eq!(l["meaning"], "restore");
    assert_eq!(l["runs_since"], 1);
    assert_eq!(l["running_now"], false);
    assert!(
        l["summary"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("must never run again")),
        "{l}"
    );
    let t = h.verify_text(&backup, &m, 1);
    assert!(
        t.stdout.contains("a restore, which is allowed"),
        "{}",
        t.stdout
    );
}

#[test]
fn bad_manifests_are_errors_naming_the_file() {
    let h = Host::new();
    let m = h.sb.join("a.manifest.json");
    h.manifest(&h.img, &m);
    let doc: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"{not json".to_vec()),
        ("image manifest", {
            let p = h.sb.join("plain.json");
            h.sb.cmd(["fingerprint", "image", "--manifest"])
                .arg(&p)
                .arg(&h.img)
                .ok();
            std::fs::read(&p).unwrap()
        }),
        ("edited", {
            let mut d = doc.clone();
            d["body"]["created_at"] = "2020-01-01T00:00:00.000Z".into();
            serde_json::to_vec(&d).unwrap()
        }),
        ("dropped chunk", {
            let mut d = doc.clone();
            d["chunks"].as_array_mut().unwrap().pop();
            serde_json::to_vec(&d).unwrap()
        }),
    ];
    for (what, bytes) in cases {
        let bad = h.sb.join("bad.json");
        std::fs::write(&bad, bytes).unwrap();
        let r = h
            .cmd(&["backup", "verify"])
            .arg(&h.img)
            .arg("--manifest")
            .arg(&bad)
            .expect(2);
        assert!(r.stderr.contains("bad.json"), "{what}: {}", r.stderr);
    }
    let r = h
        .cmd(&["backup", "verify"])
        .arg(h.sb.join("missing.qcow2"))
        .arg("--manifest")
        .arg(&m)
        .expect(2);
    assert!(r.stderr.contains("missing.qcow2"), "{}", r.stderr);
}

#[test]
fn the_guest_ledger_is_optional_information() {
    let h = Host::new();
    let m = h.sb.join("a.manifest.json");
    h.manifest(&h.img, &m);
    let r = h
        .cmd(&[
            "--json",
            "backup",
            "verify",
            "--guest-ledger",
            "/var/lib/vmledger/ledger.sqlite",
        ])
        .arg(&h.img)
        .arg("--manifest")
        .arg(&m)
        .ok()
        .json();
    schemas::assert_valid("backup-verify.schema.json", &r);
    let g = &r["guest_ledger"];
    assert_eq!(g["path"], "/var/lib/vmledger/ledger.sqlite");
    if !have("virt-cat") {
        assert!(g["error"].as_str().unwrap().contains("virt-cat"), "{g}");
    } else {
        // This image has no file system: virt-cat reports it, the exit status stays 0.
        assert!(g["error"].is_string(), "{g}");
    }
}
