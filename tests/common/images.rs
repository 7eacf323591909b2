//! Disk images for the image tests: real ones made with `qemu-img`/`qemu-io`, an
//! independent content-root computation over a raw file, a minimal qcow2 writer, and
//! byte-level patches that turn valid images into the crafted bad-input corpus.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

pub const CHUNK: usize = 4 << 20;
pub const MIB: u64 = 1 << 20;

/// Run `qemu-img ARGS`, insisting on success.
pub fn qemu_img(args: &[&str]) -> String {
    qemu_img_in(Path::new("."), args)
}

/// Run `qemu-img ARGS` in directory `dir` (relative names in options resolve there).
pub fn qemu_img_in(dir: &Path, args: &[&str]) -> String {
    super::require("qemu-img");
    let run = || {
        Command::new("qemu-img")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run qemu-img")
    };
    let mut out = run();
    // Creating a LUKS image times PBKDF2 with the thread's CPU clock; on a busy machine
    // qemu-img sometimes reads no progress and gives up ("Unable to get accurate CPU
    // usage"). That is qemu's benchmark, not the image: try again.
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("Unable to get accurate CPU usage")
        {
            break;
        }
        out = run();
    }
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `qemu-io` with each of `cmds` as a `-c` command on a `fmt` image.
pub fn qemu_io(path: &Path, fmt: &str, cmds: &[&str]) {
    qemu_io_in(Path::new("."), path, fmt, cmds)
}

/// `qemu_io` run in directory `dir` (QEMU 7.2 resolves relative external data file names
/// against its working directory, vmledger against the image's directory).
pub fn qemu_io_in(dir: &Path, path: &Path, fmt: &str, cmds: &[&str]) {
    super::require("qemu-io");
    let mut c = Command::new("qemu-io");
    c.current_dir(dir);
    c.arg("-f").arg(fmt);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(path).output().expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("error") && !stdout.contains("failed"),
        "qemu-io {cmds:?} {} failed: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img compare [-s] A B`: `None` when identical, `Some(offset)` for a content
/// mismatch at `offset`, `Some(u64::MAX)` for a difference without an offset (strict
/// mode's size mismatch).
pub fn qemu_compare(a: &Path, b: &Path, strict: bool) -> Option<u64> {
    let mut c = Command::new("qemu-img");
    c.arg("compare");
    if strict {
        c.arg("-s");
    }
    let out = c.arg(a).arg(b).output().expect("run qemu-img compare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => None,
        Some(1) => {
            if text.contains("size mismatch") {
                return Some(u64::MAX);
            }
            let at = text
                .split("Content mismatch at offset ")
                .nth(1)
                .and_then(|s| {
                    s.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .ok()
                });
            Some(at.unwrap_or_else(|| panic!("no offset in qemu-img compare output: {text}")))
        }
        other => panic!(
            "qemu-img compare failed ({other:?}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The content root of a raw file, computed independently of vmledger: 4 MiB chunks,
/// SHA-256 each, SHA-256 of the concatenated digests, lowercase hex.
pub fn raw_root(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open raw");
    let mut buf = vec![0u8; CHUNK];
    let mut root = Sha256::new();
    loop {
        let mut n = 0;
        while n < CHUNK {
            let k = f.read(&mut buf[n..]).expect("read raw");
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        root.update(Sha256::digest(&buf[..n]));
        if n < CHUNK {
            break;
        }
    }
    hex::encode(root.finalize())
}

/// The chunk digests of a raw file (same computation), as hex.
pub fn raw_chunks(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).expect("read raw");
    data.chunks(CHUNK)
        .map(|c| hex::encode(Sha256::digest(c)))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Compressible bytes (words and zero runs), so compressed clusters really are compressed.
pub fn text_like(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&[u8]; 6] = [
        b"alpha ",
        b"beta ",
        b"gamma ",
        b"delta ",
        b"\n",
        b"epsilon ",
    ];
    let r = pseudo_random(len / 4 + 16, seed);
    let mut v = Vec::with_capacity(len + 16);
    let mut i = 0;
    while v.len() < len {
        let b = r[i % r.len()];
        i += 1;
        if b < 8 {
            v.extend(std::iter::repeat_n(0u8, 300));
        } else {
            v.extend_from_slice(WORDS[usize::from(b) % WORDS.len()]);
        }
    }
    v.truncate(len);
    v
}

/// A sparse raw file of `size` bytes holding `data` at each given offset.
pub fn sparse_raw(path: &Path, size: u64, pieces: &[(u64, &[u8])]) {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("create raw");
    f.set_len(size).expect("set_len");
    for (off, data) in pieces {
        f.write_all_at(data, *off).expect("write raw");
    }
}

// ---- Byte-level access to qcow2 files (for the crafted corpus) ----

pub fn read_be64(path: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(path).expect("open");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).expect("read");
    u64::from_be_bytes(b)
}

pub fn read_be32(path: &Path, off: u64) -> u32 {
    let f = std::fs::File::open(path).expect("open");
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, off).expect("read");
    u32::from_be_bytes(b)
}

pub fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open rw");
    f.write_all_at(bytes, off).expect("patch");
}

pub fn write_be64(path: &Path, off: u64, v: u64) {
    write_at(path, off, &v.to_be_bytes());
}

pub fn write_be32(path: &Path, off: u64, v: u32) {
    write_at(path, off, &v.to_be_bytes());
}

/// Header field offsets (qcow2.rst).
pub mod hdr {
    pub const VERSION: u64 = 4;
    pub const BACKING_OFFSET: u64 = 8;
    pub const BACKING_SIZE: u64 = 16;
    pub const CLUSTER_BITS: u64 = 20;
    pub const SIZE: u64 = 24;
    pub const CRYPT_METHOD: u64 = 32;
    pub const L1_SIZE: u64 = 36;
    pub const L1_OFFSET: u64 = 40;
    pub const INCOMPATIBLE: u64 = 72;
    pub const HEADER_LENGTH: u64 = 100;
}

pub fn cluster_size(path: &Path) -> u64 {
    1 << read_be32(path, hdr::CLUSTER_BITS)
}

/// File offset of the L2 entry (standard entries) for guest offset `guest`.
pub fn l2_entry_offset(path: &Path, guest: u64) -> u64 {
    let cs = cluster_size(path);
    let l2_entries = cs / 8;
    let cluster = guest / cs;
    let l1 = read_be64(path, hdr::L1_OFFSET);
    let l1e = read_be64(path, l1 + (cluster / l2_entries) * 8);
    let l2 = l1e & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0, "no L2 table for guest offset {guest}");
    l2 + (cluster % l2_entries) * 8
}

/// Truncate a file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len)
        .expect("truncate");
}

/// A minimal qcow2 v3 image written from scratch: header, optional backing file name
/// (with its format extension; an empty format writes none, as QEMU before 5.2 could, so
/// the reader must probe the backing file), an all-unallocated L1 table. Enough for chain
/// tests (cycles, depth, probing) without QEMU, which refuses to create such chains.
pub fn mini_qcow2(path: &Path, size: u64, backing: Option<(&str, &str)>) {
    let cs: u64 = 65536;
    let l2_entries = cs / 8;
    let l1_entries = size.div_ceil(cs).div_ceil(l2_entries).max(1);
    let mut h = vec![0u8; cs as usize];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
    h[40..48].copy_from_slice(&cs.to_be_bytes());
    h[48..56].copy_from_slice(&(2 * cs).to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    let mut at = 112;
    if let Some((name, fmt)) = backing {
        if !fmt.is_empty() {
            h[at..at + 4].copy_from_slice(&BACKING_FORMAT_EXT.to_be_bytes());
            h[at + 4..at + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            h[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            at += 8 + fmt.len().div_ceil(8) * 8;
        }
        at += 8; // end-of-extensions marker (zeros)
        h[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[at..at + name.len()].copy_from_slice(name.as_bytes());
    }
    let mut f = std::fs::File::create(path).expect("create qcow2");
    f.write_all(&h).expect("write header");
    f.seek(SeekFrom::Start(3 * cs)).expect("seek");
    f.set_len(3 * cs).expect("set_len");
}

/// Header extension type of the backing file format name (qcow2.rst).
pub const BACKING_FORMAT_EXT: u32 = 0xe279_2aca;

/// Remove the backing file format extension from a v3 qcow2 image's header (the other
/// extensions are kept, in order), so readers must probe the backing file's format: what
/// images made by QEMU before 5.2 without `-F` look like. QEMU now refuses to create them.
pub fn strip_backing_format(path: &Path) {
    assert_eq!(read_be32(path, hdr::VERSION), 3, "v3 images only");
    let start = u64::from(read_be32(path, hdr::HEADER_LENGTH));
    let limit = read_be64(path, hdr::BACKING_OFFSET);
    let mut at = start;
    let mut kept: Vec<u8> = Vec::new();
    let mut found = false;
    loop {
        let typ = read_be32(path, at);
        if typ == 0 {
            break;
        }
        let len = u64::from(read_be32(path, at + 4));
        let padded = len.div_ceil(8) * 8;
        if typ == BACKING_FORMAT_EXT {
            found = true;
        } else {
            let f = std::fs::File::open(path).expect("open");
            let mut ext = vec![0u8; (8 + padded) as usize];
            f.read_exact_at(&mut ext, at).expect("read extension");
            kept.extend(ext);
        }
        at += 8 + padded;
        assert!(
            limit == 0 || at <= limit,
            "extensions run into the backing name"
        );
    }
    assert!(found, "{} has no backing format extension", path.display());
    // The shorter list, its end marker, and zeros over what the old list used.
    let old_len = (at + 8 - start) as usize;
    kept.resize(old_len, 0);
    write_at(path, start, &kept);
}

/// The backing format `qemu-img info` reports (`None` when the header names none).
pub fn qemu_backing_format(path: &Path) -> Option<String> {
    let out = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img info JSON");
    v["backing-filename-format"].as_str().map(str::to_string)
}

/// Validate `doc` against `schemas/<name>.schema.json` (every schema in `schemas/` is
/// registered by its `$id`, so references between them resolve offline).
pub fn assert_schema(name: &str, doc: &serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let load = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).expect("read schema")).expect("schema JSON")
    };
    let mut opts = jsonschema::options();
    for entry in std::fs::read_dir(&dir).expect("schemas dir") {
        let p = entry.expect("dir entry").path();
        if p.extension().is_some_and(|e| e == "json") {
            let s = load(&p);
            let id = s["$id"].as_str().expect("$id").to_string();
            opts = opts.with_resource(
                id,
                jsonschema::Resource::from_contents(s).expect("resource"),
            );
        }
    }
    let schema = load(&dir.join(format!("{name}.schema.json")));
    let v = opts.build(&schema).expect("compile schema");
    let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{name} schema violations: {errors:?}\n{doc:#}"
    );
}
