//! `vmledger backup manifest|verify`: a signed chunk manifest when a backup is taken (with
//! the backup recorded in its domain's host ledger, its content as a state of the domain
//! so the guard knows a restored copy of it), and before a restore, which regions differ
//! (exit 0 identical, 1 different) and what restoring means for the license, in plain
//! words (never changes the exit status).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use super::Ctx;
use super::fingerprint_image::with_progress;
use crate::backup::{self, BackupError, SignedManifest};
use crate::exit::Exit;
use crate::fingerprint::image::diff::{self as idiff, compare_image};
use crate::fingerprint::image::{self, FormatChoice, Image, Options};
use crate::hooks::{Host, HostDir, engine};
use crate::time::{self, Clock, SystemClock};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write IMAGE's chunk manifest, signed by the host key, with its domain, the time and
    /// the domain's host ledger head
    Manifest(ManifestArgs),
    /// Before a restore: check IMAGE against its manifest (exit 0 identical, 1 not, with the
    /// differing byte ranges) and say what restoring it means for the license
    Verify(VerifyArgs),
}

/// How to read images.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Auto,
    Raw,
    Qcow2,
}

impl From<Format> for FormatChoice {
    fn from(f: Format) -> FormatChoice {
        match f {
            Format::Auto => FormatChoice::Auto,
            Format::Raw => FormatChoice::Raw,
            Format::Qcow2 => FormatChoice::Qcow2,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    /// The backup image (raw or qcow2)
    pub image: PathBuf,
    /// Where to write the signed manifest
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// The domain the image belongs to (name, uuid or VMID) [default: found from the host
    /// ledgers by the image's file or content]. The backup is recorded in that domain's
    /// host ledger, its content as a state of the domain: the hook guard then refuses to
    /// start a copy of it while the domain runs
    #[arg(long)]
    pub domain: Option<String>,
    /// Image format
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Hashing threads, the reading one included (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The image to restore
    pub image: PathBuf,
    /// Its signed manifest (from `vmledger backup manifest`)
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// Also read the appliance's own ledger at PATH inside the image (needs virt-cat)
    #[arg(long, value_name = "PATH")]
    pub guest_ledger: Option<String>,
    /// Image format
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Hashing threads, the reading one included (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    match cmd {
        Command::Manifest(a) => manifest(ctx, a),
        Command::Verify(a) => verify(ctx, a),
    }
}

fn manifest(ctx: &Ctx, a: ManifestArgs) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    let dir = HostDir::new(cfg.state_dir()?);
    let fp = with_progress(ctx, &a.image, |progress| {
        image::fingerprint(
            &a.image,
            &Options {
                format: a.format.into(),
                keep_chunks: true,
                threads: a.threads,
                progress,
            },
        )
    })?;
    let root = image::hex(&fp.content_root);
    let domain = match &a.domain {
        Some(q) => {
            let (instance, _) = engine::find_domain(&dir, q)?.ok_or_else(|| {
                crate::hooks::HookError::UnknownDomain {
                    query: q.clone(),
                    dir: dir.root.clone(),
                }
            })?;
            backup::domain_of_instance(&dir, &instance)?
        }
        None => backup::domain_of_image(&dir, &a.image, Some(&root))?,
    };
    // Record the backup in the domain's host ledger (and its content as a state of the
    // domain, unless pristine) before signing, so the signed head is that record.
    let recorded = match &domain {
        Some(d) => {
            let clock = SystemClock;
            let host = Host::open(cfg.state_dir()?, cfg.hooks.clone(), &clock)?;
            Some(host.record_backup(
                &d.instance,
                &a.image.to_string_lossy(),
                &root,
                fp.virtual_size,
            )?)
        }
        None => None,
    };
    let head = match &domain {
        Some(d) => backup::ledger_head(&dir, &d.instance)?,
        None => None,
    };
    let key = dir.load_or_create_key()?;
    let signed = SignedManifest::sign(
        &fp,
        domain.clone(),
        head.clone(),
        time::format_at(SystemClock.now()),
        &key,
    )?;
    signed
        .write(&a.output)
        .with_context(|| format!("cannot write the manifest to {}", a.output.display()))?;
    let doc = json!({
        "format": "vmledger-backup-manifest-written/v1",
        "path": a.output,
        "image": signed.body.image,
        "domain": domain,
        "host_ledger": head,
        "created_at": signed.body.created_at,
        "public_key": signed.body.public_key,
        "recorded": recorded,
    });
    ctx.out.emit(&doc, || {
        let mut s = format!(
            "wrote {}: {} chunks, content root {root}",
            a.output.display(),
            signed.chunks.len()
        );
        match (&domain, &head) {
            (Some(d), Some(h)) => s.push_str(&format!(
                "\ndomain {} ({}), host ledger head seq {} {}",
                d.name, d.uuid, h.seq, h.hash
            )),
            _ => s.push_str(
                "\nno domain on this host is known to use this image (pass --domain to name it)",
            ),
        }
        if let Some(r) = &recorded {
            s.push_str(&format!(
                "\nrecorded in the host ledger (seq {}{}): {}",
                r.seq,
                if r.running {
                    ", the domain is running"
                } else {
                    ""
                },
                r.why
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}

fn verify(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    let m = SignedManifest::read(&a.manifest)?;
    let img = Image::open(&a.image, a.format.into())?;
    let (fp, ranges) = with_progress(ctx, &a.image, |progress| {
        compare_image(
            img,
            &m.chunks,
            m.body.image.virtual_size,
            a.threads,
            progress,
        )
    })?;
    let image_root = image::hex(&fp.content_root);
    let identical = ranges.is_empty()
        && fp.virtual_size == m.body.image.virtual_size
        && image_root == m.body.image.content_root;

    let dir = HostDir::new(cfg.state_dir()?);
    let this_host = dir.load_key()?.map(|k| k.public_key_b64());
    let impact = backup::impact(&dir, &m.body)?;
    let mut notes = Vec::new();
    if !identical {
        notes.push(
            "The image differs from the manifest: the licensing section describes the state the manifest recorded, not this image."
                .to_string(),
        );
        if let Some(d) = backup::domain_of_root(&dir, &image_root)? {
            notes.push(format!(
                "The image itself holds a state domain {} ({}) reached after running.",
                d.name, d.uuid
            ));
        }
    }
    let guest = match &a.guest_ledger {
        None => None,
        Some(inner) => Some(read_guest(&a.image, inner)),
    };
    let signed_here = this_host.as_deref() == Some(m.body.public_key.as_str());
    let differing = idiff::total(&ranges);
    let doc = json!({
        "format": "vmledger-backup-verify/v1",
        "image": {
            "path": a.image,
            "image_format": fp.image_format,
            "virtual_size": fp.virtual_size,
            "content_root": image_root,
        },
        "manifest": {
            "path": a.manifest,
            "virtual_size": m.body.image.virtual_size,
            "content_root": m.body.image.content_root,
            "created_at": m.body.created_at,
            "domain": m.body.domain,
            "host_ledger": m.body.host_ledger,
            "public_key": m.body.public_key,
            "signed_by_this_host": signed_here,
        },
        "identical": identical,
        "chunk_size": image::CHUNK_SIZE,
        "ranges": ranges,
        "differing_bytes": differing,
        "licensing": impact,
        "notes": notes,
        "guest_ledger": guest,
    });
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        if identical {
            s.push_str(&format!(
                "integrity: OK: {} is identical to the manifest (content root {image_root})\n",
                a.image.display()
            ));
        } else {
            s.push_str(&format!(
                "integrity: DIFFERENT from the manifest: {}:\n",
                idiff::summary(&ranges)
            ));
            for r in &ranges {
                s.push_str(&format!(
                    "  offset {} length {} (bytes {}..{})\n",
                    r.offset,
                    r.length,
                    r.offset,
                    r.offset + r.length
                ));
            }
        }
        if !signed_here {
            s.push_str(
                "  the manifest was signed by another host's key (it verifies under its own key)\n",
            );
        }
        s.push_str("licensing (from the host ledger; does not change the exit status):\n");
        for line in impact.summary.iter().chain(notes.iter()) {
            s.push_str(&format!("  {line}\n"));
        }
        if let Some(g) = &guest {
            match g.get("error").and_then(|e| e.as_str()) {
                Some(e) => s.push_str(&format!("guest ledger: not read: {e}\n")),
                None => s.push_str(&format!(
                    "guest ledger: instance {} head seq {} {} at {}{}\n",
                    g["instance"].as_str().unwrap_or("?"),
                    g["head_seq"],
                    g["head_hash"].as_str().unwrap_or("?"),
                    g["head_at"].as_str().unwrap_or("?"),
                    if g["verified"] == true {
                        ""
                    } else {
                        " (DOES NOT VERIFY)"
                    }
                )),
            }
        }
        s
    })?;
    Ok(Exit::from_bool(identical))
}

/// Read the guest's ledger out of the image; a failure is reported in the document, never
/// an error of the command (it is optional information).
fn read_guest(image_path: &Path, inner: &str) -> serde_json::Value {
    let work = std::env::temp_dir().join(format!(
        "vmledger-guest-{}-{}",
        std::process::id(),
        SystemClock.now().timestamp_millis()
    ));
    let result = crate::fsutil::ensure_private_dir(&work)
        .map_err(|e| BackupError::Io {
            path: work.clone(),
            action: "creating",
            source: e,
        })
        .and_then(|()| backup::guest_ledger(image_path, inner, &work));
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(g) => serde_json::to_value(g).unwrap_or_default(),
        Err(e) => json!({"path": inner, "error": e.to_string()}),
    }
}
