//! Hardware fingerprints from real libvirt domain XML: domains are defined on libvirt's
//! daemonless `test:///default` driver and read back with `virsh dumpxml`, as a hook
//! receives them. A virt-clone style copy, a changed generation ID and an added NIC are
//! each told apart by `vmledger diff`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::hwfix::{self, KVM_GENID, KVM_MAC, KVM_UUID, kvm_domain_xml};
use common::{Sandbox, require, schema};
use serde_json::Value;

/// Define `xml` on the test driver and return what `virsh dumpxml` prints for it.
fn virsh_roundtrip(sb: &Sandbox, name: &str, xml: &str) -> String {
    require("virsh");
    let src = sb.join(format!("{name}.def.xml"));
    std::fs::write(&src, xml).unwrap();
    let out = Command::new("virsh")
        .args(["-q", "-c", "test:///default"])
        .arg(format!("define {}; dumpxml {name}", src.display()))
        .output()
        .expect("run virsh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "virsh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text.find("<domain").expect("dumpxml printed a domain");
    let end = text.rfind("</domain>").expect("domain end") + "</domain>".len();
    text[start..end].to_string()
}

/// Fingerprint a domain's dumped XML into `<name>.json`; returns its path and document.
fn fingerprint(sb: &Sandbox, name: &str, xml: &str) -> (PathBuf, Value) {
    let dumped = virsh_roundtrip(sb, name, xml);
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let file = sb.join(format!("{name}-{n}.xml"));
    std::fs::write(&file, &dumped).unwrap();
    let r = sb
        .cmd(["fingerprint", "hardware", "--json", "--libvirt-xml"])
        .arg(&file)
        .ok();
    let doc = r.json();
    schema::assert_valid("hardware", &doc);
    assert_eq!(doc["source"]["kind"], "libvirt");
    let out = sb.join(format!("{name}-{n}.json"));
    std::fs::write(&out, &r.stdout).unwrap();
    (out, doc)
}

fn diff(sb: &Sandbox, a: &Path, b: &Path, code: i32) -> Value {
    let d = sb.cmd(["diff", "--json"]).arg(a).arg(b).expect(code).json();
    schema::assert_valid("hardware-diff", &d);
    d
}

fn changed(d: &Value) -> Vec<String> {
    d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["change"].as_str().unwrap(),
                c["component"].as_str().unwrap()
            )
        })
        .collect()
}

const CLONE_UUID: &str = "0d2f4e6a-8b1c-4d3e-9f5a-7b9c1d3e5f70";
const CLONE_MAC: &str = "52:54:00:3c:4d:5e";

#[test]
fn virt_clone_style_copy_is_clone_suspected() {
    let sb = Sandbox::new();
    let (orig, doc) = fingerprint(
        &sb,
        "app",
        &kvm_domain_xml(
            "app",
            KVM_UUID,
            KVM_GENID,
            &[KVM_MAC],
            "/var/lib/libvirt/images/app.qcow2",
        ),
    );
    for n in [
        "smbios.uuid",
        "vmgenid",
        "net.0.mac",
        "disk.vda.serial",
        "disk.vda.source",
        "memory.mib",
    ] {
        assert!(
            doc["components"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == n),
            "{n} missing: {doc:#}"
        );
    }
    // virt-clone: new name, uuid, MACs and disk file; disk serial and genid copied along.
    let (copy, _) = fingerprint(
        &sb,
        "app-clone",
        &kvm_domain_xml(
            "app-clone",
            CLONE_UUID,
            KVM_GENID,
            &[CLONE_MAC],
            "/var/lib/libvirt/images/app-clone.qcow2",
        ),
    );
    let d = diff(&sb, &orig, &copy, 1);
    assert_eq!(d["conclusion"], "clone_suspected", "{d:#}");
    assert_eq!(
        changed(&d),
        [
            "changed:disk.vda.source",
            "changed:net.0.mac",
            "changed:smbios.uuid"
        ]
    );
    let why = d["explanation"].as_str().unwrap();
    assert!(
        why.contains("SMBIOS UUID") && why.contains("serial number of disk vda"),
        "{why}"
    );
    // Human output says the same in words.
    let text = sb.cmd(["diff"]).arg(&orig).arg(&copy).expect(1).stdout;
    assert!(text.contains("conclusion: clone_suspected"), "{text}");
    assert!(
        text.contains("~ smbios.uuid: SMBIOS system UUID (assigned by the hypervisor) changed"),
        "{text}"
    );
}

#[test]
fn changed_genid_alone_is_snapshot_or_clone() {
    let sb = Sandbox::new();
    let xml = |genid: &str| kvm_domain_xml("app", KVM_UUID, genid, &[KVM_MAC], "/img/app.qcow2");
    let (a, _) = fingerprint(&sb, "app", &xml(KVM_GENID));
    let (b, _) = fingerprint(&sb, "app", &xml("2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50"));
    let d = diff(&sb, &a, &b, 1);
    assert_eq!(d["conclusion"], "snapshot_or_clone", "{d:#}");
    assert_eq!(changed(&d), ["changed:vmgenid"]);
    // and identical XML is `same`, exit 0
    let d = diff(&sb, &a, &a, 0);
    assert_eq!(d["conclusion"], "same");
}

#[test]
fn added_nic_is_hardware_changed_under_most_and_different_under_all() {
    let sb = Sandbox::new();
    let (a, _) = fingerprint(
        &sb,
        "app",
        &kvm_domain_xml("app", KVM_UUID, KVM_GENID, &[KVM_MAC], "/img/app.qcow2"),
    );
    let (b, _) = fingerprint(
        &sb,
        "app",
        &kvm_domain_xml(
            "app",
            KVM_UUID,
            KVM_GENID,
            &[KVM_MAC, "52:54:00:aa:bb:02"],
            "/img/app.qcow2",
        ),
    );
    let d = diff(&sb, &a, &b, 1);
    assert_eq!(d["conclusion"], "hardware_changed", "{d:#}");
    assert_eq!(changed(&d), ["added:net.1.mac"]);
    assert_eq!(d["policy"]["strategy"], "most");
    assert_eq!(d["policy"]["satisfied"], true);

    std::fs::write(sb.join("all.toml"), "[hardware]\nstrategy = \"all\"\n").unwrap();
    let d = sb
        .cmd(["diff", "--json", "--config", "all.toml"])
        .arg(&a)
        .arg(&b)
        .expect(1)
        .json();
    assert_eq!(d["conclusion"], "different_machine", "{d:#}");
    assert_eq!(d["policy"]["satisfied"], false);

    // A MAC deal-breaker: changing the first NIC's MAC breaks the deal even under `any`.
    std::fs::write(
        sb.join("mac.toml"),
        "[hardware]\nstrategy = \"any\"\ndeal_breakers = [\"net.*.mac\"]\n",
    )
    .unwrap();
    let (c, _) = fingerprint(
        &sb,
        "app",
        &kvm_domain_xml(
            "app",
            KVM_UUID,
            KVM_GENID,
            &["52:54:00:99:99:99"],
            "/img/app.qcow2",
        ),
    );
    let d = sb
        .cmd(["diff", "--json", "--config", "mac.toml"])
        .arg(&a)
        .arg(&c)
        .expect(1)
        .json();
    assert_eq!(d["conclusion"], "different_machine", "{d:#}");
    assert_eq!(
        d["policy"]["broken_deal_breakers"],
        serde_json::json!(["net.0.mac"])
    );
}

#[test]
fn host_and_guest_agree_on_shared_components() {
    // The hook's view (libvirt XML) and the guest's view of the same VM give the same
    // digests for what both can see, including the byte-swapped fw_cfg generation ID.
    let sb = Sandbox::new();
    let (_, host) = fingerprint(
        &sb,
        "app",
        &kvm_domain_xml("app", KVM_UUID, KVM_GENID, &[KVM_MAC], "/img/app.qcow2"),
    );
    let root = sb.join("guest");
    hwfix::kvm(&root);
    let guest = sb
        .cmd(["fingerprint", "hardware", "--json", "--root"])
        .arg(&root)
        .ok()
        .json();
    let digest = |doc: &Value, n: &str| {
        doc["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))["digest"]
            .clone()
    };
    for (h, g) in [
        ("smbios.uuid", "smbios.uuid"),
        ("vmgenid", "vmgenid"),
        ("smbios.product_serial", "smbios.product_serial"),
        ("disk.vda.serial", "disk.vda.serial"),
        ("memory.mib", "memory.mib"),
        ("cpu.count", "cpu.count"),
        ("virt.type", "virt.type"),
        ("net.0.mac", "net.enp1s0.mac"),
    ] {
        assert_eq!(digest(&host, h), digest(&guest, g), "{h} vs {g}");
    }
}

#[test]
fn domain_xml_on_stdin_as_a_hook_gets_it() {
    let sb = Sandbox::new();
    let xml = virsh_roundtrip(
        &sb,
        "app",
        &kvm_domain_xml("app", KVM_UUID, KVM_GENID, &[KVM_MAC], "/img/app.qcow2"),
    );
    let from_stdin = sb
        .cmd(["fingerprint", "hardware", "--json", "--libvirt-xml", "-"])
        .stdin(xml.clone())
        .ok()
        .json();
    std::fs::write(sb.join("d.xml"), &xml).unwrap();
    let from_file = sb
        .cmd([
            "fingerprint",
            "hardware",
            "--json",
            "--libvirt-xml",
            "d.xml",
        ])
        .ok()
        .json();
    assert_eq!(from_stdin["digest"], from_file["digest"]);
    assert_eq!(from_stdin["source"]["path"], "-");
}

#[test]
fn malformed_or_hostile_xml_is_a_clear_error() {
    let sb = Sandbox::new();
    let cases: &[(&str, &str)] = &[
        (
            "<domain type='kvm'><name>a</name><uuid>1234</uuid></domain>",
            "/domain/uuid",
        ),
        (
            "<domain><name>a</name><devices><interface type='network'><mac address='52:54:zz:00:00:01'/></interface></devices></domain>",
            "/domain/devices/interface[1]/mac: attribute `address`",
        ),
        (
            "<domain><name>a</name><memory unit='furlongs'>3</memory></domain>",
            "/domain/memory",
        ),
        (
            "<domain><name>a</name><vcpu>many</vcpu></domain>",
            "/domain/vcpu",
        ),
        (
            "<domain><name>a</name><devices><disk type='file'><target bus='virtio'/></disk></devices></domain>",
            "disk[1]/target: attribute `dev`",
        ),
        ("<domain><name>a</name>", "malformed libvirt domain XML"),
        ("<network><name>a</name></network>", "expected <domain>"),
        (
            "<!DOCTYPE lol [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;'>]><domain><name>&b;</name></domain>",
            "malformed libvirt domain XML",
        ),
    ];
    for (i, (xml, needle)) in cases.iter().enumerate() {
        let f = format!("bad{i}.xml");
        std::fs::write(sb.join(&f), xml).unwrap();
        let r = sb
            .cmd(["fingerprint", "hardware", "--libvirt-xml", &f])
            .expect(2);
        assert!(r.stderr.contains(&f), "case {i}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "case {i}: wanted {needle:?} in {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // Oversized input is refused without reading it all.
    let big = format!(
        "<domain><name>a</name><description>{}</description></domain>",
        "x".repeat(5 << 20)
    );
    let r = sb
        .cmd(["fingerprint", "hardware", "--libvirt-xml", "-"])
        .stdin(big)
        .expect(2);
    assert!(r.stderr.contains("larger than"), "{}", r.stderr);
}
