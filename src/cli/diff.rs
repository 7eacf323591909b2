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
    let mut head = [0u8; 64];
    let n =
        read_up_to(&mut f, &mut head).with_context(|| format!("cannot read {}", path.display()))?;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') && meta.is_file() {
        // Find the `format` first, streaming (a manifest of a large image is tens of MiB:
        // it is not loaded as a `serde_json::Value`; its reader streams it again).
        #[derive(serde::Deserialize)]
        struct Head {
            format: Option<serde_json::Value>,
        }
        let reader = std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        let head: Result<Head, _> = serde_json::from_reader(reader);
        if let Ok(Head {
            format: Some(serde_json::Value::String(format)),
        }) = &head
            && format == crate::fingerprint::image::MANIFEST_FORMAT
        {
            return Ok(Operand::Document {
                path: path.to_path_buf(),
                format: format.clone(),
                value: serde_json::Value::Null,
            });
        }
        if meta.len() <= MAX_DOCUMENT {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
                format!("{} starts like JSON but does not parse", path.display())
            })?;
            let format = value
                .get("format")
                .and_then(|f| f.as_str())
                .with_context(|| {
                    format!(
                        "{}: JSON document without a `format` member",
                        path.display()
                    )
                })?
                .to_string();
            return Ok(Operand::Document {
                path: path.to_path_buf(),
                format,
                value,
            });
        }
    }
    Ok(Operand::Image {
        path: path.to_path_buf(),
    })
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
