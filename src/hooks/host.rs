//! The host's part of the state directory (`<state>/host/`): the host key, one signed
//! ledger per domain, and the paths of the derived state files (see [`super::state`]).
//!
//! | path (under `<state>/host/`) | what |
//! |---|---|
//! | `host.key` | the host's Ed25519 key (PKCS#8, 0600): signs host ledgers and backup manifests |
//! | `domains/<instance>/ledger.sqlite` | the domain's host ledger; `instance` = its uuid without dashes |
//! | `domains/<instance>/.settle.lock`, `settle.pending` | at-rest fingerprinting in progress / owed |
//! | `running/<instance>.json` | the domain runs here (`vmledger-host-running/v1`) |
//! | `roots/<content_root>/<instance>.json` | states domains reached after running (`vmledger-host-root/v1`) |
//! | `allow/<key>.json` | one-time overrides (`vmledger-hook-allow/v1`) |
//! | `hook.log` | what the hooks decided, and hashing progress |
//! | `.guard.lock`, `.key.lock` | serialise the guard's check-and-record, and key creation |
//!
//! The ledgers are the record; everything else here is derived from them and from the
//! hypervisor's pid files. Never talks to a hypervisor.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value, json};

use super::HookError;
use crate::fsutil;
use crate::keys::SigningKey;
use crate::ledger::Ledger;
use crate::time::Clock;

/// Paths under `<state>/host/`.
#[derive(Debug, Clone)]
pub struct HostDir {
    pub root: PathBuf,
}

impl HostDir {
    /// The host directory inside the state directory `state_dir`.
    pub fn new(state_dir: &Path) -> HostDir {
        HostDir {
            root: state_dir.join("host"),
        }
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("host.key")
    }
    pub fn domains_dir(&self) -> PathBuf {
        self.root.join("domains")
    }
    pub fn domain_dir(&self, instance: &str) -> PathBuf {
        self.domains_dir().join(instance)
    }
    pub fn ledger_path(&self, instance: &str) -> PathBuf {
        self.domain_dir(instance).join("ledger.sqlite")
    }
    pub fn settle_lock_path(&self, instance: &str) -> PathBuf {
        self.domain_dir(instance).join(".settle.lock")
    }
    pub fn settle_pending_path(&self, instance: &str) -> PathBuf {
        self.domain_dir(instance).join("settle.pending")
    }
    pub fn running_dir(&self) -> PathBuf {
        self.root.join("running")
    }
    pub fn marker_path(&self, instance: &str) -> PathBuf {
        self.running_dir().join(format!("{instance}.json"))
    }
    pub fn roots_dir(&self) -> PathBuf {
        self.root.join("roots")
    }
    pub fn allow_dir(&self) -> PathBuf {
        self.root.join("allow")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("hook.log")
    }
    fn guard_lock_path(&self) -> PathBuf {
        self.root.join(".guard.lock")
    }
    fn key_lock_path(&self) -> PathBuf {
        self.root.join(".key.lock")
    }

    /// Create the directory tree (0700).
    pub fn ensure(&self) -> Result<(), HookError> {
        for d in [
            self.root.clone(),
            self.domains_dir(),
            self.running_dir(),
            self.roots_dir(),
            self.allow_dir(),
        ] {
            fsutil::ensure_private_dir(&d).map_err(|e| HookError::io(&d, "creating", e))?;
        }
        Ok(())
    }

    /// Hold the guard lock: the check-and-record of a start, and every change to the
    /// running markers and the roots index, happen under it.
    pub fn guard_lock(&self) -> Result<Flock<File>, HookError> {
        lock_file(&self.guard_lock_path())
    }

    /// Load the host key, creating it on first use.
    pub fn load_or_create_key(&self) -> Result<SigningKey, HookError> {
        let path = self.key_path();
        if path.exists() {
            return Ok(SigningKey::load(&path)?);
        }
        self.ensure()?;
        let _lock = lock_file(&self.key_lock_path())?;
        if path.exists() {
            return Ok(SigningKey::load(&path)?);
        }
        let key = SigningKey::generate()?;
        key.save(&path)?;
        Ok(key)
    }

    /// Load the host key if it exists.
    pub fn load_key(&self) -> Result<Option<SigningKey>, HookError> {
        let path = self.key_path();
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(SigningKey::load(&path)?))
    }

    /// Instances that have a host ledger here, sorted.
    pub fn instances(&self) -> Result<Vec<String>, HookError> {
        let dir = self.domains_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HookError::io(&dir, "listing", e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| HookError::io(&dir, "listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if super::is_instance(&name) && entry.path().join("ledger.sqlite").exists() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Open a domain's host ledger, if it has one.
    pub fn open_ledger(&self, instance: &str) -> Result<Option<Ledger>, HookError> {
        let path = self.ledger_path(instance);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Ledger::open(&path)?))
    }

    /// Open a domain's host ledger, creating it (genesis: `genesis`, plus `serial: null` and
    /// the host's public key) when the domain is new. Callers hold the guard lock.
    pub fn open_or_create_ledger(
        &self,
        instance: &str,
        key: &SigningKey,
        genesis: Map<String, Value>,
        clock: &dyn Clock,
    ) -> Result<Ledger, HookError> {
        if let Some(l) = self.open_ledger(instance)? {
            return Ok(l);
        }
        let dir = self.domain_dir(instance);
        fsutil::ensure_private_dir(&dir).map_err(|e| HookError::io(&dir, "creating", e))?;
        let mut data = genesis;
        data.insert("serial".into(), json!(null));
        Ok(Ledger::create(
            &self.ledger_path(instance),
            instance,
            key,
            data,
            clock,
        )?)
    }
}

/// Open (creating) `path` and take an exclusive `flock`, waiting for it.
pub fn lock_file(path: &Path) -> Result<Flock<File>, HookError> {
    lock_file_with(path, true)?
        .ok_or_else(|| HookError::io(path, "locking", std::io::Error::other("lock not taken")))
}

/// Like [`lock_file`] without waiting: `None` when another process holds the lock.
pub fn try_lock_file(path: &Path) -> Result<Option<Flock<File>>, HookError> {
    lock_file_with(path, false)
}

fn lock_file_with(path: &Path, wait: bool) -> Result<Option<Flock<File>>, HookError> {
    if let Some(parent) = path.parent() {
        fsutil::ensure_private_dir(parent).map_err(|e| HookError::io(parent, "creating", e))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| HookError::io(path, "opening lock file", e))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, errno)) => Err(HookError::io(path, "locking", errno.into())),
    }
}
