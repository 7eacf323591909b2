//! `vmledger fingerprint image` as a command: the `vmledger-image/v1` document (validated
//! against its schema), one object or an array, manifests (schema, digests equal to an
//! independent computation, one per image in a directory), the progress bar (on a
//! terminal only), block devices, and the public library API.

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;
use common::images::*;
use vmledger::fingerprint::image::{
    self, FormatChoice, Image, Manifest, Options, differing_ranges,
};

fn sample(sb: &Sandbox, name: &str, seed: u64) -> PathBuf {
    let p = sb.join(name);
    let data = pseudo_random(9 << 20, seed);
    sparse_raw(
        &p,
        16 * MIB,
        &[(0, &data[..5 << 20]), (11 * MIB, &data[5 << 20..])],
    );
    p
}

#[test]
fn json_document_matches_its_schema() {
    let sb = Sandbox::new();
    let raw = sample(&sb, "a.raw", 1);
    let q = sb.join("a.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.raw",
        "-F",
        "raw",
        q.to_str().unwrap(),
    ]);
    let doc = sb
        .cmd(["fingerprint", "image", "--json"])
        .arg(&q)
        .ok()
        .json();
    assert_schema("image", &doc);
    assert_eq!(doc["format"], "vmledger-image/v1");
    assert_eq!(doc["path"], q.to_str().unwrap());
    assert_eq!(doc["chunk_size"], 4194304);
    assert_eq!(doc["chunk_count"], 4);
    assert_eq!(doc["content_root"], raw_root(&raw).as_str());
    assert_eq!(doc["backing_chain"][0], raw.to_str().unwrap());
    // Several paths: an array, in order.
    let r = sb
        .cmd(["fingerprint", "image", "--json"])
        .arg(&raw)
        .arg(&q)
        .ok()
        .json();
    // The array as a whole is what the schema describes (as is each object in it).
    assert_schema("image", &r);
    let arr = r.as_array().expect("array");
    assert_eq!(arr.len(), 2);
    for d in arr {
        assert_schema("image", d);
    }
    assert_eq!(arr[0]["image_format"], "raw");
    assert_eq!(arr[1]["image_format"], "qcow2");
    assert_eq!(arr[0]["content_root"], arr[1]["content_root"]);
    // Human text names the image, its root and its chain.
    let t = sb.cmd(["fingerprint", "image"]).arg(&q).ok();
    assert!(t.stdout.contains(raw_root(&raw).as_str()));
    assert!(t.stdout.contains("backing"), "{}", t.stdout);
}

#[test]
fn manifests_hold_the_independently_computed_chunk_digests() {
    let sb = Sandbox::new();
    let raw = sample(&sb, "m.raw", 2);
    let out = sb.join("m.manifest.json");
    let fp = sb
        .cmd(["fingerprint", "image", "--json", "--manifest"])
        .arg(&out)
        .arg(&raw)
        .ok()
        .json();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_schema("manifest", &m);
    let chunks: Vec<String> = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(chunks, raw_chunks(&raw));
    assert_eq!(m["content_root"], fp["content_root"]);
    assert_eq!(m["virtual_size"], 16 * MIB);
    // Written private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Several images: one manifest each in a directory.
    let raw2 = sample(&sb, "n.raw", 3);
    let dir = sb.join("manifests");
    std::fs::create_dir(&dir).unwrap();
    sb.cmd(["fingerprint", "image", "--manifest"])
        .arg(&dir)
        .arg(&raw)
        .arg(&raw2)
        .ok();
    for name in ["m.raw.manifest.json", "n.raw.manifest.json"] {
        let m = Manifest::read(&dir.join(name)).unwrap();
        assert_eq!(m.chunk_count(), 4);
    }
    // ... and not into a plain file.
    let r = sb
        .cmd(["fingerprint", "image", "--manifest"])
        .arg(&out)
        .arg(&raw)
        .arg(&raw2)
        .expect(2);
    assert!(r.stderr.contains("directory"), "{}", r.stderr);
    // A failed fingerprint leaves no manifest behind.
    let bad = sb.join("bad.txt");
    std::fs::write(&bad, "text").unwrap();
    let out2 = sb.join("bad.manifest.json");
    sb.cmd(["fingerprint", "image", "--manifest"])
        .arg(&out2)
        .arg(&bad)
        .expect(2);
    assert!(!out2.exists());
    assert!(
        std::fs::read_dir(sb.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp.")),
        "temporary manifest left behind"
    );
}

#[test]
fn one_failing_image_among_several_hides_none_of_the_others() {
    let sb = Sandbox::new();
    let a = sample(&sb, "a.raw", 11);
    let b = sample(&sb, "b.raw", 12);
    let bad = sb.join("notes.txt");
    std::fs::write(&bad, "not a disk image\n").unwrap();
    let missing = sb.join("missing.img");

    // --json: the array holds a result or an error in each argument's place; exit 2.
    let r = sb
        .cmd(["fingerprint", "image", "--json"])
        .arg(&a)
        .arg(&bad)
        .arg(&b)
        .arg(&missing)
        .expect(2);
    let doc = r.json();
    assert_schema("image", &doc);
    let arr = doc.as_array().expect("array");
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["format"], "vmledger-image/v1");
    assert_eq!(arr[0]["content_root"], raw_root(&a).as_str());
    assert_eq!(arr[2]["content_root"], raw_root(&b).as_str());
    for (i, p) in [(1, &bad), (3, &missing)] {
        assert_eq!(arr[i]["format"], "vmledger-image-error/v1");
        assert_eq!(arr[i]["path"], p.to_str().unwrap());
        let e = arr[i]["error"].as_str().unwrap();
        assert!(
            e.contains(p.to_str().unwrap()),
            "error does not name the file: {e}"
        );
        // ... and the same error on stderr.
        assert!(r.stderr.contains(e), "{}", r.stderr);
    }
    assert!(r.stderr.contains("2 of 4 images"), "{}", r.stderr);

    // Text: the results on stdout, the errors on stderr, exit 2.
    let r = sb
        .cmd(["fingerprint", "image"])
        .arg(&a)
        .arg(&bad)
        .arg(&b)
        .expect(2);
    assert!(r.stdout.contains(raw_root(&a).as_str()), "{}", r.stdout);
    assert!(r.stdout.contains(raw_root(&b).as_str()), "{}", r.stdout);
    assert!(!r.stdout.contains("notes.txt"), "{}", r.stdout);
    assert!(r.stderr.contains("notes.txt"), "{}", r.stderr);

    // With manifests: the good images' manifests are written, the bad one's is not.
    let dir = sb.join("mf");
    std::fs::create_dir(&dir).unwrap();
    sb.cmd(["fingerprint", "image", "--manifest"])
        .arg(&dir)
        .arg(&a)
        .arg(&bad)
        .arg(&b)
        .expect(2);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.raw.manifest.json", "b.raw.manifest.json"]);
}

#[test]
fn manifests_that_would_share_a_name_are_refused_up_front() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("a")).unwrap();
    std::fs::create_dir(sb.join("b")).unwrap();
    let a = sample(&sb, "a/disk.img", 13);
    let b = sample(&sb, "b/disk.img", 14);
    let dir = sb.join("mf");
    std::fs::create_dir(&dir).unwrap();
    for extra in [&b, &a] {
        let r = sb
            .cmd(["fingerprint", "image", "--manifest"])
            .arg(&dir)
            .arg(&a)
            .arg(extra)
            .expect(2);
        assert!(
            r.stderr.contains(a.to_str().unwrap()) && r.stderr.contains("disk.img.manifest.json"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "nothing fingerprinted");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no manifest written"
        );
    }
}

#[test]
fn no_progress_bar_on_pipes_but_one_on_a_terminal() {
    let sb = Sandbox::new();
    let raw = sample(&sb, "p.raw", 4);
    for json in [false, true] {
        let mut c = sb
            .cmd(["fingerprint", "image"])
            .arg(&raw)
            .env("VMLEDGER_PROGRESS_DELAY_MS", "0");
        if json {
            c = c.arg("--json");
        }
        let r = c.ok();
        assert_eq!(r.stderr, "", "nothing on a piped stderr");
    }
    // On a pseudo-terminal (util-linux `script`), a bar is drawn; never with --json.
    common::require("script");
    let run_in_pty = |extra: &str| {
        let cmd = format!(
            "{} fingerprint image {} {extra}",
            common::bin().display(),
            raw.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("VMLEDGER_PROGRESS_DELAY_MS", "0")
            .env("HOME", sb.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = run_in_pty("");
    assert!(tty.contains("MiB/16.00 MiB"), "no progress bar: {tty:?}");
    let tty_json = run_in_pty("--json");
    assert!(
        !tty_json.contains("MiB/16.00 MiB"),
        "bar with --json: {tty_json:?}"
    );
}

/// Detaches a loop device when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_devices() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("block_devices: needs root to attach a loop device; not run");
        return;
    }
    common::require("losetup");
    let sb = Sandbox::new();
    let raw = sample(&sb, "dev.raw", 5);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let doc = sb
        .cmd(["fingerprint", "image", "--json", &dev.0])
        .ok()
        .json();
    assert_eq!(doc["virtual_size"], 16 * MIB);
    assert_eq!(doc["content_root"], raw_root(&raw).as_str());
}

#[test]
fn library_api() {
    let sb = Sandbox::new();
    let raw = sample(&sb, "lib.raw", 6);
    let q = sb.join("lib.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p: image::Progress| seen.lock().unwrap().push(p.done);
    let fp = image::fingerprint(
        &q,
        &Options {
            keep_chunks: true,
            progress: Some(&progress),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(image::hex(&fp.content_root), raw_root(&raw));
    let chunks = fp.chunks.clone().unwrap();
    assert_eq!(
        chunks.iter().map(image::hex).collect::<Vec<_>>(),
        raw_chunks(&raw)
    );
    assert_eq!(image::root_of(&chunks), fp.content_root);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![4 * MIB, 8 * MIB, 12 * MIB, 16 * MIB]
    );
    assert_eq!(fp.document().format, image::IMAGE_FORMAT);

    // Streaming: open, inspect, hash with a per-chunk callback.
    let img = Image::open(Path::new(&q), FormatChoice::Auto).unwrap();
    assert_eq!(img.virtual_size(), 16 * MIB);
    assert_eq!(img.format(), image::ImageFormat::Qcow2);
    let mut streamed = Vec::new();
    let fp2 = img
        .fingerprint(1, None, &mut |i, d| {
            assert_eq!(i as usize, streamed.len());
            streamed.push(*d);
            Ok(())
        })
        .unwrap();
    assert_eq!(streamed, chunks);
    assert_eq!(fp2.content_root, fp.content_root);

    // Manifests round-trip and compare.
    let m = Manifest::from_fingerprint(&fp).unwrap();
    let mp = sb.join("lib.manifest.json");
    m.write(&mp).unwrap();
    assert_eq!(Manifest::read(&mp).unwrap(), m);
    let mut other = chunks.clone();
    other[2] = [0u8; 32];
    let r = differing_ranges(&chunks, 16 * MIB, &other, 16 * MIB);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].offset, r[0].length), (8 * MIB, 4 * MIB));

    // Errors name the file and are values, not panics.
    let e = image::fingerprint(&sb.join("nope.img"), &Options::default()).unwrap_err();
    assert_eq!(e.path(), sb.join("nope.img"));
}

/// Peak resident memory (KiB) of `vmledger ARGS`, from GNU time.
fn peak_rss_kib(sb: &Sandbox, args: &[&std::ffi::OsStr]) -> u64 {
    common::require("/usr/bin/time");
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(common::bin())
        .args(args)
        .env("HOME", sb.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    err.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RSS in: {err}"))
}

#[test]
fn memory_stays_bounded_for_huge_sparse_images() {
    let sb = Sandbox::new();
    // 8 TiB raw holding 8 MiB of data far apart, and a 16 TiB qcow2 written at both ends.
    let raw = sb.join("huge.raw");
    let data = pseudo_random(4 << 20, 9);
    sparse_raw(
        &raw,
        8 << 40,
        &[(0, &data[..]), ((6 << 40) + 12345, &data[..])],
    );
    let q = sb.join("huge.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "16T"]);
    qemu_io(
        &q,
        "qcow2",
        &["write -P 1 0 1M", "write -P 2 17592184995840 1M"],
    );
    for (img, fmt) in [(&raw, "raw"), (&q, "qcow2")] {
        let kib = peak_rss_kib(
            &sb,
            &[
                "fingerprint".as_ref(),
                "image".as_ref(),
                "--format".as_ref(),
                fmt.as_ref(),
                img.as_os_str(),
            ],
        );
        assert!(kib < 64 * 1024, "{fmt}: peak RSS {kib} KiB");
    }
}
