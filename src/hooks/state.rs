//! The host's derived state files: which domains run here (running markers), which
//! content roots domains reached after running (the roots index), one-time overrides, and
//! the hook log. All are small JSON files written atomically (0600) under the guard lock;
//! the host ledgers remain the record they are derived from.
//!
//! Reading a state file that does not parse is an error naming the file: a marker that
//! cannot be read must not silently let a duplicate start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::HookError;
use super::host::HostDir;
use crate::fsutil;

/// `format` of a running marker.
pub const RUNNING_FORMAT: &str = "vmledger-host-running/v1";
/// `format` of a roots index record.
pub const ROOT_FORMAT: &str = "vmledger-host-root/v1";
/// `format` of a one-time override.
pub const ALLOW_FORMAT: &str = "vmledger-hook-allow/v1";
/// Largest state file read (they are a few KiB).
const MAX_STATE_FILE: u64 = 1 << 20;
/// The hook log is rotated to `hook.log.1` past this size.
const MAX_LOG: u64 = 4 << 20;

/// One disk of a running domain, as its start recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerDisk {
    pub target: String,
    /// Local path, when the disk is a file or block device.
    pub path: Option<String>,
    /// `dev:ino` or `block:MAJOR:MINOR` of the file.
    pub id: Option<String>,
    /// The hypervisor's name for the source (path, `protocol:name`, Proxmox volume).
    pub source: Option<String>,
    /// The content root the domain started from, when known.
    pub start_root: Option<String>,
}

/// `running/<instance>.json`: the domain counts as running on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningMarker {
    pub format: String,
    pub instance: String,
    pub uuid: String,
    pub name: String,
    pub hypervisor: String,
    #[serde(default)]
    pub vmid: Option<String>,
    /// The hook phase that marked it running: `prepare`, `start`, `restore`, `pre-start`,
    /// `migrate`, `reconnect`, `attach`; then `started`/`post-start` once QEMU runs.
    pub phase: String,
    /// When it was marked running (the recording entry's `at`).
    pub since: String,
    /// The host kernel's boot id then: after a host restart nothing from before runs.
    pub boot_id: String,
    /// Where the hypervisor keeps the QEMU process's pid.
    pub pid_file: String,
    /// The QEMU pid, once known.
    pub pid: Option<u32>,
    /// Seq of the host ledger entry that marked it running.
    pub seq: u64,
    pub disks: Vec<MarkerDisk>,
}

/// How a state in the roots index was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// The domain's disk, fingerprinted at rest after a stop (`disk_at_rest`).
    #[default]
    AtRest,
    /// A backup of the domain (`vmledger backup manifest`, a `backup_manifest` entry),
    /// possibly taken while it ran.
    Backup,
}

/// `roots/<content_root>/<instance>.json`: `instance` reached this content after running,
/// most recently at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    pub format: String,
    pub content_root: String,
    pub instance: String,
    pub uuid: String,
    pub name: String,
    /// The entry that recorded it (`disk_at_rest`, or `backup_manifest`).
    pub seq: u64,
    /// That entry's time (when the disk was found at rest, or the backup's manifest made).
    pub at: String,
    /// When the run that reached it ended (the `host_stop` entry's `at`); for a backup,
    /// when its manifest was made.
    pub stopped_at: String,
    /// The disk's target; `None` for a backup (an image file, not a disk of the domain).
    pub target: Option<String>,
    pub path: Option<String>,
    /// `at_rest` when absent (records written before backups were recorded).
    #[serde(default)]
    pub source: RootSource,
    /// The domain's content had already moved on from this state when it was recorded (a
    /// backup taken while the domain ran, or older than its latest recorded state): it
    /// counts as having run since, whatever starts follow.
    #[serde(default)]
    pub superseded: bool,
}

/// `allow/<key>.json`: let the next start of a domain through the guard once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowToken {
    pub format: String,
    /// The domain as the admin named it.
    pub domain: String,
    /// The domain's host ledger instance, when it has one.
    pub instance: Option<String>,
    pub by: String,
    pub reason: Option<String>,
    pub at: String,
    /// After this time the token is no longer honoured.
    pub expires: String,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, HookError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HookError::io(path, "reading", e)),
    };
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_STATE_FILE + 1), &mut buf)
        .map_err(|e| HookError::io(path, "reading", e))?;
    if buf.len() as u64 > MAX_STATE_FILE {
        return Err(HookError::State {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_STATE_FILE} bytes"),
        });
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| HookError::State {
            path: path.to_path_buf(),
            message: format!("does not parse ({e}); move it away if it is damaged"),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), HookError> {
    if let Some(dir) = path.parent() {
        fsutil::ensure_private_dir(dir).map_err(|e| HookError::io(dir, "creating", e))?;
    }
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| HookError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    fsutil::write_private_atomic(path, &bytes).map_err(|e| HookError::io(path, "writing", e))
}

fn remove(path: &Path) -> Result<bool, HookError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HookError::io(path, "removing", e)),
    }
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, HookError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HookError::io(dir, "listing", e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| HookError::io(dir, "listing", e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        // Skip temporary files of interrupted atomic writes (`.name.tmp.*`).
        if p.extension().is_some_and(|e| e == "json") && !name.is_some_and(|n| n.starts_with('.')) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

impl HostDir {
    /// The running marker of `instance`, if any.
    pub fn marker(&self, instance: &str) -> Result<Option<RunningMarker>, HookError> {
        read_json(&self.marker_path(instance))
    }

    /// Every running marker.
    pub fn markers(&self) -> Result<Vec<RunningMarker>, HookError> {
        let mut out = Vec::new();
        for p in json_files(&self.running_dir())? {
            if let Some(m) = read_json::<RunningMarker>(&p)? {
                if m.format != RUNNING_FORMAT {
                    return Err(HookError::State {
                        path: p,
                        message: format!("format is `{}`, not `{RUNNING_FORMAT}`", m.format),
                    });
                }
                out.push(m);
            }
        }
        Ok(out)
    }

    pub fn write_marker(&self, m: &RunningMarker) -> Result<(), HookError> {
        write_json(&self.marker_path(&m.instance), m)
    }

    /// Remove a marker; true when there was one.
    pub fn remove_marker(&self, instance: &str) -> Result<bool, HookError> {
        remove(&self.marker_path(instance))
    }

    fn root_dir(&self, root: &str) -> PathBuf {
        self.roots_dir().join(root)
    }

    /// Record that a domain reached `rec.content_root` after running.
    pub fn add_root(&self, rec: &RootRecord) -> Result<(), HookError> {
        let path = self
            .root_dir(&rec.content_root)
            .join(format!("{}.json", rec.instance));
        write_json(&path, rec)
    }

    /// The domains that reached `root` after running.
    pub fn roots(&self, root: &str) -> Result<Vec<RootRecord>, HookError> {
        if !super::is_digest(root) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for p in json_files(&self.root_dir(root))? {
            if let Some(r) = read_json::<RootRecord>(&p)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn allow_path(&self, key: &str) -> PathBuf {
        self.allow_dir().join(format!("{key}.json"))
    }

    /// Store a one-time override under `key` (an instance, or `name-<hex of the name>`).
    pub fn write_allow(&self, key: &str, token: &AllowToken) -> Result<PathBuf, HookError> {
        let p = self.allow_path(key);
        write_json(&p, token)?;
        Ok(p)
    }

    /// Take (remove and return) the override stored under `key`, if any.
    pub fn take_allow(&self, key: &str) -> Result<Option<AllowToken>, HookError> {
        let p = self.allow_path(key);
        let t = read_json::<AllowToken>(&p)?;
        if t.is_some() {
            remove(&p)?;
        }
        Ok(t)
    }

    /// Append one line to the hook log (rotated to `hook.log.1` past a few MiB). Logging
    /// never fails a hook: errors are returned for the caller to ignore or report.
    pub fn log(&self, line: &str) -> Result<(), HookError> {
        let path = self.log_path();
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > MAX_LOG
        {
            let _ = std::fs::rename(&path, self.root.join("hook.log.1"));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HookError::io(&path, "opening", e))?;
        let mut text = line.replace('\n', " ");
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(|e| HookError::io(&path, "writing", e))
    }
}

/// The allow-token key for a domain name (hex keeps any name a safe file name).
pub fn name_key(name: &str) -> String {
    format!("name-{}", hex::encode(name.as_bytes()))
}
