//! `vmledger diff A B` for disk images, `vmledger-manifest/v1` manifests and
//! `vmledger-image/v1` fingerprints, in any combination.
//!
//! Prints the differing byte ranges (the chunk-aligned regions that contain changes: whole
//! 4 MiB chunks, adjacent ones merged, so one changed byte is a 4 MiB range) as a
//! `vmledger-image-diff/v1` document with `--json`; exits 0 when the contents are the same,
//! 1 when they differ. A `vmledger-image/v1` fingerprint has no chunk digests, so against
//! one only identity is known: when the roots differ, `ranges_known` is false and the one
//! range covers everything.
//!
//! Memory: a manifest's digests (32 bytes per 4 MiB) are held; an image is compared with
//! them while it is hashed. Two images: the first is hashed keeping its digests, the
//! second is compared on the fly.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use super::Ctx;
use super::diff::Operand;
use super::fingerprint_image::with_progress;
use crate::exit::Exit;
use crate::fingerprint::image::diff::{self, ByteRange, compare_image};
use crate::fingerprint::image::{
    self, CHUNK_SIZE, Digest, FormatChoice, IMAGE_FORMAT, Image, ImageDocument, ImageFormat,
    MANIFEST_FORMAT, Manifest, Options,
};

/// The `format` of the diff document.
pub const DIFF_FORMAT: &str = "vmledger-image-diff/v1";

/// One side of the comparison, as reported.
#[derive(Debug, Serialize)]
pub struct Side {
    pub path: String,
    /// `image`, `manifest` or `fingerprint`.
    pub kind: &'static str,
    pub image_format: ImageFormat,
    pub virtual_size: u64,
    pub content_root: String,
}

/// The `vmledger-image-diff/v1` document.
#[derive(Debug, Serialize)]
pub struct DiffDocument {
    pub format: &'static str,
    pub a: Side,
    pub b: Side,
    pub chunk_size: u64,
    pub identical: bool,
    /// False when a side is a fingerprint without chunk digests and the contents differ.
    pub ranges_known: bool,
    pub ranges: Vec<ByteRange>,
    pub differing_bytes: u64,
}

/// A side once loaded: digests when known.
struct Loaded {
    side: Side,
    root: Digest,
    chunks: Option<Vec<Digest>>,
}

fn side(path: &Path, kind: &'static str, f: ImageFormat, size: u64, root: &Digest) -> Side {
    Side {
        path: path.to_string_lossy().into_owned(),
        kind,
        image_format: f,
        virtual_size: size,
        content_root: image::hex(root),
    }
}

/// Load a document operand (manifest or fingerprint); images are handled by the caller.
fn load_document(path: &Path, format: &str, value: &serde_json::Value) -> anyhow::Result<Loaded> {
    match format {
        MANIFEST_FORMAT => {
            let m = Manifest::read(path)?;
            Ok(Loaded {
                side: side(
                    path,
                    "manifest",
                    m.image_format,
                    m.virtual_size,
                    &m.content_root,
                ),
                root: m.content_root,
                chunks: Some(m.chunks),
            })
        }
        IMAGE_FORMAT => {
            let doc: ImageDocument = serde_json::from_value(value.clone()).with_context(|| {
                format!("{} is not a valid {IMAGE_FORMAT} document", path.display())
            })?;
            let root = image::parse_hex(&doc.content_root).with_context(|| {
                format!(
                    "{}: content_root is not 64 lowercase hex digits",
                    path.display()
                )
            })?;
            Ok(Loaded {
                side: side(
                    path,
                    "fingerprint",
                    doc.image_format,
                    doc.virtual_size,
                    &root,
                ),
                root,
                chunks: None,
            })
        }
        other => anyhow::bail!(
            "{}: `{other}` documents cannot be compared with images",
            path.display()
        ),
    }
}

fn image_side(fp: &image::ImageFingerprint) -> Side {
    side(
        &fp.path,
        "image",
        fp.image_format,
        fp.virtual_size,
        &fp.content_root,
    )
}

pub fn run(ctx: &Ctx, a: Operand, b: Operand) -> anyhow::Result<Exit> {
    let doc = match (a, b) {
        (Operand::Image { path: pa }, Operand::Image { path: pb }) => {
            // Open both first, so a bad second image fails before the first is hashed.
            let ia = Image::open(&pa, FormatChoice::Auto)?;
            let ib = Image::open(&pb, FormatChoice::Auto)?;
            let fa = with_progress(ctx, &pa, |p| {
                let mut kept = Vec::new();
                ia.fingerprint(0, p, &mut |_, d| {
                    kept.push(*d);
                    Ok(())
                })
                .map(|fp| (fp, kept))
            })?;
            let (fa, kept) = fa;
            let (fb, ranges) = with_progress(ctx, &pb, |p| {
                compare_image(ib, &kept, fa.virtual_size, 0, p)
            })?;
            finish(
                image_side(&fa),
                fa.content_root,
                image_side(&fb),
                fb.content_root,
                Some(ranges),
            )
        }
        (
            Operand::Image { path },
            Operand::Document {
                path: dp,
                format,
                value,
            },
        ) => {
            let other = load_document(&dp, &format, &value)?;
            let (fp, ranges) = image_against(ctx, &path, &other)?;
            finish(
                image_side(&fp),
                fp.content_root,
                other.side,
                other.root,
                ranges,
            )
        }
        (
            Operand::Document {
                path: dp,
                format,
                value,
            },
            Operand::Image { path },
        ) => {
            let other = load_document(&dp, &format, &value)?;
            let (fp, ranges) = image_against(ctx, &path, &other)?;
            finish(
                other.side,
                other.root,
                image_side(&fp),
                fp.content_root,
                ranges,
            )
        }
        (
            Operand::Document {
                path: pa,
                format: fa,
                value: va,
            },
            Operand::Document {
                path: pb,
                format: fb,
                value: vb,
            },
        ) => {
            let la = load_document(&pa, &fa, &va)?;
            let lb = load_document(&pb, &fb, &vb)?;
            let ranges = match (&la.chunks, &lb.chunks) {
                (Some(ca), Some(cb)) => Some(diff::differing_ranges(
                    ca,
                    la.side.virtual_size,
                    cb,
                    lb.side.virtual_size,
                )),
                _ => None,
            };
            finish(la.side, la.root, lb.side, lb.root, ranges)
        }
    };
    let identical = doc.identical;
    ctx.out.emit(&doc, || human(&doc))?;
    Ok(Exit::from_bool(identical))
}

/// Hash the image at `path`, compared chunk by chunk with `other`'s digests when it has
/// them.
fn image_against(
    ctx: &Ctx,
    path: &Path,
    other: &Loaded,
) -> anyhow::Result<(image::ImageFingerprint, Option<Vec<ByteRange>>)> {
    match &other.chunks {
        Some(chunks) => {
            let img = Image::open(path, FormatChoice::Auto)?;
            let (fp, ranges) = with_progress(ctx, path, |p| {
                compare_image(img, chunks, other.side.virtual_size, 0, p)
            })?;
            Ok((fp, Some(ranges)))
        }
        None => {
            let fp = with_progress(ctx, path, |p| {
                image::fingerprint(
                    path,
                    &Options {
                        progress: p,
                        ..Options::default()
                    },
                )
            })?;
            Ok((fp, None))
        }
    }
}

fn finish(
    a: Side,
    ra: Digest,
    b: Side,
    rb: Digest,
    ranges: Option<Vec<ByteRange>>,
) -> DiffDocument {
    let identical = ra == rb && a.virtual_size == b.virtual_size;
    let end = a.virtual_size.max(b.virtual_size);
    let (ranges_known, ranges) = match ranges {
        _ if identical => (true, Vec::new()),
        Some(r) => (true, r),
        None => (
            false,
            vec![ByteRange {
                offset: 0,
                length: end,
            }],
        ),
    };
    DiffDocument {
        format: DIFF_FORMAT,
        differing_bytes: diff::total(&ranges),
        a,
        b,
        chunk_size: CHUNK_SIZE,
        identical,
        ranges_known,
        ranges,
    }
}

fn human(d: &DiffDocument) -> String {
    if d.identical {
        return format!(
            "identical: {} and {} have the same content (root {})",
            d.a.path, d.b.path, d.a.content_root
        );
    }
    let mut s = format!("differ: {} and {}", d.a.path, d.b.path);
    if d.a.virtual_size != d.b.virtual_size {
        s.push_str(&format!(
            " (sizes {} and {} bytes)",
            d.a.virtual_size, d.b.virtual_size
        ));
    }
    s.push('\n');
    if !d.ranges_known {
        s.push_str(
            "  the differing ranges are unknown: a fingerprint has no chunk digests (make a manifest with `vmledger fingerprint image --manifest`)\n",
        );
        return s;
    }
    s.push_str(&format!("  {}:\n", diff::summary(&d.ranges)));
    for r in &d.ranges {
        s.push_str(&format!(
            "  offset {} length {} ({:#x}..{:#x})\n",
            r.offset,
            r.length,
            r.offset,
            r.offset + r.length
        ));
    }
    s
}
