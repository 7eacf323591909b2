//! Golden vectors for the content root (`tests/vectors/image-roots.json`, computed with
//! Python's hashlib, independently of vmledger): each image is rebuilt from its
//! description, as a sparse raw file and as qcow2, and must give exactly the committed
//! chunk digests and root.

mod common;

use common::Sandbox;
use common::images::*;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (((i % 251) * 7 + 3) % 251) as u8).collect()
}

#[test]
fn golden_content_roots() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/image-roots.json"),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["chunk_size"], 4194304);
    let sb = Sandbox::new();
    for v in doc["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let size = v["virtual_size"].as_u64().unwrap();
        let raw = sb.join(format!("{name}.raw"));
        match v["fill"].as_str().unwrap() {
            // zeros: a hole, never written
            "zeros" => sparse_raw(&raw, size, &[]),
            "pattern" => std::fs::write(&raw, pattern(size as usize)).unwrap(),
            other => panic!("unknown fill {other}"),
        }
        let manifest = sb.join(format!("{name}.manifest.json"));
        let fp = sb
            .cmd([
                "fingerprint",
                "image",
                "--json",
                "--format",
                "raw",
                "--manifest",
            ])
            .arg(&manifest)
            .arg(&raw)
            .ok()
            .json();
        assert_eq!(fp["content_root"], v["content_root"], "{name}");
        assert_eq!(
            fp["chunk_count"],
            v["chunks"].as_array().unwrap().len(),
            "{name}"
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        assert_eq!(m["chunks"], v["chunks"], "{name}");
        // The same content as qcow2.
        let q = sb.join(format!("{name}.qcow2"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        let fq = sb
            .cmd(["fingerprint", "image", "--json"])
            .arg(&q)
            .ok()
            .json();
        assert_eq!(fq["content_root"], v["content_root"], "{name} as qcow2");
    }
}
