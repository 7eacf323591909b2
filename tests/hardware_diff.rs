//! `vmledger diff` on hardware fingerprints: documents from outside are checked (an edited
//! document, a wrong shape, mixed kinds are errors naming the file), and the policy in the
//! config file is validated.

mod common;

use common::Sandbox;
use common::hwfix;
use serde_json::Value;

fn guest_doc(sb: &Sandbox, name: &str) -> Value {
    let root = sb.join(name);
    hwfix::kvm(&root);
    let r = sb
        .cmd(["fingerprint", "hardware", "--json", "--root"])
        .arg(&root)
        .ok();
    std::fs::write(sb.join(format!("{name}.json")), &r.stdout).unwrap();
    r.json()
}

#[test]
fn edited_or_malformed_documents_are_rejected_with_the_field() {
    let sb = Sandbox::new();
    let mut doc = guest_doc(&sb, "a");
    // Edit a component digest without fixing the overall digest.
    doc["components"][0]["digest"] = Value::from("0".repeat(64));
    std::fs::write(sb.join("edited.json"), doc.to_string()).unwrap();
    let r = sb.cmd(["diff", "a.json", "edited.json"]).expect(2);
    assert!(
        r.stderr.contains("edited.json") && r.stderr.contains("was edited"),
        "{}",
        r.stderr
    );

    let mut doc = guest_doc(&sb, "a");
    doc["components"][1]["class"] = Value::from("firmware");
    std::fs::write(sb.join("shape.json"), doc.to_string()).unwrap();
    let r = sb.cmd(["diff", "a.json", "shape.json"]).expect(2);
    assert!(r.stderr.contains("components[1].class"), "{}", r.stderr);

    std::fs::write(
        sb.join("tree.json"),
        r#"{"format":"vmledger-tree/v1","exclude":[],"trees":[]}"#,
    )
    .unwrap();
    let r = sb.cmd(["diff", "a.json", "tree.json"]).expect(2);
    assert!(r.stderr.contains("cannot compare"), "{}", r.stderr);
}

#[test]
fn policy_errors_in_the_config_name_the_key_and_file() {
    let sb = Sandbox::new();
    guest_doc(&sb, "a");
    for (conf, needle) in [
        ("[hardware]\nstrategy = \"sometimes\"\n", "strategy"),
        (
            "[hardware]\ndeal_breakers = [\"smbios.uid\"]\n",
            "smbios.uid",
        ),
        ("[hardware]\nmatch = \"all\"\n", "match"),
    ] {
        std::fs::write(sb.join("c.toml"), conf).unwrap();
        let r = sb
            .cmd(["diff", "--config", "c.toml", "a.json", "a.json"])
            .expect(2);
        assert!(
            r.stderr.contains("c.toml") && r.stderr.contains(needle),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_changed_machine_id_and_uuid_is_a_different_machine() {
    let sb = Sandbox::new();
    guest_doc(&sb, "a");
    let root = sb.join("b");
    let f = hwfix::kvm(&root);
    f.file("etc/machine-id", "99999999999999999999999999999999\n")
        .secret(
            "sys/devices/virtual/dmi/id/product_uuid",
            "0d2f4e6a-8b1c-4d3e-9f5a-7b9c1d3e5f70\n",
        )
        .secret("sys/devices/virtual/dmi/id/product_serial", "OTHER\n")
        .file(
            "sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio0/net/enp1s0/address",
            "52:54:00:00:00:09\n",
        )
        .file(
            "sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda/serial",
            "OTHERDISK",
        )
        .vmgenid("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a")
        .root_fs("vda1", "1b3c9f5e-8e2a-4d7c-9a3b-1c2d3e4f5a6b")
        .memory_kib(8131540);
    let r = sb
        .cmd(["fingerprint", "hardware", "--json", "--root"])
        .arg(&root)
        .ok();
    std::fs::write(sb.join("b.json"), &r.stdout).unwrap();
    let d = sb
        .cmd(["diff", "--json", "a.json", "b.json"])
        .expect(1)
        .json();
    assert_eq!(d["conclusion"], "different_machine", "{d:#}");
    let mem = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "memory.mib")
        .unwrap();
    assert_eq!(mem["old_value"], "2048");
    assert_eq!(mem["new_value"], "8192");
    assert!(
        mem["explanation"]
            .as_str()
            .unwrap()
            .contains("from \"2048\" to \"8192\"")
    );
}
