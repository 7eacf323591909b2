//! `vmledger diff A B`: compare two fingerprints of the same kind. The kind is told from
//! the documents themselves: a JSON document names it in its top-level `format`; any other
//! file is a disk image. Each kind's comparison lives in its own file.
//!
//! | A or B | compared by |
//! |--------|-------------|
//! | disk image, `vmledger-image/v1`, `vmledger-manifest/v1` | `diff_image` |
//! | `vmledger-hardware/v1` | `diff_hardware` |
//! | `vmledger-tree/v1` | `diff_tree` |
//!
//! Exit 0 when they are the same, 1 when they differ, 2 on errors.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{Ctx, diff_hardware, diff_image, diff_tree};
use crate::exit::Exit;
use crate::fingerprint::image::looks_like_json_document;

/// JSON documents larger than this are not fingerprints (a 2 TiB image's manifest is
/// ~40 MiB); anything larger is treated as an image.
pub const MAX_DOCUMENT: u64 = 256 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The old (or reference) image or fingerprint
    pub a: PathBuf,
    /// The new image or fingerprint
    pub b: PathBuf,
}

/// One side of a comparison: a JSON fingerprint document or a disk image.
#[derive(Debug)]
pub enum Operand {
    /// A JSON document with its `format` and parsed value. A `vmledger-manifest/v1` (which
    /// may be tens of MiB) is not parsed here: its `value` is `Null` and the image diff
    /// streams the file itself.
    Document {
        path: PathBuf,
        format: String,
        value: serde_json::Value,
    },
    /// Anything else: a disk image file (or block device).
    Image { path: PathBuf },
}

impl Operand {
    /// The family the operand belongs to: `image`, `hardware`, `tree` or the unknown format.
    pub fn family(&self) -> &str {
        match self {
            Operand::Image { .. } => "image",
            Operand::Document { format, .. } => match format.as_str() {
                "vmledger-image/v1" | "vmledger-manifest/v1" => "image",
                "vmledger-hardware/v1" => "hardware",
                "vmledger-tree/v1" => "tree",
                other => other,
            },
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Operand::Image { path } | Operand::Document { path, .. } => path,
        }
    }
}

/// Classify `path`: a JSON object with a string `format` is a document, anything else an
/// image. Reads at most [`MAX_DOCUMENT`] bytes and only when the file starts like JSON.
///
/// A raw image may begin with `{` too: a file that does not parse as JSON, or parses
/// without a string `format`, is an image, unless its first bytes name a `format` or a
/// `vmledger-` kind (a damaged fingerprint or manifest): that is an error naming the file
/// and where it stops parsing, rather than a confusing image error.
pub fn classify(path: &Path) -> anyhow::Result<Operand> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a directory, not an image or a fingerprint",
            path.display()
        );
    }
    let mut head = [0u8; 512];
    let n =
        read_up_to(&mut f, &mut head).with_context(|| format!("cannot read {}", path.display()))?;
    let head = &head[..n];
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    let image = || {
        Ok(Operand::Image {
            path: path.to_path_buf(),
        })
    };
    if first != Some(&b'{') || !meta.is_file() {
        return image();
    }
    let claims_document = looks_like_json_document(head);
    // Find the `format` first, streaming (a manifest of a large image is tens of MiB: it
    // is not loaded as a `serde_json::Value`; its reader streams it again).
    #[derive(serde::Deserialize)]
    struct Head {
        format: Option<serde_json::Value>,
    }
    let reader = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let parsed: Result<Head, _> = serde_json::from_reader(reader);
    if let Ok(Head {
        format: Some(serde_json::Value::String(format)),
    }) = &parsed
        && format == crate::fingerprint::image::MANIFEST_FORMAT
    {
        return Ok(Operand::Document {
            path: path.to_path_buf(),
            format: format.clone(),
            value: serde_json::Value::Null,
        });
    }
    if meta.len() > MAX_DOCUMENT {
        return image();
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) if claims_document => {
            return Err(e).with_context(|| {
                format!(
                    "{} looks like a vmledger JSON document but does not parse",
                    path.display()
                )
            });
        }
        // Not JSON after all: a raw image whose first byte happens to be `{`.
        Err(_) => return image(),
    };
    match value.get("format").and_then(|f| f.as_str()) {
        Some(format) => Ok(Operand::Document {
            path: path.to_path_buf(),
            format: format.to_string(),
            value,
        }),
        None if claims_document => bail!(
            "{}: JSON document without a string `format` member",
            path.display()
        ),
        None => image(),
    }
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let a = classify(&args.a)?;
    let b = classify(&args.b)?;
    if a.family() != b.family() {
        bail!(
            "cannot compare {} ({}) with {} ({}): both must be images/manifests, hardware fingerprints or tree fingerprints",
            a.path().display(),
            a.family(),
            b.path().display(),
            b.family()
        );
    }
    match a.family() {
        "image" => diff_image::run(ctx, a, b),
        "hardware" => diff_hardware::run(ctx, a, b),
        "tree" => diff_tree::run(ctx, a, b),
        other => bail!(
            "{}: `{other}` documents cannot be compared with `vmledger diff`",
            a.path().display()
        ),
    }
}
