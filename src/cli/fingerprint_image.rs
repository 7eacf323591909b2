//! `vmledger fingerprint image PATH... [--manifest OUT] [--format auto|raw|qcow2]`: the
//! content root of disk images (raw, sparse, block devices, qcow2 and its chains), and
//! optionally a `vmledger-manifest/v1` with every chunk digest.
//!
//! One `vmledger-image/v1` object for one path, an array for several. With several paths an
//! image that cannot be fingerprinted does not hide the others: its error is printed on
//! stderr (and with `--json` stands in its place in the array as a `vmledger-image-error/v1`
//! object), the others' results are printed, and the exit status is 2. On a terminal (and
//! never with `--json` or when stderr is not a terminal), an image that takes more than
//! about a second shows a progress bar on stderr.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Ctx;
use crate::exit::{self, Exit};
use crate::fingerprint::image::manifest::ManifestWriter;
use crate::fingerprint::image::{self, FormatChoice, Image, ImageFingerprint, Progress};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// qcow2 when the file has the qcow2 magic, else raw (other formats are refused)
    Auto,
    /// The file's bytes as they are
    Raw,
    /// qcow2 (v2 or v3)
    Qcow2,
}

impl From<FormatArg> for FormatChoice {
    fn from(f: FormatArg) -> FormatChoice {
        match f {
            FormatArg::Auto => FormatChoice::Auto,
            FormatArg::Raw => FormatChoice::Raw,
            FormatArg::Qcow2 => FormatChoice::Qcow2,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disk images: raw files, block devices or qcow2 images (backing files are followed)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also write a vmledger-manifest/v1 with every chunk digest to OUT (a directory when
    /// several images are given: OUT/NAME.manifest.json)
    #[arg(long, value_name = "OUT")]
    pub manifest: Option<PathBuf>,
    /// How to read the images
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Hashing threads, the reading one included (0 = one per core)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
}

/// How long an image may take before its progress bar appears; the environment variable
/// `VMLEDGER_PROGRESS_DELAY_MS` overrides it (tests set 0).
const PROGRESS_DELAY: Duration = Duration::from_secs(1);

/// A progress bar on stderr that appears only once an image has taken about a second.
pub struct ProgressUi {
    started: Instant,
    delay: Duration,
    label: String,
    bar: OnceLock<ProgressBar>,
}

impl ProgressUi {
    /// A progress display for `label`, or `None` when output is JSON or stderr is not a
    /// terminal.
    pub fn new(ctx: &Ctx, label: &Path) -> Option<ProgressUi> {
        if ctx.out.json || !std::io::stderr().is_terminal() {
            return None;
        }
        let delay = std::env::var("VMLEDGER_PROGRESS_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(PROGRESS_DELAY, Duration::from_millis);
        Some(ProgressUi {
            started: Instant::now(),
            delay,
            label: label.display().to_string(),
            bar: OnceLock::new(),
        })
    }

    pub fn update(&self, p: Progress) {
        if self.bar.get().is_none() && self.started.elapsed() < self.delay {
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            bar
        });
        bar.set_position(p.done);
    }

    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

/// Run `f` with a progress callback for `path` (a no-op when no bar is shown).
pub fn with_progress<T>(
    ctx: &Ctx,
    path: &Path,
    f: impl FnOnce(Option<&(dyn Fn(Progress) + Sync)>) -> T,
) -> T {
    match ProgressUi::new(ctx, path) {
        Some(ui) => {
            let cb = |p: Progress| ui.update(p);
            let out = f(Some(&cb));
            ui.finish();
            out
        }
        None => f(None),
    }
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let many = args.paths.len() > 1;
    if let Some(out) = &args.manifest
        && many
        && !out.is_dir()
    {
        bail!(
            "--manifest {}: with several images, --manifest must name an existing directory",
            out.display()
        );
    }
    let outs: Vec<Option<PathBuf>> = args
        .paths
        .iter()
        .map(|p| args.manifest.as_ref().map(|m| manifest_path(m, p, many)))
        .collect();
    refuse_shared_manifests(&args.paths, &outs)?;
    if !many {
        let out = outs.into_iter().next().flatten();
        let fp = fingerprint_one(
            ctx,
            &args.paths[0],
            args.format.into(),
            args.threads,
            out.as_deref(),
        )?;
        ctx.out
            .emit(&fp.document(), || human(&fp, out.as_deref()))?;
        return Ok(Exit::Ok);
    }
    // Several images: one failing image does not hide the others. Each result (or error)
    // keeps its place; the errors go to stderr too, and the exit status is 2.
    let mut results: Vec<(&Path, anyhow::Result<ImageFingerprint>, Option<PathBuf>)> =
        Vec::with_capacity(args.paths.len());
    for (path, out) in args.paths.iter().zip(outs) {
        let r = fingerprint_one(ctx, path, args.format.into(), args.threads, out.as_deref());
        if let Err(e) = &r {
            ctx.out.note(format!("vmledger: error: {e:#}"));
        }
        results.push((path, r, out));
    }
    let docs: Vec<serde_json::Value> = results
        .iter()
        .map(|(path, r, _)| match r {
            Ok(fp) => serde_json::to_value(fp.document()).unwrap_or_default(),
            Err(e) => serde_json::json!({
                "format": IMAGE_ERROR_FORMAT,
                "path": path.to_string_lossy(),
                "error": format!("{e:#}"),
            }),
        })
        .collect();
    ctx.out.emit(&docs, || {
        results
            .iter()
            .filter_map(|(_, r, out)| r.as_ref().ok().map(|fp| human(fp, out.as_deref())))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let failed = results.iter().filter(|(_, r, _)| r.is_err()).count();
    if failed == 0 {
        return Ok(Exit::Ok);
    }
    ctx.out.note(format!(
        "vmledger: {failed} of {} images could not be fingerprinted (errors above{}); the results shown are for the others",
        results.len(),
        if ctx.out.json {
            ", and as vmledger-image-error/v1 entries in the array"
        } else {
            ""
        }
    ));
    // The results are complete on stdout; only the status says "error".
    Ok(Exit::Child(exit::ERROR))
}

/// `format` of the array entry standing for an image that could not be fingerprinted.
pub const IMAGE_ERROR_FORMAT: &str = "vmledger-image-error/v1";

/// Two images whose manifests would land on the same file (`a/disk.img` and `b/disk.img`
/// into one directory, or one image named twice) are refused before anything is read:
/// one manifest would silently replace the other.
fn refuse_shared_manifests(paths: &[PathBuf], outs: &[Option<PathBuf>]) -> anyhow::Result<()> {
    let mut seen: HashMap<&Path, &Path> = HashMap::new();
    for (path, out) in paths.iter().zip(outs) {
        let Some(out) = out else { continue };
        if let Some(first) = seen.insert(out, path) {
            bail!(
                "--manifest: {} and {} would both write their manifest to {}; fingerprint them in separate runs with different --manifest directories",
                first.display(),
                path.display(),
                out.display()
            );
        }
    }
    Ok(())
}

fn manifest_path(out: &Path, image: &Path, many: bool) -> PathBuf {
    if many || out.is_dir() {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        out.join(format!("{name}.manifest.json"))
    } else {
        out.to_path_buf()
    }
}

/// Fingerprint one image, streaming its chunk digests into a manifest at `manifest`.
fn fingerprint_one(
    ctx: &Ctx,
    path: &Path,
    format: FormatChoice,
    threads: usize,
    manifest: Option<&Path>,
) -> anyhow::Result<ImageFingerprint> {
    let image = Image::open(path, format)?;
    let Some(out) = manifest else {
        return Ok(with_progress(ctx, path, |p| {
            image.fingerprint(threads, p, &mut |_, _| Ok(()))
        })?);
    };
    let backing: Vec<String> = image
        .backing_chain()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut writer = ManifestWriter::create(
        out,
        &path.to_string_lossy(),
        image.format(),
        image.virtual_size(),
        &backing,
    )?;
    let fp = with_progress(ctx, path, |p| {
        image.fingerprint(threads, p, &mut |_, d| writer.push(d))
    })?;
    writer
        .finish(fp.allocated_bytes, &fp.content_root)
        .with_context(|| format!("writing the manifest of {}", path.display()))?;
    Ok(fp)
}

fn human(fp: &ImageFingerprint, manifest: Option<&Path>) -> String {
    let mut s = format!(
        "{}: {}, {} bytes ({} chunks of 4 MiB)\n  content_root  {}\n  read          {} bytes\n",
        fp.path.display(),
        fp.image_format.as_str(),
        fp.virtual_size,
        fp.chunk_count,
        image::hex(&fp.content_root),
        fp.allocated_bytes,
    );
    if !fp.backing_chain.is_empty() {
        let chain: Vec<String> = fp
            .backing_chain
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        s.push_str(&format!("  backing       {}\n", chain.join(" -> ")));
    }
    if let Some(m) = manifest {
        s.push_str(&format!("  manifest      {}\n", m.display()));
    }
    s.push_str(&format!("  took          {} ms\n", fp.elapsed_ms));
    s
}
