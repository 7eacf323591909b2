//! Backups: a signed chunk manifest of a disk image (`vmledger-backup-manifest/v1`), and
//! what verifying an image against it says: which byte ranges differ, and what restoring
//! it means for the license, in plain words, from the host ledgers.
//!
//! # The signed manifest (the contract; `docs/formats/backup.md` has it to the byte)
//! `{"format": "vmledger-backup-manifest/v1", "body": {...}, "sig": "...", "chunks": [...]}`.
//! The signed message is `vmledger/backup-manifest/v1\n` followed by the RFC 8785
//! canonical `body`; `sig` is the standard base64 Ed25519 signature by `body.public_key`
//! (the host key). `body.image` is the image's fingerprint (as in `vmledger-manifest/v1`,
//! without the digests); `chunks` are the 4 MiB chunk digests, bound to the signature
//! through `body.image.content_root` (their SHA-256), so a reader checks both.
//!
//! This module reads images and host ledgers and writes only the manifest file asked for.
//! It never prints; running `virt-cat` for `--guest-ledger` is the only process it starts.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;
use crate::fingerprint::image::manifest::{Digests, HexList};
use crate::fingerprint::image::{
    self, CHUNK_SIZE, Digest, ImageFingerprint, ImageFormat, MAX_VIRTUAL_SIZE, Manifest,
    chunk_count, root_of,
};
use crate::hooks::engine::{self, qemu_alive, read_pid};
use crate::hooks::state::RootSource;
use crate::hooks::{HookError, HostDir, kinds};
use crate::keys::{self, SigningKey};
use crate::ledger::Ledger;

/// The signed manifest's `format`.
pub const BACKUP_MANIFEST_FORMAT: &str = "vmledger-backup-manifest/v1";
/// Domain-separation prefix of the signed message.
pub const SIGNATURE_PREFIX: &[u8] = b"vmledger/backup-manifest/v1\n";
/// Largest signed manifest read: a 16 TiB image's digests and some room.
const MAX_MANIFEST_BYTES: u64 = 320 << 20;

/// Errors naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("cannot sign the manifest: {0}")]
    Sign(String),
    #[error(
        "`virt-cat` (Debian package libguestfs-tools) is not installed: the guest's own ledger cannot be read from the image"
    )]
    VirtCatMissing,
    #[error("virt-cat -a {image} {path}: {message}")]
    VirtCat {
        image: PathBuf,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

fn bad(path: &Path, message: impl Into<String>) -> BackupError {
    BackupError::Manifest {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The image a manifest describes (the `vmledger-manifest/v1` members but the digests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub path: String,
    pub image_format: ImageFormat,
    pub virtual_size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub allocated_bytes: u64,
    pub content_root: String,
    pub backing_chain: Vec<String>,
}

/// The domain an image belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRef {
    /// The host ledger's instance (the uuid without dashes).
    pub instance: String,
    pub uuid: String,
    pub name: String,
}

/// A host ledger's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerHead {
    pub instance: String,
    pub seq: u64,
    pub hash: String,
    pub at: String,
}

/// The signed part of a backup manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub image: ImageInfo,
    pub domain: Option<DomainRef>,
    pub created_at: String,
    pub host_ledger: Option<LedgerHead>,
    /// The signing host key: standard base64 of the raw 32-byte Ed25519 key.
    pub public_key: String,
}

impl Body {
    /// The signed message: the prefix and the canonical body.
    pub fn message(&self) -> Result<Vec<u8>, canonical::CanonError> {
        let mut m = SIGNATURE_PREFIX.to_vec();
        m.extend(canonical::to_vec(self)?);
        Ok(m)
    }
}

/// A signed backup manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    pub body: Body,
    pub sig: String,
    pub chunks: Vec<Digest>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'static str,
    body: &'a Body,
    sig: &'a str,
    chunks: HexList<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    format: String,
    body: Body,
    sig: String,
    chunks: Digests,
}

impl SignedManifest {
    /// Sign the manifest of an image fingerprinted with its chunk digests.
    pub fn sign(
        fp: &ImageFingerprint,
        domain: Option<DomainRef>,
        host_ledger: Option<LedgerHead>,
        created_at: String,
        key: &SigningKey,
    ) -> Result<SignedManifest, BackupError> {
        let m = Manifest::from_fingerprint(fp)
            .ok_or_else(|| BackupError::Sign("the fingerprint has no chunk digests".into()))?;
        let body = Body {
            image: ImageInfo {
                path: m.path.clone(),
                image_format: m.image_format,
                virtual_size: m.virtual_size,
                chunk_size: CHUNK_SIZE,
                chunk_count: m.chunk_count(),
                allocated_bytes: m.allocated_bytes,
                content_root: image::hex(&m.content_root),
                backing_chain: m.backing_chain.clone(),
            },
            domain,
            created_at,
            host_ledger,
            public_key: key.public_key_b64(),
        };
        let msg = body
            .message()
            .map_err(|e| BackupError::Sign(e.to_string()))?;
        Ok(SignedManifest {
            sig: keys::b64_encode(&key.sign(&msg)),
            body,
            chunks: m.chunks,
        })
    }

    /// Check the signature, the chunk size and count, and that the digests hash to the
    /// signed content root; the error says which fails.
    pub fn check(&self) -> Result<(), String> {
        let pk = keys::decode_public_key(&self.body.public_key, "body.public_key")
            .map_err(|e| e.to_string())?;
        let msg = self.body.message().map_err(|e| e.to_string())?;
        let sig = keys::b64_decode(&self.sig).ok_or("sig is not standard base64")?;
        if !keys::verify(&pk, &msg, &sig) {
            return Err(
                "the signature does not verify: the manifest was altered or damaged after it was signed"
                    .into(),
            );
        }
        let img = &self.body.image;
        if img.chunk_size != CHUNK_SIZE {
            return Err(format!(
                "body.image.chunk_size is {}; version 1 uses {CHUNK_SIZE}",
                img.chunk_size
            ));
        }
        if img.virtual_size > MAX_VIRTUAL_SIZE {
            return Err("body.image.virtual_size is above the 16 TiB limit".into());
        }
        let want = chunk_count(img.virtual_size);
        if img.chunk_count != want || self.chunks.len() as u64 != want {
            return Err(format!(
                "a {}-byte image has {want} chunks; body.image.chunk_count says {} and chunks lists {}",
                img.virtual_size,
                img.chunk_count,
                self.chunks.len()
            ));
        }
        if image::hex(&root_of(&self.chunks)) != img.content_root {
            return Err(
                "the chunk digests do not hash to the signed content_root (they were altered)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Write the manifest to `out` atomically (mode 0600).
    pub fn write(&self, out: &Path) -> Result<(), BackupError> {
        let mut bytes = Vec::with_capacity(self.chunks.len() * 70 + 4096);
        {
            let mut w = BufWriter::new(&mut bytes);
            serde_json::to_writer_pretty(
                &mut w,
                &FileOut {
                    format: BACKUP_MANIFEST_FORMAT,
                    body: &self.body,
                    sig: &self.sig,
                    chunks: HexList(&self.chunks),
                },
            )
            .map_err(|e| BackupError::Sign(e.to_string()))?;
            w.write_all(b"\n").map_err(|e| BackupError::Io {
                path: out.to_path_buf(),
                action: "writing",
                source: e,
            })?;
        }
        crate::fsutil::write_output(out, &bytes).map_err(|e| BackupError::Io {
            path: out.to_path_buf(),
            action: "writing",
            source: e,
        })
    }

    /// Read and check a signed manifest.
    pub fn read(path: &Path) -> Result<SignedManifest, BackupError> {
        let f = File::open(path).map_err(|e| BackupError::Io {
            path: path.to_path_buf(),
            action: "opening",
            source: e,
        })?;
        let meta = f.metadata().map_err(|e| BackupError::Io {
            path: path.to_path_buf(),
            action: "inspecting",
            source: e,
        })?;
        if !meta.is_file() {
            return Err(bad(path, "is not a regular file"));
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(
                path,
                format!("is larger than {MAX_MANIFEST_BYTES} bytes: not a backup manifest"),
            ));
        }
        let raw: FileIn =
            serde_json::from_reader(BufReader::with_capacity(1 << 16, f)).map_err(|e| {
                bad(
                    path,
                    format!("it is not a valid {BACKUP_MANIFEST_FORMAT} document: {e}"),
                )
            })?;
        if raw.format != BACKUP_MANIFEST_FORMAT {
            return Err(bad(
                path,
                format!("format is `{}`, not `{BACKUP_MANIFEST_FORMAT}`", raw.format),
            ));
        }
        let m = SignedManifest {
            body: raw.body,
            sig: raw.sig,
            chunks: raw.chunks.0,
        };
        m.check().map_err(|p| bad(path, p))?;
        Ok(m)
    }
}

// ----- the host ledger's view ---------------------------------------------------------

/// What restoring a state means for the license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Meaning {
    /// The domain is not running and has run since: a restore (allowed once; its current
    /// disk must never run again).
    Restore,
    /// The domain is running: starting the backup too would run a duplicate.
    Duplicate,
    /// The state is the domain's latest: restoring changes nothing.
    Latest,
    /// No host ledger here knows the state.
    Unknown,
}

/// When the state was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateRecord {
    /// `at_rest` (a recorded stop reached it), `backup` (recorded when a backup manifest of
    /// the domain was made) or `manifest` (only the manifest's host ledger head places it).
    pub source: &'static str,
    pub seq: u64,
    pub at: String,
}

/// The licensing impact of restoring a state, from the host ledgers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Impact {
    pub known: bool,
    pub domain: Option<DomainRef>,
    pub state: Option<StateRecord>,
    pub runs_since: u64,
    pub last_start: Option<String>,
    pub running_now: bool,
    pub meaning: Meaning,
    /// Plain words, one sentence per line.
    pub summary: Vec<String>,
}

/// The domain of a host ledger instance.
pub fn domain_of_instance(dir: &HostDir, instance: &str) -> Result<Option<DomainRef>, BackupError> {
    let Some(l) = dir.open_ledger(instance)? else {
        return Ok(None);
    };
    let g = l.genesis()?;
    let uuid = g
        .body
        .data
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = crate::hooks::engine::domain_name(dir, instance)?.unwrap_or_else(|| instance.into());
    Ok(Some(DomainRef {
        instance: instance.to_string(),
        uuid,
        name,
    }))
}

/// The domain whose disk `path` is (same file), or whose recorded state `root` is.
pub fn domain_of_image(
    dir: &HostDir,
    path: &Path,
    root: Option<&str>,
) -> Result<Option<DomainRef>, BackupError> {
    if let Ok(st) = crate::hooks::disk::stat(path) {
        for instance in dir.instances()? {
            let Some(l) = dir.open_ledger(&instance)? else {
                continue;
            };
            for kind in [kinds::HOST_BOOT, kinds::DISK_AT_REST, kinds::HOST_RUNNING] {
                if let Some(e) = l.latest_of_kind(kind)?
                    && crate::hooks::engine::recorded_disks(&e)
                        .iter()
                        .any(|d| d.id() == Some(st.id.as_str()))
                {
                    return domain_of_instance(dir, &instance);
                }
            }
        }
    }
    match root {
        Some(root) => domain_of_root(dir, root),
        None => Ok(None),
    }
}

/// The domain that most recently reached the state `root` after running.
pub fn domain_of_root(dir: &HostDir, root: &str) -> Result<Option<DomainRef>, BackupError> {
    match dir.roots(root)?.into_iter().max_by_key(|r| r.at.clone()) {
        Some(r) => domain_of_instance(dir, &r.instance),
        None => Ok(None),
    }
}

/// The head of a domain's host ledger.
pub fn ledger_head(dir: &HostDir, instance: &str) -> Result<Option<LedgerHead>, BackupError> {
    let Some(l) = dir.open_ledger(instance)? else {
        return Ok(None);
    };
    Ok(l.head()?.map(|h| LedgerHead {
        instance: instance.to_string(),
        seq: h.seq,
        hash: h.hash,
        at: h.at,
    }))
}

fn running_now(dir: &HostDir, instance: &str) -> Result<bool, BackupError> {
    let Some(m) = dir.marker(instance)? else {
        return Ok(false);
    };
    if let Some(p) = read_pid(Path::new(&m.pid_file)).or(m.pid) {
        return Ok(qemu_alive(p));
    }
    // Marked running without a pid yet: it is starting.
    Ok(m.boot_id == crate::time::read_kernel_clock().boot_id)
}

/// What restoring the state `root` described by `body` means, from the host ledgers in
/// `dir`.
pub fn impact(dir: &HostDir, body: &Body) -> Result<Impact, BackupError> {
    let root = body.image.content_root.as_str();
    let reached = dir.roots(root)?;
    let instance = match &body.domain {
        Some(d) if dir.open_ledger(&d.instance)?.is_some() => Some(d.instance.clone()),
        _ => reached
            .iter()
            .max_by_key(|r| r.at.clone())
            .map(|r| r.instance.clone()),
    };
    let Some(instance) = instance else {
        return Ok(Impact {
            known: false,
            domain: body.domain.clone(),
            state: None,
            runs_since: 0,
            last_start: None,
            running_now: false,
            meaning: Meaning::Unknown,
            summary: vec![format!(
                "No host ledger on this host knows this state{}: its licensing impact is unknown here. Verify it on the host where the domain runs.",
                body.domain
                    .as_ref()
                    .map(|d| format!(" or its domain {} ({})", d.name, d.uuid))
                    .unwrap_or_default()
            )],
        });
    };
    let domain = domain_of_instance(dir, &instance)?;
    let name = domain.as_ref().map_or(instance.clone(), |d| d.name.clone());
    let mut summary = Vec::new();
    let record = reached.iter().find(|r| r.instance == instance);
    let state = if let Some(r) = record {
        let source = match r.source {
            RootSource::AtRest => {
                summary.push(format!(
                    "This backup holds the state domain {name} reached when it stopped at {} (host ledger seq {}).",
                    r.stopped_at, r.seq
                ));
                "at_rest"
            }
            RootSource::Backup => {
                summary.push(format!(
                    "This backup holds the state domain {name} had when a backup manifest of it was made at {} (host ledger seq {}{}).",
                    r.stopped_at,
                    r.seq,
                    if r.superseded {
                        "; it ran on past it"
                    } else {
                        ""
                    }
                ));
                "backup"
            }
        };
        Some(StateRecord {
            source,
            seq: r.seq,
            at: r.stopped_at.clone(),
        })
    } else if let Some(h) = body.host_ledger.as_ref().filter(|h| h.instance == instance) {
        summary.push(format!(
            "The manifest was made at {} for domain {name}, whose host ledger head was then seq {} (the state itself was not recorded at a stop).",
            body.created_at, h.seq
        ));
        Some(StateRecord {
            source: "manifest",
            seq: h.seq,
            at: h.at.clone(),
        })
    } else {
        summary.push(format!(
            "Domain {name} has a host ledger here, but this state was never recorded at one of its stops."
        ));
        None
    };
    let (runs_since, last_start) = match (record, &state) {
        (Some(r), _) => engine::state_runs_since(dir, r)?,
        (None, Some(s)) => engine::runs_since(dir, &instance, s.seq)?,
        (None, None) => (0, None),
    };
    let running = running_now(dir, &instance)?;
    if state.is_some() {
        if runs_since > 0 {
            summary.push(match &last_start {
                Some(t) => format!(
                    "{name} has started {runs_since} time(s) since, most recently at {t}: a newer state of this VM has run."
                ),
                None => format!(
                    "{name} kept running after this backup was made: a newer state of this VM has run."
                ),
            });
        } else {
            summary.push(format!(
                "{name} has not run since: this backup is its latest state."
            ));
        }
    }
    let meaning = if running {
        summary.push(format!(
            "{name} is running now: starting this backup while it runs would be a duplicate and get one of them disabled. Stop {name} first; after the restore its current disk must never run again."
        ));
        Meaning::Duplicate
    } else if state.is_none() {
        summary.push(format!(
            "Restoring it means {name} continues from a state its host ledger cannot place; keep its current disk as a backup and never run both."
        ));
        Meaning::Unknown
    } else if runs_since > 0 {
        summary.push(format!(
            "Restoring it is a restore, which is allowed: the restored copy becomes the live appliance, and {name}'s current disk must never run again (keep it only as a backup)."
        ));
        Meaning::Restore
    } else {
        summary.push("Restoring it changes nothing for the license.".into());
        Meaning::Latest
    };
    Ok(Impact {
        known: true,
        domain,
        state,
        runs_since,
        last_start,
        running_now: running,
        meaning,
        summary,
    })
}

// ----- the guest's own ledger --------------------------------------------------------

/// The head of the appliance's own ledger, read from inside an image with `virt-cat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestLedger {
    pub path: String,
    pub instance: String,
    pub serial: Option<String>,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub head_at: String,
    /// Every hash, signature and link verified.
    pub verified: bool,
}

fn virt_cat(image: &Path, inner: &str, out: &Path) -> Result<bool, BackupError> {
    let f = File::create(out).map_err(|e| BackupError::Io {
        path: out.to_path_buf(),
        action: "creating",
        source: e,
    })?;
    let r = std::process::Command::new("virt-cat")
        .arg("-a")
        .arg(image)
        .arg(inner)
        .stdin(std::process::Stdio::null())
        .stdout(f)
        .stderr(std::process::Stdio::piped())
        .output();
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackupError::VirtCatMissing),
        Err(e) => Err(BackupError::VirtCat {
            image: image.to_path_buf(),
            path: inner.to_string(),
            message: e.to_string(),
        }),
        Ok(o) if o.status.success() => Ok(true),
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if msg.contains("No such file") {
                Ok(false)
            } else {
                Err(BackupError::VirtCat {
                    image: image.to_path_buf(),
                    path: inner.to_string(),
                    message: msg,
                })
            }
        }
    }
}

/// Copy the guest's ledger (and its WAL) out of `image` into `workdir` with `virt-cat` and
/// report its head.
pub fn guest_ledger(image: &Path, inner: &str, workdir: &Path) -> Result<GuestLedger, BackupError> {
    let db = workdir.join("guest-ledger.sqlite");
    if !virt_cat(image, inner, &db)? {
        return Err(BackupError::VirtCat {
            image: image.to_path_buf(),
            path: inner.to_string(),
            message: "no such file in the image".into(),
        });
    }
    let wal = workdir.join("guest-ledger.sqlite-wal");
    if !virt_cat(image, &format!("{inner}-wal"), &wal)? {
        let _ = std::fs::remove_file(&wal);
    }
    let l = Ledger::open(&db)?;
    let g = l.genesis()?;
    let head = l.head()?.ok_or_else(|| BackupError::VirtCat {
        image: image.to_path_buf(),
        path: inner.to_string(),
        message: "the ledger is empty".into(),
    })?;
    let report = crate::ledger::verify::verify(&l, None)?;
    Ok(GuestLedger {
        path: inner.to_string(),
        instance: g.body.instance.clone(),
        serial: g
            .body
            .data
            .get("serial")
            .and_then(Value::as_str)
            .map(str::to_string),
        entries: l.count()?,
        head_seq: head.seq,
        head_hash: head.hash,
        head_at: head.at,
        verified: report.ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::image::ImageFormat;

    fn sample(key: &SigningKey) -> SignedManifest {
        let chunks = vec![[1u8; 32], [2u8; 32]];
        let fp = ImageFingerprint {
            path: "/img/a.qcow2".into(),
            image_format: ImageFormat::Qcow2,
            virtual_size: CHUNK_SIZE + 512,
            chunk_size: CHUNK_SIZE,
            chunk_count: 2,
            allocated_bytes: 4096,
            content_root: root_of(&chunks),
            backing_chain: vec![],
            elapsed_ms: 1,
            chunks: Some(chunks),
        };
        SignedManifest::sign(&fp, None, None, "2026-12-04T10:00:00.000Z".into(), key).unwrap()
    }

    #[test]
    fn round_trip_and_tamper() {
        let key = SigningKey::from_seed(&[9u8; 32]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let m = sample(&key);
        m.check().unwrap();
        m.write(&p).unwrap();
        assert_eq!(SignedManifest::read(&p).unwrap(), m);

        let mut t = m.clone();
        t.body.image.path = "/img/b.qcow2".into();
        assert!(t.check().unwrap_err().contains("signature"));
        let mut t = m.clone();
        t.chunks[0] = [3u8; 32];
        assert!(t.check().unwrap_err().contains("content_root"));
        let mut t = m;
        t.chunks.pop();
        assert!(t.check().unwrap_err().contains("chunks"));
    }
}
