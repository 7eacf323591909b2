//! The crafted bad-input corpus: every malformed image gives exit 2 and one clear error
//! naming the file and what is wrong, never a panic. The corpus is built here from valid
//! images (made by `qemu-img` or `common::images::mini_qcow2`) patched byte by byte, so
//! no binary blobs are committed.

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use common::images::*;

const INCOMPAT: u64 = hdr::INCOMPATIBLE;

/// Fingerprint `path`: exit 2, the file named, every `phrases` in the message, no panic.
fn refused(sb: &Sandbox, path: &Path, phrases: &[&str]) {
    let r = sb.cmd(["fingerprint", "image"]).arg(path).expect(2);
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.starts_with("vmledger: error: "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(
        r.stderr.contains(&*name),
        "error does not name {name}: {}",
        r.stderr
    );
    for p in phrases {
        assert!(r.stderr.contains(p), "missing `{p}` in: {}", r.stderr);
    }
    assert!(r.stdout.is_empty());
}

/// A 2 MiB raw image with data in its first 256 KiB and at 1 MiB.
fn small_raw(sb: &Sandbox) -> PathBuf {
    let p = sb.join("small.raw");
    let text = text_like(256 << 10, 3);
    let rnd = pseudo_random(64 << 10, 4);
    sparse_raw(&p, 2 * MIB, &[(0, &text[..]), (MIB, &rnd[..])]);
    p
}

/// A copy of a qemu-made qcow2 of `small.raw` (64 KiB clusters), with `opts`.
fn good(sb: &Sandbox, name: &str, opts: &[&str]) -> PathBuf {
    let raw = small_raw(sb);
    let q = sb.join(name);
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
    qemu_img(&args);
    // The unpatched image is fine.
    sb.cmd(["fingerprint", "image"]).arg(&q).ok();
    q
}

#[test]
fn truncated_files() {
    let sb = Sandbox::new();
    let q = good(&sb, "trunc-header.qcow2", &[]);
    truncate(&q, 50);
    refused(&sb, &q, &["truncated", "72 bytes"]);

    let q = good(&sb, "trunc-l1.qcow2", &[]);
    let l1 = read_be64(&q, hdr::L1_OFFSET);
    truncate(&q, l1 + 4);
    refused(&sb, &q, &["L1 table", "past the end of the file"]);

    let q = good(&sb, "trunc-data.qcow2", &[]);
    let len = std::fs::metadata(&q).unwrap().len();
    truncate(&q, len - 65536);
    refused(&sb, &q, &["past the end of the file"]);
}

#[test]
fn l1_table_fields() {
    let sb = Sandbox::new();
    let q = good(&sb, "huge-l1.qcow2", &[]);
    write_be32(&q, hdr::L1_SIZE, u32::MAX);
    refused(&sb, &q, &["l1_size", "32 MiB"]);

    let q = good(&sb, "l1-beyond-eof.qcow2", &[]);
    write_be64(&q, hdr::L1_OFFSET, 1 << 40);
    refused(&sb, &q, &["L1 table", "past the end of the file"]);

    let q = good(&sb, "l1-in-header.qcow2", &[]);
    write_be64(&q, hdr::L1_OFFSET, 0);
    refused(&sb, &q, &["L1 table", "inside the header"]);

    let q = good(&sb, "l1-misaligned.qcow2", &[]);
    let l1 = read_be64(&q, hdr::L1_OFFSET);
    write_be64(&q, hdr::L1_OFFSET, l1 + 8);
    refused(&sb, &q, &["L1 table", "not aligned"]);

    let q = good(&sb, "l1-too-small.qcow2", &[]);
    write_be64(&q, hdr::SIZE, 1 << 40);
    refused(&sb, &q, &["L1 table has 1 entries", "needs"]);
}

#[test]
fn l1_and_l2_entries() {
    let sb = Sandbox::new();
    let patch_l1 = |name: &str, f: &dyn Fn(u64) -> u64| {
        let q = good(&sb, name, &[]);
        let l1 = read_be64(&q, hdr::L1_OFFSET);
        write_be64(&q, l1, f(read_be64(&q, l1)));
        q
    };
    let q = patch_l1("l1e-misaligned.qcow2", &|e| e + 512);
    refused(&sb, &q, &["L1 entry 0", "not aligned"]);
    let q = patch_l1("l1e-beyond-eof.qcow2", &|e| (e & (1 << 63)) | (1 << 40));
    refused(&sb, &q, &["L1 entry 0", "past the end of the file"]);
    let q = patch_l1("l1e-reserved.qcow2", &|e| e | 1);
    refused(&sb, &q, &["L1 entry 0", "reserved bits"]);

    let patch_l2 = |name: &str, f: &dyn Fn(u64) -> u64| {
        let q = good(&sb, name, &[]);
        let at = l2_entry_offset(&q, 0);
        write_be64(&q, at, f(read_be64(&q, at)));
        q
    };
    let q = patch_l2("l2e-misaligned.qcow2", &|e| e + 512);
    refused(&sb, &q, &["guest offset 0x0", "not aligned"]);
    let q = patch_l2("l2e-beyond-eof.qcow2", &|e| (e & (1 << 63)) | (1 << 40));
    refused(&sb, &q, &["guest offset 0x0", "past the end of the file"]);
    let q = patch_l2("l2e-reserved.qcow2", &|e| e | 2);
    refused(&sb, &q, &["guest offset 0x0", "reserved bits"]);
    let q = patch_l2("l2e-reserved-high.qcow2", &|e| e | (1 << 57));
    refused(&sb, &q, &["reserved bits"]);
}

#[test]
fn compressed_clusters() {
    let sb = Sandbox::new();
    // Compressed data running past the end of the file: near the end, with the biggest
    // sector count.
    for (name, ct) in [("c-past-end.qcow2", "zlib"), ("z-past-end.qcow2", "zstd")] {
        let opt = format!("compression_type={ct}");
        let q = good(&sb, name, &["-c", "-o", &opt]);
        let at = l2_entry_offset(&q, 0);
        assert_ne!(read_be64(&q, at) & (1 << 62), 0, "compressed");
        let flen = std::fs::metadata(&q).unwrap().len();
        write_be64(&q, at, (1 << 62) | (0xff << 54) | (flen - 100));
        refused(&sb, &q, &["compressed data", "past the end of the file"]);
    }
    // A deflate stream of the wrong size in place of the first cluster's data.
    let q = good(&sb, "c-wrong-size.qcow2", &["-c"]);
    let e = read_be64(&q, l2_entry_offset(&q, 0));
    let host = e & ((1 << 54) - 1);
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut small = vec![0u8; 1024];
    c.compress(&[7u8; 100], &mut small, flate2::FlushCompress::Finish)
        .unwrap();
    small.truncate(c.total_out() as usize);
    write_at(&q, host, &small);
    refused(
        &sb,
        &q,
        &[
            "compressed cluster",
            "100 bytes instead of the cluster's 65536",
        ],
    );
    // Garbage instead of compressed data, in both compression types.
    for (name, ct, what) in [
        ("c-garbage.qcow2", "zlib", "deflate"),
        ("z-garbage.qcow2", "zstd", "zstd"),
    ] {
        let opt = format!("compression_type={ct}");
        let q = good(&sb, name, &["-c", "-o", &opt]);
        let e = read_be64(&q, l2_entry_offset(&q, 0));
        write_at(&q, e & ((1 << 54) - 1), &[0xff; 64]);
        refused(&sb, &q, &["compressed cluster for guest offset 0x0", what]);
    }
    // A compressed cluster inside the header cluster.
    let q = good(&sb, "c-in-header.qcow2", &["-c"]);
    let at = l2_entry_offset(&q, 0);
    let e = read_be64(&q, at);
    write_be64(&q, at, (e & !((1 << 54) - 1)) | 100);
    refused(&sb, &q, &["inside the header"]);
}

#[test]
fn tables_that_reference_the_same_cluster_over_and_over() {
    let sb = Sandbox::new();
    let raw = sb.join("big.raw");
    sparse_raw(&raw, 256 * MIB, &[(0, &pseudo_random(65536, 1)[..])]);
    let q = sb.join("amplified.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let first = read_be64(&q, l2_entry_offset(&q, 0));
    let l2 = l2_entry_offset(&q, 0);
    // Every guest cluster of the image maps to the one data cluster.
    let mut table = Vec::new();
    for _ in 0..4096 {
        table.extend_from_slice(&first.to_be_bytes());
    }
    write_at(&q, l2, &table);
    refused(&sb, &q, &["referenced again and again"]);

    // The same with one compressed cluster decompressed over and over.
    let text = sb.join("text.raw");
    sparse_raw(&text, 256 * MIB, &[(0, &text_like(65536, 2)[..])]);
    let q = sb.join("amplified-compressed.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        text.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let first = read_be64(&q, l2_entry_offset(&q, 0));
    assert_ne!(first & (1 << 62), 0, "compressed");
    let l2 = l2_entry_offset(&q, 0);
    let mut table = Vec::new();
    for _ in 0..4096 {
        table.extend_from_slice(&first.to_be_bytes());
    }
    write_at(&q, l2, &table);
    refused(&sb, &q, &["referenced again and again"]);
}

#[test]
fn header_fields_and_features() {
    let sb = Sandbox::new();
    let mini = |name: &str| {
        let p = sb.join(name);
        mini_qcow2(&p, 8 * MIB, None);
        sb.cmd(["fingerprint", "image"]).arg(&p).ok();
        p
    };
    let q = mini("exabyte.qcow2");
    write_be64(&q, hdr::SIZE, 1 << 60);
    refused(&sb, &q, &["1152921504606846976 bytes", "16 TiB"]);

    let q = mini("unknown-feature.qcow2");
    write_be64(&q, INCOMPAT, 1 << 40);
    refused(&sb, &q, &["unknown incompatible", "bit 40"]);

    let q = mini("corrupt-bit.qcow2");
    write_be64(&q, INCOMPAT, 2);
    refused(&sb, &q, &["corrupt", "qemu-img check"]);

    let q = mini("aes.qcow2");
    write_be32(&q, hdr::CRYPT_METHOD, 1);
    refused(&sb, &q, &["encrypted", "AES"]);

    for bits in [8u32, 22, 63] {
        let q = mini(&format!("cluster-bits-{bits}.qcow2"));
        write_be32(&q, hdr::CLUSTER_BITS, bits);
        refused(&sb, &q, &["cluster_bits", "9 to 21"]);
    }
    for v in [1u32, 4] {
        let q = mini(&format!("version-{v}.qcow2"));
        write_be32(&q, hdr::VERSION, v);
        refused(&sb, &q, &["version"]);
    }
    let q = mini("ext-past-end.qcow2");
    write_be32(&q, 112, 0x1234_5678);
    write_be32(&q, 116, 0x000f_ffff);
    refused(
        &sb,
        &q,
        &["header extension", "runs past the end of the header area"],
    );

    let q = mini("bad-header-length.qcow2");
    write_be32(&q, hdr::HEADER_LENGTH, 100);
    refused(&sb, &q, &["header_length"]);

    let q = mini("unknown-compression.qcow2");
    write_be64(&q, INCOMPAT, 1 << 3);
    write_at(&q, 104, &[2]);
    refused(&sb, &q, &["compression type 2"]);

    // A real LUKS-encrypted image made by qemu-img.
    let luks = sb.join("luks.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=hunter2",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        luks.to_str().unwrap(),
        "4M",
    ]);
    refused(&sb, &luks, &["encrypted", "LUKS"]);
}

#[test]
fn extended_l2_bitmaps() {
    let sb = Sandbox::new();
    let q = good(&sb, "ext-bitmap.qcow2", &["-o", "extended_l2=on"]);
    let cs = cluster_size(&q);
    let l1 = read_be64(&q, hdr::L1_OFFSET);
    let l2 = read_be64(&q, l1) & 0x00ff_ffff_ffff_fe00;
    assert!(l2 > 0 && cs == 65536);
    // First entry: an allocated cluster; mark subcluster 0 zero as well.
    let bitmap = read_be64(&q, l2 + 8);
    assert_ne!(bitmap & 1, 0);
    write_be64(&q, l2 + 8, bitmap | (1 << 32));
    refused(&sb, &q, &["both allocated and zero"]);
}

#[test]
fn backing_chains() {
    let sb = Sandbox::new();
    let me = sb.join("self.qcow2");
    mini_qcow2(&me, 8 * MIB, Some(("self.qcow2", "qcow2")));
    refused(&sb, &me, &["loops back on itself"]);

    // a -> b -> a
    mini_qcow2(
        &sb.join("loop-a.qcow2"),
        8 * MIB,
        Some(("loop-b.qcow2", "qcow2")),
    );
    mini_qcow2(
        &sb.join("loop-b.qcow2"),
        8 * MIB,
        Some(("loop-a.qcow2", "qcow2")),
    );
    refused(&sb, &sb.join("loop-a.qcow2"), &["loops back on itself"]);

    // A chain of 100 files.
    for i in 0..100 {
        let p = sb.join(format!("deep{i}.qcow2"));
        let below = format!("deep{}.qcow2", i + 1);
        mini_qcow2(&p, 8 * MIB, (i < 99).then_some((below.as_str(), "qcow2")));
    }
    refused(
        &sb,
        &sb.join("deep0.qcow2"),
        &["deeper than 32 backing files"],
    );
    // 32 backing files are fine.
    sb.cmd(["fingerprint", "image"])
        .arg(sb.join("deep67.qcow2"))
        .ok();

    let q = sb.join("missing-backing.qcow2");
    mini_qcow2(&q, 8 * MIB, Some(("not-there.qcow2", "qcow2")));
    refused(
        &sb,
        &q,
        &[
            "cannot use its backing file",
            "not-there.qcow2",
            "No such file",
        ],
    );

    let q = sb.join("json-backing.qcow2");
    mini_qcow2(&q, 8 * MIB, Some(("json:{\"driver\":\"nbd\"}", "qcow2")));
    refused(&sb, &q, &["json:"]);

    let q = sb.join("vmdk-backing.qcow2");
    mini_qcow2(&q, 8 * MIB, Some(("x.vmdk", "vmdk")));
    refused(&sb, &q, &["`vmdk` format"]);
}

#[test]
fn files_that_are_not_images() {
    let sb = Sandbox::new();
    let text = sb.join("notes.txt");
    std::fs::write(&text, "just some text\n").unwrap();
    refused(
        &sb,
        &text,
        &["not a disk image", "not a multiple of 512", "--format raw"],
    );
    // ... which --format raw does fingerprint.
    sb.cmd(["fingerprint", "image", "--format", "raw"])
        .arg(&text)
        .ok();

    let empty = sb.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    refused(&sb, &empty, &["empty"]);

    let json = sb.join("fp.json");
    let mut doc = br#"{"format": "vmledger-image/v1"}"#.to_vec();
    doc.resize(512, b' ');
    std::fs::write(&json, &doc).unwrap();
    refused(&sb, &json, &["JSON document"]);

    let vmdk = sb.join("disk.vmdk");
    let raw = small_raw(&sb);
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    refused(&sb, &vmdk, &["VMDK", "qemu-img convert"]);

    let dir = sb.join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    refused(&sb, &dir, &["is a directory"]);

    let fifo = sb.join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    refused(&sb, &fifo, &["neither a regular file nor a block device"]);

    refused(
        &sb,
        &sb.join("does-not-exist.img"),
        &["cannot open", "No such file"],
    );

    // --json errors are a vmledger-error/v1 document too.
    let r = sb
        .cmd(["fingerprint", "image", "--json"])
        .arg(&dir)
        .expect(2);
    assert_eq!(r.json()["format"], "vmledger-error/v1");
}

#[test]
fn unreadable_files() {
    let sb = Sandbox::new();
    // Let an unprivileged user into the sandbox, but not into the image.
    std::fs::set_permissions(
        sb.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let p = sb.join("secret.img");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let mode = if root { 0o600 } else { 0o000 };
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    let mut cmd = if root {
        // Root reads everything: drop to nobody.
        common::require("setpriv");
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::bin());
        c
    } else {
        std::process::Command::new(common::bin())
    };
    let out = cmd
        .args(["fingerprint", "image"])
        .arg(&p)
        .env("HOME", sb.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("secret.img") && stderr.contains("Permission denied"),
        "{stderr}"
    );
}

/// An image that shrinks after it was opened, while it is hashed: long runs are hashed
/// where they lie in the page cache (mapped), and touching a page past the new end raises
/// a bus error. Whatever the number of hashing threads, that is an ordinary error naming
/// the file (as a failed read would be), not a crash, and the process goes on: the next
/// image fingerprints fine. The file is truncated between opening and hashing, so the
/// moment is exact rather than a race.
#[test]
fn an_image_that_shrinks_while_it_is_hashed() {
    use vmledger::fingerprint::image::{FormatChoice, Image};
    let sb = Sandbox::new();
    let raw = sb.join("random.raw");
    sparse_raw(
        &raw,
        16 * MIB,
        &[(0, &pseudo_random(16 * MIB as usize, 5)[..])],
    );
    let want = raw_root(&raw);
    for threads in [1, 2, 3] {
        for (name, format) in [("shrinking.qcow2", "qcow2"), ("shrinking.raw", "raw")] {
            let img = sb.join(name);
            qemu_img(&[
                "convert",
                "-O",
                format,
                raw.to_str().unwrap(),
                img.to_str().unwrap(),
            ]);
            let image = Image::open(&img, FormatChoice::Auto).expect("opens");
            let len = std::fs::metadata(&img).unwrap().len();
            truncate(&img, len / 2);
            let err = image
                .fingerprint(threads, None, &mut |_, _| Ok(()))
                .expect_err("a shrunk image is an error")
                .to_string();
            assert!(err.contains(img.to_str().unwrap()), "{err}");
            // qcow2: the tables still map the lost clusters, and mapped, they fault; raw:
            // what is gone is not a hole.
            assert!(err.contains("truncated while being read"), "{err}");
            let fine = Image::open(&raw, FormatChoice::Auto)
                .unwrap()
                .fingerprint(threads, None, &mut |_, _| Ok(()))
                .expect("the next image is fine");
            assert_eq!(vmledger::fingerprint::image::hex(&fine.content_root), want);
        }
    }
}
