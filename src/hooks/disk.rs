//! A disk's identity and content root as the host ledger records them.
//!
//! - [`FileStat`]: which file (`dev:ino`, or `block:MAJOR:MINOR`) and the metadata that
//!   reveals a change (size, mtime, ctime, to the nanosecond).
//! - [`quick`]: the quick path: when a disk's file and every backing file still have the
//!   metadata recorded with a content root (at the domain's last release, or its last
//!   start), that root still holds and nothing is read. Block devices never take it: their
//!   mtime does not change when they are written.
//! - [`hash`]: fingerprint a disk at rest, with progress reported to a callback, checking
//!   that the file did not change while it was read.
//!
//! Reads images and stats files; never writes anything and never talks to a hypervisor.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::vm::VmDisk;
use crate::fingerprint::image::{self, Image, Progress};

/// A file's identity and change-revealing metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    pub path: String,
    /// `DEV:INO` (decimal) for a file, `block:MAJOR:MINOR` for a block device.
    pub id: String,
    pub size: u64,
    /// `SECONDS.NANOSECONDS` since the epoch (strings: nanosecond times exceed the
    /// integers signed documents may hold).
    pub mtime: String,
    pub ctime: String,
}

impl FileStat {
    pub fn is_block(&self) -> bool {
        self.id.starts_with("block:")
    }
}

/// Stat `path` (following symlinks): files and block devices only.
pub fn stat(path: &Path) -> std::io::Result<FileStat> {
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    let (id, size) = if ft.is_block_device() {
        let rdev = meta.rdev();
        let size = File::open(path)?.seek(SeekFrom::End(0))?;
        (
            format!(
                "block:{}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            ),
            size,
        )
    } else if ft.is_file() {
        (format!("{}:{}", meta.dev(), meta.ino()), meta.len())
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ));
    };
    Ok(FileStat {
        path: path.to_string_lossy().into_owned(),
        id,
        size,
        mtime: format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
        ctime: format!("{}.{:09}", meta.ctime(), meta.ctime_nsec()),
    })
}

/// How a disk's content root was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootVia {
    /// The recorded root still holds: the file's metadata is unchanged.
    Quick,
    /// The disk was read and hashed.
    Hashed,
    /// Not hashed (`--no-hash-unknown`, or a block device without a recorded root).
    NotHashed,
    /// Not a local file or block device (network disks): only its source name is known.
    NotLocal,
    /// Reading it failed; `error` says why.
    Error,
}

/// One disk as a `host_boot` or `disk_at_rest` entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    pub target: String,
    pub device: String,
    pub source: Option<String>,
    /// The image format the hypervisor declares (`raw`, `qcow2`); absent: detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The top file.
    pub file: Option<FileStat>,
    /// Backing files, nearest first.
    #[serde(default)]
    pub backing: Vec<FileStat>,
    pub content_root: Option<String>,
    pub virtual_size: Option<u64>,
    pub root_via: RootVia,
    /// Time spent hashing, when it was hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DiskRecord {
    fn base(d: &VmDisk, via: RootVia) -> DiskRecord {
        DiskRecord {
            target: d.target.clone(),
            device: d.device.clone(),
            source: d.source.clone(),
            format: None,
            file: None,
            backing: Vec::new(),
            content_root: None,
            virtual_size: None,
            root_via: via,
            hash_ms: None,
            error: None,
        }
    }

    /// A disk that is not a local path.
    pub fn not_local(d: &VmDisk) -> DiskRecord {
        DiskRecord::base(d, RootVia::NotLocal)
    }

    /// The `dev:ino` (or block) identity, when known.
    pub fn id(&self) -> Option<&str> {
        self.file.as_ref().map(|f| f.id.as_str())
    }
}

/// The quick path: `known` records (the domain's last release and last start) whose file
/// and backing files all still have the recorded metadata give the root without reading.
pub fn quick(d: &VmDisk, known: &[DiskRecord]) -> Option<DiskRecord> {
    let path = d.path.as_deref()?;
    let now = stat(path).ok()?;
    if now.is_block() {
        return None;
    }
    known.iter().find_map(|k| {
        let root = k.content_root.as_ref()?;
        if k.file.as_ref() != Some(&now) {
            return None;
        }
        for b in &k.backing {
            if stat(Path::new(&b.path)).ok().as_ref() != Some(b) {
                return None;
            }
        }
        Some(DiskRecord {
            target: d.target.clone(),
            device: d.device.clone(),
            source: d.source.clone(),
            format: k.format.clone(),
            file: Some(now.clone()),
            backing: k.backing.clone(),
            content_root: Some(root.clone()),
            virtual_size: k.virtual_size,
            root_via: RootVia::Quick,
            hash_ms: None,
            error: None,
        })
    })
}

/// Stat a disk without hashing it (`--no-hash-unknown`).
pub fn unhashed(d: &VmDisk) -> DiskRecord {
    let mut r = DiskRecord::base(d, RootVia::NotHashed);
    if let Some(p) = &d.path {
        match stat(p) {
            Ok(s) => r.file = Some(s),
            Err(e) => {
                r.root_via = RootVia::Error;
                r.error = Some(format!("{}: {e}", p.display()));
            }
        }
    }
    r
}

/// Hash a disk at rest. Errors are recorded in the result, never raised: a disk that
/// cannot be read is a fact to record, and the start's fate is the hypervisor's call.
pub fn hash(d: &VmDisk, progress: Option<&(dyn Fn(Progress) + Sync)>) -> DiskRecord {
    let mut r = DiskRecord::base(d, RootVia::Hashed);
    let Some(path) = d.path.as_deref() else {
        return DiskRecord::not_local(d);
    };
    let fail = |mut r: DiskRecord, msg: String| {
        r.root_via = RootVia::Error;
        r.content_root = None;
        r.error = Some(msg);
        r
    };
    let before = match stat(path) {
        Ok(s) => s,
        Err(e) => return fail(r, format!("{}: {e}", path.display())),
    };
    r.file = Some(before.clone());
    if let Some(f) = &d.unreadable_format {
        return fail(
            r,
            format!("image format `{f}` is not one vmledger reads (raw, qcow2)"),
        );
    }
    let started = Instant::now();
    let img = match Image::open(path, d.format) {
        Ok(i) => i,
        Err(e) => return fail(r, e.to_string()),
    };
    let chain: Vec<PathBuf> = img.backing_chain().to_vec();
    let fp = match img.fingerprint(0, progress, &mut |_, _| Ok(())) {
        Ok(fp) => fp,
        Err(e) => return fail(r, e.to_string()),
    };
    r.hash_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    match stat(path) {
        Ok(after) if after == before => {}
        Ok(_) => {
            return fail(
                r,
                format!("{} changed while it was being read", path.display()),
            );
        }
        Err(e) => return fail(r, format!("{}: {e}", path.display())),
    }
    for b in &chain {
        match stat(b) {
            Ok(s) => r.backing.push(s),
            Err(e) => return fail(r, format!("backing file {}: {e}", b.display())),
        }
    }
    r.content_root = Some(image::hex(&fp.content_root));
    r.virtual_size = Some(fp.virtual_size);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::image::FormatChoice;

    fn disk(path: &Path) -> VmDisk {
        VmDisk {
            target: "vda".into(),
            device: "disk".into(),
            source: Some(path.display().to_string()),
            path: Some(path.to_path_buf()),
            format: FormatChoice::Raw,
            unreadable_format: None,
            ignored: None,
        }
    }

    #[test]
    fn quick_path_holds_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let d = disk(&p);
        let h = hash(&d, None);
        assert_eq!(h.root_via, RootVia::Hashed, "{h:?}");
        let q = quick(&d, std::slice::from_ref(&h)).expect("quick path");
        assert_eq!(q.root_via, RootVia::Quick);
        assert_eq!(q.content_root, h.content_root);
        // Any write changes mtime/ctime: the recorded root no longer holds.
        std::fs::write(&p, vec![8u8; 8192]).unwrap();
        assert!(quick(&d, &[h]).is_none());
    }

    #[test]
    fn unreadable_disks_are_recorded_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(&dir.path().join("missing.raw"));
        let h = hash(&d, None);
        assert_eq!(h.root_via, RootVia::Error);
        assert!(h.error.unwrap().contains("missing.raw"));
    }
}
