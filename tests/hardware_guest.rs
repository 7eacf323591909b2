//! `vmledger fingerprint hardware --root DIR` on fixture guests: KVM/QEMU, VMware,
//! Hyper-V, a container without DMI, and a run as an unprivileged user where the DMI
//! serials are unreadable.

mod common;

use common::hwfix::{self, KVM_DISK_SERIAL, KVM_GENID, KVM_MAC, KVM_UUID};
use common::{Sandbox, schema};
use serde_json::Value;

fn fingerprint(sb: &Sandbox, root: &std::path::Path) -> Value {
    let doc = sb
        .cmd(["fingerprint", "hardware", "--json", "--root"])
        .arg(root)
        .ok()
        .json();
    schema::assert_valid("hardware", &doc);
    doc
}

fn component<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

fn names(doc: &Value) -> Vec<String> {
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn value(doc: &Value, name: &str) -> String {
    component(doc, name).unwrap_or_else(|| panic!("no {name} in {doc:#}"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no value"))
        .to_string()
}

#[test]
fn kvm_guest_reports_every_component_with_class_and_source() {
    let sb = Sandbox::new();
    let root = sb.join("kvm");
    hwfix::kvm(&root);
    let doc = fingerprint(&sb, &root);
    assert_eq!(doc["format"], "vmledger-hardware/v1");
    assert_eq!(doc["source"]["kind"], "guest");
    assert_eq!(
        names(&doc),
        [
            "cpu.count",
            "cpu.model",
            "disk.vda.serial",
            "fs.root.uuid",
            "machine_id",
            "memory.mib",
            "net.enp1s0.mac",
            "smbios.product_name",
            "smbios.product_serial",
            "smbios.sys_vendor",
            "smbios.uuid",
            "virt.type",
            "vmgenid",
        ],
        "loopback, bridge, veth, loop and cdrom devices and empty DMI serials are not components"
    );
    assert_eq!(value(&doc, "virt.type"), "kvm");
    assert_eq!(
        value(&doc, "memory.mib"),
        "2048",
        "2014936 kB seen of a 2 GiB VM"
    );
    assert_eq!(value(&doc, "cpu.count"), "2");
    assert_eq!(component(&doc, "machine_id").unwrap()["class"], "image");
    assert_eq!(component(&doc, "fs.root.uuid").unwrap()["class"], "image");
    let uuid = component(&doc, "smbios.uuid").unwrap();
    assert_eq!(uuid["class"], "hypervisor");
    assert_eq!(uuid["source"], "/sys/class/dmi/id/product_uuid");
    assert!(uuid.get("value").is_none(), "identifiers are never shown");
    // Nothing identifying appears anywhere in the output, raw.
    let text = doc.to_string();
    for secret in [
        KVM_UUID,
        KVM_MAC,
        KVM_DISK_SERIAL,
        KVM_GENID,
        hwfix::MACHINE_ID,
    ] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
    // Deterministic: the same tree gives the same digest.
    assert_eq!(fingerprint(&sb, &root)["digest"], doc["digest"]);
    // Human output names components and the digest.
    let human = sb
        .cmd(["fingerprint", "hardware", "--root"])
        .arg(&root)
        .ok()
        .stdout;
    assert!(human.contains(doc["digest"].as_str().unwrap()), "{human}");
    assert!(human.contains("net.enp1s0.mac"), "{human}");
    assert!(human.contains("(guest "), "{human}");
    // Fingerprint commands read; they never write state.
    assert!(
        !sb.state().exists(),
        "fingerprint hardware created a state dir"
    );
}

#[test]
fn vmware_guest_reads_scsi_vpd_serial_and_skips_placeholder_serials() {
    let sb = Sandbox::new();
    let root = sb.join("vmware");
    hwfix::vmware(&root);
    let doc = fingerprint(&sb, &root);
    assert_eq!(value(&doc, "virt.type"), "vmware");
    assert_eq!(value(&doc, "smbios.sys_vendor"), "VMware, Inc.");
    assert_eq!(value(&doc, "memory.mib"), "8192");
    assert_eq!(value(&doc, "cpu.count"), "4");
    assert_eq!(
        component(&doc, "disk.sda.serial").unwrap()["source"],
        "/sys/block/sda/device/vpd_pg80"
    );
    assert!(component(&doc, "smbios.product_serial").is_some());
    assert!(
        component(&doc, "smbios.board_serial").is_none(),
        "\"None\" is not a serial"
    );
    assert!(component(&doc, "net.ens192.mac").is_some());
    assert!(component(&doc, "vmgenid").is_none());
}

#[test]
fn hyperv_guest() {
    let sb = Sandbox::new();
    let root = sb.join("hyperv");
    hwfix::hyperv(&root);
    let doc = fingerprint(&sb, &root);
    assert_eq!(value(&doc, "virt.type"), "microsoft");
    assert_eq!(value(&doc, "memory.mib"), "4096");
    for n in [
        "smbios.uuid",
        "smbios.product_serial",
        "smbios.board_serial",
        "smbios.chassis_serial",
        "net.eth0.mac",
        "machine_id",
        "fs.root.uuid",
    ] {
        assert!(component(&doc, n).is_some(), "{n} missing: {doc:#}");
    }
    assert!(
        component(&doc, "disk.sda.serial").is_none(),
        "no serial, no component"
    );
}

#[test]
fn container_without_dmi_works() {
    let sb = Sandbox::new();
    let root = sb.join("ctr");
    hwfix::container(&root);
    let doc = fingerprint(&sb, &root);
    assert_eq!(
        names(&doc),
        ["cpu.count", "cpu.model", "memory.mib", "virt.type"]
    );
    assert_eq!(value(&doc, "virt.type"), "container:docker");
}

#[test]
fn unprivileged_run_reports_root_only_components_unavailable() {
    let sb = Sandbox::new();
    let root = sb.join("kvm");
    hwfix::kvm(&root);
    hwfix::open_up(&root);
    for d in walk_dirs(&root) {
        hwfix::open_up(&d);
    }
    let r = hwfix::run_as_nobody(
        sb.path(),
        &[
            "fingerprint",
            "hardware",
            "--json",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    schema::assert_valid("hardware", &doc);
    for n in [
        "smbios.uuid",
        "smbios.product_serial",
        "smbios.board_serial",
        "smbios.chassis_serial",
        "vmgenid",
    ] {
        let c = component(&doc, n).unwrap_or_else(|| panic!("{n} missing: {doc:#}"));
        assert_eq!(c["status"], "unavailable", "{n}: {c}");
        assert!(
            c["reason"].as_str().unwrap().contains("permission denied"),
            "{c}"
        );
        assert!(c.get("digest").is_none());
    }
    // What a normal user can read is still there and equal to the root run's.
    let as_root = fingerprint(&sb, &root);
    for n in [
        "machine_id",
        "net.enp1s0.mac",
        "disk.vda.serial",
        "smbios.sys_vendor",
    ] {
        assert_eq!(
            component(&doc, n).unwrap()["digest"],
            component(&as_root, n).unwrap()["digest"],
            "{n}"
        );
    }
    // The two runs compare as the same machine: unreadable is not a change.
    std::fs::write(sb.join("user.json"), &r.stdout).unwrap();
    std::fs::write(sb.join("root.json"), as_root.to_string()).unwrap();
    let d = sb
        .cmd(["diff", "--json", "root.json", "user.json"])
        .ok()
        .json();
    assert_eq!(d["conclusion"], "same");
    assert_eq!(d["not_compared"].as_array().unwrap().len(), 5);
}

fn walk_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.push(e.path());
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn bad_roots_are_clear_errors() {
    let sb = Sandbox::new();
    let r = sb
        .cmd(["fingerprint", "hardware", "--root", "/nonexistent/guest"])
        .expect(2);
    assert!(r.stderr.contains("/nonexistent/guest"), "{}", r.stderr);
    std::fs::write(sb.join("file"), "x").unwrap();
    let r = sb
        .cmd(["fingerprint", "hardware", "--root", "file"])
        .expect(2);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
    let r = sb
        .cmd([
            "fingerprint",
            "hardware",
            "--root",
            "/",
            "--libvirt-xml",
            "x.xml",
        ])
        .expect(2);
    assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
}

#[test]
fn hostile_sysfs_values_are_bounded_and_never_fatal() {
    let sb = Sandbox::new();
    let root = sb.join("kvm");
    let f = hwfix::kvm(&root);
    // A 5 MiB "serial", a truncated VPD page, binary junk in a MAC and a weird ifname.
    f.file(
        "sys/devices/virtual/dmi/id/product_serial",
        vec![b'A'; 5 << 20],
    );
    f.file(
        "sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda/serial",
        "",
    );
    f.file(
        "sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda/device/vpd_pg80",
        [0u8, 0x80, 0xff],
    );
    f.nic("we ird", "pci0000:00/x", "\u{0}\u{1}junk");
    let doc = fingerprint(&sb, &root);
    let c = component(&doc, "smbios.product_serial").unwrap();
    assert_eq!(c["status"], "unavailable");
    assert!(c["reason"].as_str().unwrap().contains("larger than"), "{c}");
    assert!(component(&doc, "disk.vda.serial").is_none());
}
