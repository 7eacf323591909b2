//! `vmledger diff` for images and manifests: exit 0 when identical and 1 when not, the
//! differing ranges (adjacent chunks merged), and agreement with `qemu-img compare` on
//! identity and on where the first difference is.

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use common::images::*;

const C: u64 = 4 << 20;

fn diff(sb: &Sandbox, a: &Path, b: &Path) -> (i32, serde_json::Value) {
    let r = sb.cmd(["diff", "--json"]).arg(a).arg(b).run();
    assert!(
        r.code == 0 || r.code == 1,
        "diff failed: {}{}",
        r.stdout,
        r.stderr
    );
    let doc = r.json();
    assert_schema("image-diff", &doc);
    (r.code, doc)
}

fn ranges(doc: &serde_json::Value) -> Vec<(u64, u64)> {
    doc["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect()
}

fn manifest(sb: &Sandbox, image: &Path) -> PathBuf {
    let out = sb.join(format!(
        "{}.manifest.json",
        image.file_name().unwrap().to_string_lossy()
    ));
    sb.cmd(["fingerprint", "image", "--manifest"])
        .arg(&out)
        .arg(image)
        .ok();
    out
}

/// 26 MiB (7 chunks, the last partial) of pseudo-random data, as raw.
fn original(sb: &Sandbox) -> PathBuf {
    let p = sb.join("orig.raw");
    std::fs::write(&p, pseudo_random(26 << 20, 5)).unwrap();
    p
}

fn qcow2_of(sb: &Sandbox, raw: &Path, name: &str, compress: bool) -> PathBuf {
    let q = sb.join(name);
    let mut args = vec!["convert", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
    qemu_img(&args);
    q
}

#[test]
fn identical_contents_in_different_formats_exit_0() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let q = qcow2_of(&sb, &raw, "same.qcow2", true);
    assert_eq!(qemu_compare(&raw, &q, false), None);
    let (code, doc) = diff(&sb, &raw, &q);
    assert_eq!(code, 0);
    assert_eq!(doc["identical"], true);
    assert!(ranges(&doc).is_empty());
    let m = manifest(&sb, &raw);
    let (code, doc) = diff(&sb, &m, &q);
    assert_eq!(code, 0);
    assert_eq!(doc["a"]["kind"], "manifest");
    assert_eq!(doc["b"]["kind"], "image");
    let (code, _) = diff(&sb, &q, &m);
    assert_eq!(code, 0);
    let m2 = manifest(&sb, &q);
    assert_eq!(diff(&sb, &m, &m2).0, 0);
    // human text
    let r = sb.cmd(["diff"]).arg(&raw).arg(&q).ok();
    assert!(r.stdout.starts_with("identical"), "{}", r.stdout);
}

#[test]
fn differing_ranges_are_merged_and_agree_with_qemu_img_compare() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let q = qcow2_of(&sb, &raw, "changed.qcow2", false);
    // Chunk 1 and chunk 2 (adjacent) and the partial last chunk change.
    qemu_io(
        &q,
        "qcow2",
        &[
            "write -P 0xa1 5242880 512",
            "write -P 0xa2 12581376 1024",
            "write -P 0xa3 26213888 512",
        ],
    );
    let first = qemu_compare(&raw, &q, false).expect("qemu-img sees a difference");
    let want = vec![(C, 2 * C), (6 * C, (26 << 20) - 6 * C)];
    let m = manifest(&sb, &raw);
    for (a, b) in [(&raw, &q), (&q, &raw), (&m, &q), (&q, &m)] {
        let (code, doc) = diff(&sb, a, b);
        assert_eq!(code, 1, "{} vs {}", a.display(), b.display());
        assert_eq!(doc["identical"], false);
        assert_eq!(doc["ranges_known"], true);
        let r = ranges(&doc);
        assert_eq!(r, want);
        assert_eq!(doc["differing_bytes"], 2 * C + (26 << 20) - 6 * C);
        // qemu-img's first mismatch lies inside our first range.
        assert!(
            r[0].0 <= first && first < r[0].0 + r[0].1,
            "qemu-img: {first}, ranges {r:?}"
        );
    }
    let m2 = manifest(&sb, &q);
    let (code, doc) = diff(&sb, &m, &m2);
    assert_eq!((code, ranges(&doc)), (1, want));
    let r = sb.cmd(["diff"]).arg(&raw).arg(&q).expect(1);
    assert!(
        r.stdout.contains("2 regions (") && r.stdout.contains("offset 4194304"),
        "{}",
        r.stdout
    );
}

#[test]
fn agreement_with_qemu_img_compare_over_many_single_writes() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let base = qcow2_of(&sb, &raw, "base.qcow2", true);
    let m = manifest(&sb, &raw);
    // A write in each chunk at a different place, through an overlay each time.
    for (i, off) in [0u64, 4194304 + 4096, 9 << 20, 16777216 - 512, 25 << 20]
        .into_iter()
        .enumerate()
    {
        let o = sb.join(format!("ov{i}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            o.to_str().unwrap(),
        ]);
        qemu_io(
            &o,
            "qcow2",
            &[&format!("write -P 0x{:02x} {off} 512", 0x30 + i)],
        );
        let first = qemu_compare(&base, &o, false).expect("difference");
        for other in [&raw, &base, &m] {
            let (code, doc) = diff(&sb, other, &o);
            assert_eq!(code, 1);
            let r = ranges(&doc);
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].0, off / C * C);
            assert!(r[0].0 <= first && first < r[0].0 + r[0].1);
        }
    }
    // Writing back the same bytes: qemu-img and vmledger both say identical.
    let o = sb.join("same-bytes.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        o.to_str().unwrap(),
    ]);
    let data = std::fs::read(&raw).unwrap();
    let chunk = sb.join("chunk.bin");
    std::fs::write(&chunk, &data[8 << 20..(8 << 20) + 65536]).unwrap();
    let cmd = format!("write -s {} 8M 64k", chunk.display());
    qemu_io(&o, "qcow2", &[&cmd]);
    assert!(
        std::fs::metadata(&o).unwrap().len() > 65536,
        "the overlay holds data"
    );
    assert_eq!(qemu_compare(&base, &o, false), None);
    assert_eq!(diff(&sb, &m, &o).0, 0);
}

#[test]
fn different_sizes_differ_from_the_shorter_end() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let longer = sb.join("longer.raw");
    let mut data = std::fs::read(&raw).unwrap();
    data.resize(40 << 20, 0);
    std::fs::write(&longer, &data).unwrap();
    // qemu-img compare -s (strict) says they differ; so does vmledger.
    assert!(qemu_compare(&raw, &longer, true).is_some());
    let (code, doc) = diff(&sb, &raw, &longer);
    assert_eq!(code, 1);
    // The shorter image's partial last chunk differs from the longer one's full chunk.
    assert_eq!(ranges(&doc), vec![(6 * C, (40 << 20) - 6 * C)]);
}

#[test]
fn fingerprints_without_chunks_tell_identity_only() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let fp = sb.join("fp.json");
    let out = sb.cmd(["fingerprint", "image", "--json"]).arg(&raw).ok();
    std::fs::write(&fp, &out.stdout).unwrap();
    let q = qcow2_of(&sb, &raw, "x.qcow2", false);
    assert_eq!(diff(&sb, &fp, &q).0, 0);
    qemu_io(&q, "qcow2", &["write -P 1 0 512"]);
    let (code, doc) = diff(&sb, &fp, &q);
    assert_eq!(code, 1);
    assert_eq!(doc["ranges_known"], false);
    assert_eq!(doc["a"]["kind"], "fingerprint");
}

#[test]
fn bad_manifests_and_mismatched_kinds_are_errors() {
    let sb = Sandbox::new();
    let raw = original(&sb);
    let m = manifest(&sb, &raw);
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    doc["chunks"][2] = serde_json::json!("00".repeat(32));
    let bad = sb.join("bad.manifest.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let r = sb.cmd(["diff"]).arg(&bad).arg(&raw).expect(2);
    assert!(
        r.stderr.contains("bad.manifest.json") && r.stderr.contains("content_root"),
        "{}",
        r.stderr
    );
    doc["chunks"][2] = serde_json::json!("not hex");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let r = sb.cmd(["diff"]).arg(&raw).arg(&bad).expect(2);
    assert!(
        r.stderr.contains("bad.manifest.json") && r.stderr.contains("hex"),
        "{}",
        r.stderr
    );
    std::fs::write(
        &bad,
        b"{\"format\": \"vmledger-manifest/v1\", \"chunks\": [",
    )
    .unwrap();
    let r = sb.cmd(["diff"]).arg(&raw).arg(&bad).expect(2);
    assert!(r.stderr.contains("bad.manifest.json"), "{}", r.stderr);
    // A hardware fingerprint cannot be compared with an image.
    let hw = sb.join("hw.json");
    std::fs::write(&hw, br#"{"format": "vmledger-hardware/v1"}"#).unwrap();
    let r = sb.cmd(["diff"]).arg(&raw).arg(&hw).expect(2);
    assert!(r.stderr.contains("cannot compare"), "{}", r.stderr);
}

#[test]
fn raw_images_that_begin_with_a_brace_are_images() {
    let sb = Sandbox::new();
    // A raw disk whose first bytes happen to be `{` (not JSON), one that is valid JSON
    // without a `format` member padded to a sector, and a copy of each with a change.
    let mut brace = b"{ not json at all   ".to_vec();
    brace.resize(1 << 20, 0);
    brace.extend(pseudo_random(7 << 20, 21));
    let mut padded = br#"{"disk": 1}"#.to_vec();
    padded.resize(4 << 20, b' ');
    padded.extend(pseudo_random(2 << 20, 22));
    for (name, data) in [("brace.raw", brace), ("padded.raw", padded)] {
        let a = sb.join(name);
        std::fs::write(&a, &data).unwrap();
        let b = sb.join(format!("changed-{name}"));
        let mut changed = data.clone();
        let at = data.len() - 1000;
        changed[at] ^= 0xff;
        std::fs::write(&b, &changed).unwrap();
        let (code, doc) = diff(&sb, &a, &a);
        assert_eq!(code, 0, "{name}");
        assert_eq!(doc["a"]["kind"], "image");
        assert_eq!(doc["a"]["content_root"], raw_root(&a).as_str());
        let (code, doc) = diff(&sb, &a, &b);
        assert_eq!(code, 1, "{name}");
        let first = qemu_compare(&a, &b, false).expect("qemu-img sees a difference");
        let r = ranges(&doc);
        assert_eq!(r.len(), 1, "{name}: {r:?}");
        assert!(
            r[0].0 <= first && first < r[0].0 + r[0].1,
            "{name}: {r:?} vs {first}"
        );
        // Against its own manifest too.
        let m = manifest(&sb, &a);
        assert_eq!(diff(&sb, &m, &a).0, 0, "{name}");
    }
    // A damaged vmledger document still gets a parse error naming the file, not an
    // image error.
    let damaged = sb.join("damaged.json");
    std::fs::write(&damaged, br#"{"format": "vmledger-tree/v1", "trees": [ "#).unwrap();
    let r = sb.cmd(["diff"]).arg(&damaged).arg(&damaged).expect(2);
    assert!(
        r.stderr.contains("damaged.json") && r.stderr.contains("does not parse"),
        "{}",
        r.stderr
    );
}
