//! The golden vector `tests/vectors/hardware-v1.json`: component value digests, the
//! machine-id HMAC, normalisation, the overall digest and the fw_cfg generation ID layout
//! (computed independently from docs/formats/hardware.md).

use serde_json::Value;
use vmledger::fingerprint::hardware::{
    self, Class, Component, Status, guest, machine_id_digest, normalize_mac, normalize_uuid,
    overall_digest, round_memory_mib, value_digest,
};

#[test]
fn hardware_golden_vector() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/hardware-v1.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut comps = Vec::new();
    for c in v["components"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let raw = c["raw"].as_str().unwrap();
        let normalised = match name {
            "smbios.uuid" => normalize_uuid(raw),
            "net.0.mac" => normalize_mac(raw).unwrap(),
            "memory.mib" => {
                let kib = guest::parse_meminfo_total_kib(&raw.replace("MemTotal: ", "MemTotal:"))
                    .unwrap();
                round_memory_mib(kib / 1024).to_string()
            }
            _ => raw.trim().to_string(),
        };
        assert_eq!(normalised, c["normalised"].as_str().unwrap(), "{name}");
        let digest = if name == "machine_id" {
            machine_id_digest(raw)
        } else {
            value_digest(&normalised)
        };
        assert_eq!(digest, c["digest"].as_str().unwrap(), "{name}");
        assert_eq!(
            hardware::class_of(name).as_str(),
            c["class"].as_str().unwrap()
        );
        comps.push(Component {
            name: name.into(),
            class: if c["class"] == "image" {
                Class::Image
            } else {
                Class::Hypervisor
            },
            status: Status::Present,
            digest: Some(digest),
            value: None,
            reason: None,
            source: String::new(),
        });
    }
    assert_eq!(overall_digest(&comps), v["digest"].as_str().unwrap());

    let g = &v["vmgenid_fw_cfg"];
    let bytes = hex::decode(g["bytes_hex"].as_str().unwrap()).unwrap();
    let mut blob = vec![0u8; 4096];
    let off = g["offset"].as_u64().unwrap() as usize;
    blob[off..off + 16].copy_from_slice(&bytes);
    assert_eq!(
        guest::parse_vmgenid_blob(&blob).unwrap(),
        g["uuid"].as_str().unwrap()
    );
}
