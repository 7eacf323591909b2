//! Hardware fingerprints from Proxmox VE VM configs (`/etc/pve/qemu-server/VMID.conf`).

mod common;

use common::{Sandbox, schema};
use serde_json::Value;

const VM100: &str = "#Edge appliance%0A
agent: 1
boot: order=scsi0;ide2;net0
cores: 2
cpu: x86-64-v2-AES
ide2: local:iso/edge-installer.iso,media=cdrom,size=812M
memory: 4096
meta: creation-qemu=8.1.5,ctime=1733312345
name: edge-1
net0: virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1
numa: 0
ostype: l26
scsi0: local-lvm:vm-100-disk-0,iothread=1,size=32G,serial=EDGE0001
scsihw: virtio-scsi-single
smbios1: uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f
sockets: 1
vmgenid: 2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50

[before-upgrade]
cores: 1
net0: virtio=BC:24:11:00:00:00,bridge=vmbr0
snaptime: 1733312000
";

fn fingerprint(sb: &Sandbox, file: &str, conf: &str) -> Value {
    std::fs::write(sb.join(file), conf).unwrap();
    let r = sb
        .cmd(["fingerprint", "hardware", "--json", "--proxmox-conf", file])
        .ok();
    std::fs::write(sb.join(format!("{file}.json")), &r.stdout).unwrap();
    let doc = r.json();
    schema::assert_valid("hardware", &doc);
    doc
}

fn comp<'a>(doc: &'a Value, n: &str) -> &'a Value {
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == n)
        .unwrap_or_else(|| panic!("{n} missing in {doc:#}"))
}

#[test]
fn current_config_is_fingerprinted_snapshots_ignored() {
    let sb = Sandbox::new();
    let doc = fingerprint(&sb, "100.conf", VM100);
    assert_eq!(doc["source"]["kind"], "proxmox");
    assert_eq!(comp(&doc, "cpu.count")["value"], "2");
    assert_eq!(comp(&doc, "memory.mib")["value"], "4096");
    assert_eq!(comp(&doc, "cpu.model")["value"], "x86-64-v2-AES");
    assert_eq!(comp(&doc, "net.net0.mac")["source"], "net0");
    comp(&doc, "disk.scsi0.serial");
    comp(&doc, "disk.scsi0.source");
    comp(&doc, "vmgenid");
    comp(&doc, "smbios.uuid");
    assert!(
        !doc.to_string().contains("ide2"),
        "the CD-ROM is not hardware identity"
    );
}

#[test]
fn proxmox_clone_is_clone_suspected_and_base64_smbios_is_decoded() {
    let sb = Sandbox::new();
    fingerprint(&sb, "100.conf", VM100);
    // `qm clone`: new smbios1 uuid, new vmgenid, new MAC, new volume; the disk serial
    // option is copied along.
    let clone = VM100
        .replace(
            "5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f",
            "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        )
        .replace(
            "2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50",
            "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        )
        .replace("BC:24:11:2A:3B:4C", "BC:24:11:77:88:99")
        .replace("vm-100-disk-0", "vm-101-disk-0");
    fingerprint(&sb, "101.conf", &clone);
    let d = sb
        .cmd(["diff", "--json", "100.conf.json", "101.conf.json"])
        .expect(1)
        .json();
    schema::assert_valid("hardware-diff", &d);
    assert_eq!(d["conclusion"], "clone_suspected", "{d:#}");

    // base64=1 smbios values decode to the same serial as plain ones.
    let plain = fingerprint(
        &sb,
        "a.conf",
        "smbios1: uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f,serial=APP-1,manufacturer=Acme\n",
    );
    let b64 = fingerprint(
        &sb,
        "b.conf",
        "smbios1: base64=1,uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f,serial=QVBQLTE=,manufacturer=QWNtZQ==\n",
    );
    assert_eq!(plain["digest"], b64["digest"]);
    assert_eq!(comp(&b64, "smbios.sys_vendor")["value"], "Acme");
}

#[test]
fn malformed_configs_name_the_file_and_line() {
    let sb = Sandbox::new();
    for (i, (conf, needle)) in [
        ("cores: 2\nthis line has no colon\n", "line 2"),
        ("net0: virtio=BC:24:11:ZZ:3B:4C,bridge=vmbr0\n", "net0"),
        ("memory: plenty\n", "memory"),
        ("smbios1: uuid=not-a-uuid\n", "smbios1"),
        (
            "smbios1: base64=1,uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f,serial=***\n",
            "base64",
        ),
        ("vmgenid: xyz\n", "vmgenid"),
        ("scsi0: ,size=3G\n", "scsi0: no volume"),
    ]
    .iter()
    .enumerate()
    {
        let f = format!("{i}.conf");
        std::fs::write(sb.join(&f), conf).unwrap();
        let r = sb
            .cmd(["fingerprint", "hardware", "--proxmox-conf", &f])
            .expect(2);
        assert!(
            r.stderr.contains(&f) && r.stderr.contains(needle),
            "case {i}: {}",
            r.stderr
        );
    }
    let r = sb
        .cmd(["fingerprint", "hardware", "--proxmox-conf", "missing.conf"])
        .expect(2);
    assert!(r.stderr.contains("missing.conf"), "{}", r.stderr);
}
