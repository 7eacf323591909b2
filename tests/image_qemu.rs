//! Image fingerprints against the real peer: images built with `qemu-img` and `qemu-io`
//! (cluster sizes 512 B to 2 MiB, deflate and zstd compression, extended L2 entries,
//! backing chains with writes into each overlay, external data files, version 2,
//! preallocation) must have the content root of their `qemu-img convert -O raw` output,
//! computed independently of vmledger.

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use common::images::*;

/// A raw image of 20 MiB + 512 B (not a multiple of the chunk or of most cluster sizes):
/// random data, compressible data, a hole, data in the partial last chunk.
fn base_raw(sb: &Sandbox) -> PathBuf {
    let p = sb.join("base.raw");
    let size = 20 * MIB + 512;
    let random = pseudo_random(3 * MIB as usize, 7);
    let text = text_like(5 * MIB as usize, 9);
    let tail = pseudo_random(70_000, 11);
    sparse_raw(
        &p,
        size,
        &[
            (0, &random[..]),
            (6 * MIB, &text[..]),
            (size - 70_000, &tail[..]),
        ],
    );
    p
}

fn fingerprint(sb: &Sandbox, path: &Path) -> serde_json::Value {
    sb.cmd(["fingerprint", "image", "--json"])
        .arg(path)
        .ok()
        .json()
}

fn root(sb: &Sandbox, path: &Path) -> String {
    fingerprint(sb, path)["content_root"]
        .as_str()
        .expect("content_root")
        .to_string()
}

/// `qemu-img convert -O raw`, then the independent root of the result.
fn converted_root(sb: &Sandbox, image: &Path) -> String {
    let out = sb.join(format!(
        "{}.converted.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    // In the sandbox: QEMU resolves relative data file names against its cwd.
    qemu_img_in(
        sb.path(),
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let r = raw_root(&out);
    std::fs::remove_file(&out).unwrap();
    r
}

#[test]
fn raw_and_sparse_raw_match_the_independent_root() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let want = raw_root(&raw);
    let doc = fingerprint(&sb, &raw);
    assert_eq!(doc["content_root"], want.as_str());
    assert_eq!(doc["image_format"], "raw");
    assert_eq!(doc["virtual_size"], 20 * MIB + 512);
    assert_eq!(doc["chunk_count"], 6);
    // Holes are not read: much less than the virtual size was read.
    assert!(doc["allocated_bytes"].as_u64().unwrap() < 10 * MIB);
    // The same bytes written densely (no holes) give the same root.
    let dense = sb.join("dense.raw");
    std::fs::write(&dense, std::fs::read(&raw).unwrap()).unwrap();
    assert_eq!(root(&sb, &dense), want);
    assert_eq!(
        fingerprint(&sb, &dense)["allocated_bytes"],
        20 * MIB + 512,
        "a dense file is read in full"
    );
}

#[test]
fn every_cluster_size_gives_the_same_root() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let want = raw_root(&raw);
    for cs in ["512", "4096", "65536", "1M", "2M"] {
        let q = sb.join(format!("cs{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        let doc = fingerprint(&sb, &q);
        assert_eq!(doc["content_root"], want.as_str(), "cluster size {cs}");
        assert_eq!(doc["image_format"], "qcow2");
        assert_eq!(doc["virtual_size"], 20 * MIB + 512);
        assert_eq!(converted_root(&sb, &q), want);
    }
}

#[test]
fn compressed_images_in_deflate_and_zstd() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let want = raw_root(&raw);
    for (ct, cs) in [
        ("zlib", "65536"),
        ("zstd", "65536"),
        ("zlib", "4096"),
        ("zstd", "2M"),
        ("zlib", "512"),
    ] {
        let q = sb.join(format!("c-{ct}-{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ct},cluster_size={cs}"),
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        // Really compressed: smaller than the same image uncompressed.
        let plain = sb.join(format!("p-{cs}.qcow2"));
        let plain_opts = format!("cluster_size={cs}");
        qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            "-o",
            &plain_opts,
            raw.to_str().unwrap(),
            plain.to_str().unwrap(),
        ]);
        let c_len = std::fs::metadata(&q).unwrap().len();
        let p_len = std::fs::metadata(&plain).unwrap().len();
        assert!(
            c_len < p_len,
            "{ct} {cs} not compressed: {c_len} >= {p_len}"
        );
        assert_eq!(root(&sb, &q), want, "{ct} cluster size {cs}");
        assert_eq!(converted_root(&sb, &q), want);
    }
}

#[test]
fn extended_l2_with_subcluster_writes() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    for cs in ["16384", "65536", "2M"] {
        let q = sb.join(format!("ext-{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            "-o",
            &format!("extended_l2=on,cluster_size={cs}"),
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        assert_eq!(root(&sb, &q), raw_root(&raw), "cluster size {cs}");
        // Sub-cluster writes and zeroes in an overlay with extended L2 entries.
        let o = sb.join(format!("ext-{cs}-overlay.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("extended_l2=on,cluster_size={cs}"),
            "-b",
            q.file_name().unwrap().to_str().unwrap(),
            "-F",
            "qcow2",
            o.to_str().unwrap(),
        ]);
        qemu_io(
            &o,
            "qcow2",
            &[
                "write -P 0x5a 1536 1024",
                "write -z 65536 4096",
                "write -P 0x11 6291456 8192",
                "write -z 20971008 512",
            ],
        );
        let doc = fingerprint(&sb, &o);
        assert_eq!(
            doc["content_root"],
            converted_root(&sb, &o).as_str(),
            "overlay, {cs}"
        );
        assert_eq!(doc["backing_chain"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn three_deep_chain_with_writes_into_each_overlay() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let base = sb.join("chain0.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let mut below = base.clone();
    let writes = [
        [
            "write -P 0x01 0 4096",
            "write -z 6291456 65536",
            "write -P 0x02 4194000 1000",
        ],
        [
            "write -P 0x03 8388608 1048576",
            "write -P 0x04 512 512",
            "discard 0 65536",
        ],
        [
            "write -P 0x05 20971000 1024",
            "write -z 0 1048576",
            "write -P 0x06 3145728 4096",
        ],
    ];
    for (i, w) in writes.iter().enumerate() {
        let o = sb.join(format!("chain{}.qcow2", i + 1));
        // Relative backing names resolve against the overlay's directory.
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            below.file_name().unwrap().to_str().unwrap(),
            "-F",
            "qcow2",
            o.to_str().unwrap(),
        ]);
        qemu_io(&o, "qcow2", w);
        below = o;
    }
    let doc = fingerprint(&sb, &below);
    let chain: Vec<&str> = doc["backing_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert!(chain[0].ends_with("chain2.qcow2") && chain[2].ends_with("chain0.qcow2"));
    assert_eq!(doc["content_root"], converted_root(&sb, &below).as_str());
    // Flattening the chain does not change the root.
    let flat = sb.join("flat.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        below.to_str().unwrap(),
        flat.to_str().unwrap(),
    ]);
    assert_eq!(root(&sb, &flat), doc["content_root"].as_str().unwrap());
}

#[test]
fn a_backing_file_shorter_than_its_overlay_reads_as_zeros_past_its_end() {
    let sb = Sandbox::new();
    let small = sb.join("small.raw");
    sparse_raw(&small, 3 * MIB, &[(0, &pseudo_random(3 * MIB as usize, 3))]);
    let o = sb.join("grown.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "small.raw",
        "-F",
        "raw",
        o.to_str().unwrap(),
        "9M",
    ]);
    qemu_io(&o, "qcow2", &["write -P 0x77 8M 4096"]);
    assert_eq!(root(&sb, &o), converted_root(&sb, &o));
}

#[test]
fn external_data_files_v2_images_and_preallocation() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let want = raw_root(&raw);
    // External data file (and the raw flavour of it).
    for (name, opts) in [
        ("ext-data.qcow2", "data_file=ext-data.bin"),
        ("ext-raw.qcow2", "data_file=ext-raw.bin,data_file_raw=on"),
    ] {
        let q = sb.join(name);
        // Relative data file names resolve against the image's directory.
        qemu_img_in(
            sb.path(),
            &["create", "-q", "-f", "qcow2", "-o", opts, name, "20971520"],
        );
        qemu_io_in(
            sb.path(),
            &q,
            "qcow2",
            &[
                "write -P 0x33 0 1M",
                "write -P 0x44 5M 64k",
                "write -z 5M 4k",
            ],
        );
        let doc = fingerprint(&sb, &q);
        assert_eq!(
            doc["content_root"],
            converted_root(&sb, &q).as_str(),
            "{name}"
        );
    }
    // Version 2 (compat=0.10) images.
    let v2 = sb.join("v2.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        raw.to_str().unwrap(),
        v2.to_str().unwrap(),
    ]);
    assert_eq!(read_be32(&v2, hdr::VERSION), 2);
    assert_eq!(root(&sb, &v2), want);
    // Metadata preallocation: allocated clusters that were never written read as zeros.
    let pre = sb.join("prealloc.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        pre.to_str().unwrap(),
        "12M",
    ]);
    qemu_io(&pre, "qcow2", &["write -P 0x99 4M 8k"]);
    assert_eq!(root(&sb, &pre), converted_root(&sb, &pre));
}

#[test]
fn format_flag_and_empty_images() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let q = sb.join("f.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    // --format raw reads the qcow2 file's own bytes.
    let as_raw = sb
        .cmd(["fingerprint", "image", "--json", "--format", "raw"])
        .arg(&q)
        .ok()
        .json();
    assert_eq!(as_raw["image_format"], "raw");
    assert_eq!(as_raw["content_root"], raw_root(&q).as_str());
    // --format qcow2 on a raw file is refused.
    let r = sb
        .cmd(["fingerprint", "image", "--format", "qcow2"])
        .arg(&raw)
        .expect(2);
    assert!(
        r.stderr.contains("base.raw") && r.stderr.contains("qcow2 magic"),
        "{}",
        r.stderr
    );
    // A zero-size qcow2: no chunks, the root of nothing.
    let z = sb.join("zero.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", z.to_str().unwrap(), "0"]);
    let doc = fingerprint(&sb, &z);
    assert_eq!(doc["chunk_count"], 0);
    assert_eq!(
        doc["content_root"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn compressed_clusters_with_the_largest_sector_counts() {
    // Sector counts may overstate the compressed size (decompression stops at a full
    // cluster). With every count at its maximum, a chunk's compressed bytes exceed what
    // one job gathers, so the reader decompresses part of them itself.
    let sb = Sandbox::new();
    let raw = sb.join("t.raw");
    std::fs::write(&raw, text_like(12 << 20, 21)).unwrap();
    let q = sb.join("generous.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let mut patched = 0;
    for guest in (0..12u64 << 20).step_by(65536) {
        let at = l2_entry_offset(&q, guest);
        let e = read_be64(&q, at);
        if e & (1 << 62) != 0 {
            write_be64(&q, at, e | (0xff << 54));
            patched += 1;
        }
    }
    assert!(patched > 150, "only {patched} compressed clusters");
    let len = std::fs::metadata(&q).unwrap().len();
    truncate(&q, len + (256 << 10));
    assert_eq!(root(&sb, &q), raw_root(&raw));
}

#[test]
fn small_compressed_clusters_of_very_compressible_data() {
    // 512-byte clusters compressed to a few dozen bytes each: the stated compressed sizes
    // (whole sectors) add up to several times the file, which is legitimate.
    let sb = Sandbox::new();
    let raw = sb.join("t.raw");
    std::fs::write(&raw, text_like(8 << 20, 5)).unwrap();
    for ct in ["zlib", "zstd"] {
        let q = sb.join(format!("small-{ct}.qcow2"));
        let opts = format!("cluster_size=512,compression_type={ct}");
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &opts,
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        assert_eq!(root(&sb, &q), raw_root(&raw), "{ct}");
    }
}

#[test]
fn a_dirty_image_is_read_like_qemu_reads_it() {
    // The dirty bit (lazy refcounts, not closed cleanly) concerns refcounts only.
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let q = sb.join("dirty.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    write_be64(&q, hdr::INCOMPATIBLE, 1);
    assert_eq!(root(&sb, &q), raw_root(&raw));
    assert_eq!(converted_root(&sb, &q), raw_root(&raw));
}

/// Overlays whose header does not name the backing file's format (made by QEMU before
/// 5.2 without `-F`; QEMU now refuses to create them, so the extension is removed from the
/// header after the fact, or the header is written from scratch): the backing format is
/// probed, raw or qcow2, and the root is still that of `qemu-img convert -O raw`.
#[test]
fn backing_formats_are_probed_when_the_header_does_not_name_them() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let base_q = sb.join("probe-base.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        base_q.to_str().unwrap(),
    ]);
    let size = std::fs::metadata(&raw).unwrap().len();
    // 1. qemu-img overlays with writes, over a raw and over a qcow2 backing file, and a
    //    second overlay over the first: every link's format left to probing.
    let mut tops = Vec::new();
    for (backing, fmt) in [("base.raw", "raw"), ("probe-base.qcow2", "qcow2")] {
        let o = sb.join(format!("over-{fmt}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            fmt,
            o.to_str().unwrap(),
        ]);
        qemu_io(
            &o,
            "qcow2",
            &[
                "write -P 0x5a 1M 64k",
                "write -z 6M 128k",
                "write -P 0x33 20M 512",
            ],
        );
        let o2 = sb.join(format!("over2-{fmt}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            o.file_name().unwrap().to_str().unwrap(),
            "-F",
            "qcow2",
            o2.to_str().unwrap(),
        ]);
        qemu_io(&o2, "qcow2", &["write -P 0x66 4100k 8k"]);
        let with_format = root(&sb, &o2);
        for img in [&o, &o2] {
            strip_backing_format(img);
            assert_eq!(qemu_backing_format(img), None, "{}", img.display());
        }
        let doc = fingerprint(&sb, &o2);
        assert_eq!(
            doc["content_root"],
            converted_root(&sb, &o2).as_str(),
            "{fmt}"
        );
        assert_eq!(doc["content_root"], with_format.as_str(), "{fmt}");
        assert_eq!(doc["backing_chain"].as_array().unwrap().len(), 2);
        assert_eq!(root(&sb, &o), converted_root(&sb, &o), "{fmt}");
        tops.push(o);
    }
    // The writes are really there: the two overlays differ from their bases.
    assert_ne!(root(&sb, &tops[0]), raw_root(&raw));

    // 2. Headers written from scratch with no format extension at all (all clusters
    //    unallocated: the backing file shows through).
    for (backing, fmt) in [("base.raw", "raw"), ("probe-base.qcow2", "qcow2")] {
        let m = sb.join(format!("mini-{fmt}.qcow2"));
        mini_qcow2(&m, size, Some((backing, "")));
        assert_eq!(qemu_backing_format(&m), None);
        let doc = fingerprint(&sb, &m);
        assert_eq!(doc["content_root"], raw_root(&raw).as_str(), "{fmt}");
        assert_eq!(
            doc["content_root"],
            converted_root(&sb, &m).as_str(),
            "{fmt}"
        );
    }
}

/// Whatever the number of hashing threads, and whichever way each run of bytes reaches
/// the hash (long contiguous runs hashed where they lie, short scattered clusters read into
/// a buffer, compressed clusters decompressed, zero clusters), the root is the one of
/// `qemu-img convert -O raw`.
#[test]
fn every_thread_count_and_every_kind_of_run_give_the_same_root() {
    let sb = Sandbox::new();
    let raw = base_raw(&sb);
    let q = sb.join("mixed.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    // 4 KiB clusters written back to front: each lands after the one written before it in
    // the file, so consecutive guest clusters are never contiguous on the host.
    let scattered: Vec<String> = (0..64u64)
        .rev()
        .map(|i| format!("write -P {} {} 4k", 0x10 + i, 12 * MIB + i * 4096))
        .collect();
    let scattered: Vec<&str> = scattered.iter().map(String::as_str).collect();
    qemu_io(&q, "qcow2", &scattered);
    qemu_io(
        &q,
        "qcow2",
        &[
            "write -c -P 0x5a 16M 64k",
            "write -z 1M 256k",
            "write -P 0x3c 19M 1M",
        ],
    );
    let want = converted_root(&sb, &q);
    assert_ne!(want, raw_root(&raw), "the writes changed the disk");
    for threads in ["1", "2", "3", "8"] {
        for image in [&q, &raw] {
            let doc = sb
                .cmd(["fingerprint", "image", "--json", "--threads", threads])
                .arg(image)
                .ok()
                .json();
            let expect = if image == &q {
                want.clone()
            } else {
                raw_root(&raw)
            };
            assert_eq!(
                doc["content_root"],
                expect.as_str(),
                "{} with --threads {threads}",
                image.display()
            );
        }
    }
}
