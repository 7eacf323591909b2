//! Hypervisor hooks: libvirt and Proxmox VE call vmledger when a VM starts and stops; it
//! keeps a signed host ledger per domain, refuses to start a copy of an appliance that is
//! running, and fingerprints disks at rest so the next start is quick.
//!
//! - [`settings`]: the `[hooks]` config table (policy, hash_unknown, hypervisor paths).
//! - [`host`]: `<state>/host/`: the host key and the per-domain ledgers.
//! - [`state`]: derived state files: running markers, the roots index, overrides, the log.
//! - [`vm`]: a VM as the hooks see it, built from libvirt XML or a Proxmox config.
//! - [`disk`]: disk identity, the quick path, hashing at rest.
//! - [`guard`]: the duplicate-start rules, pure.
//! - [`engine`]: what each phase does (start, started, running, stop, settle, allow), and
//!   recording a backup's state.
//! - [`libvirt`], [`proxmox`]: the hypervisors' arguments and phases.
//! - [`install`]: installing the libvirt hook script.
//!
//! Host ledgers use the agent's ledger format (`docs/formats/ledger.md`) with the host key;
//! the entry kinds and their `data` are specified in `docs/formats/hooks.md`.
//!
//! This module never prints, never exits and never calls back into a hypervisor (a libvirt
//! hook that calls libvirt deadlocks): what runs is read from pid files and `/proc`.

pub mod disk;
pub mod engine;
pub mod guard;
pub mod host;
pub mod install;
pub mod libvirt;
pub mod proxmox;
pub mod settings;
pub mod state;
pub mod vm;

use std::path::{Path, PathBuf};

pub use engine::{
    BackupRecorded, Decision, Host, SettleMode, SettleOutcome, StartOutcome, StartPhase,
};
pub use host::HostDir;
pub use settings::{HookSettings, HooksSection, Policy};
pub use vm::{Hypervisor, Vm, VmDisk};

use crate::fingerprint::hardware::HardwareError;
use crate::keys::KeyError;
use crate::ledger::LedgerError;

/// Host ledger entry kinds (their `data` is specified in `docs/formats/hooks.md`).
pub mod kinds {
    /// The first entry: `hypervisor`, `uuid`, `name`, `vmid`, `serial` (null), `public_key`.
    pub const GENESIS: &str = "genesis";
    /// A start the guard let through.
    pub const HOST_BOOT: &str = "host_boot";
    /// A start the guard refused.
    pub const START_REFUSED: &str = "start_refused";
    /// QEMU is up (its pid).
    pub const HOST_STARTED: &str = "host_started";
    /// The domain runs here without a checked start (incoming migration, daemon restart).
    pub const HOST_RUNNING: &str = "host_running";
    /// The domain stopped (or vanished).
    pub const HOST_STOP: &str = "host_stop";
    /// Its disks fingerprinted at rest after a stop.
    pub const DISK_AT_REST: &str = "disk_at_rest";
    /// A signed backup manifest was made of an image of it (`vmledger backup manifest`):
    /// the image's content root, recorded as a state of the domain unless pristine.
    pub const BACKUP_MANIFEST: &str = "backup_manifest";
}

/// Errors of the hooks, naming the file, domain or argument concerned.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Input { what: String, message: String },
    #[error(transparent)]
    Hardware(#[from] HardwareError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "no domain `{query}` has a host ledger in {dir}: name it as the hooks recorded it (name, uuid or Proxmox VMID); `vmledger hook status` lists them"
    )]
    UnknownDomain { query: String, dir: PathBuf },
    #[error(
        "{path} exists and was not installed by vmledger; not overwriting it. Move it away, or install under another name with --name"
    )]
    Foreign { path: PathBuf },
}

impl HookError {
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> HookError {
        HookError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// 32 lowercase hex digits (a host ledger's instance).
pub fn is_instance(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 64 lowercase hex digits (a content root).
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
