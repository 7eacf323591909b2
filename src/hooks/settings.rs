//! The `[hooks]` table of the config file and the settings the hooks run with.
//!
//! Only parses and validates; reads no other file and never writes.

use std::path::PathBuf;

use serde::Deserialize;

/// `[hooks]` as written in the config file. Every key is optional.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// `refuse` (default) or `warn`: what the duplicate-start guard does with a start it
    /// would refuse.
    pub policy: Option<String>,
    /// Hash disks never seen before at `prepare` (default true).
    pub hash_unknown: Option<bool>,
    /// Where libvirt keeps its running QEMU domains' pid files (default `/run/libvirt/qemu`).
    pub libvirt_run_dir: Option<PathBuf>,
    /// Where Proxmox VE keeps VM configs (default `/etc/pve/qemu-server`).
    pub proxmox_config_dir: Option<PathBuf>,
    /// Proxmox VE's storage definitions (default `/etc/pve/storage.cfg`).
    pub proxmox_storage_cfg: Option<PathBuf>,
    /// Where Proxmox VE keeps running VMs' pid files (default `/var/run/qemu-server`).
    pub proxmox_run_dir: Option<PathBuf>,
    /// How long a start may take between `prepare` and the running QEMU's pid file
    /// appearing before the start is considered abandoned (default 600 seconds).
    pub start_timeout_secs: Option<u64>,
    /// How long a `vmledger hook allow` override stays usable (default 24 hours).
    pub allow_ttl_hours: Option<u64>,
}

/// What the guard does with a start that breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Refuse the start (non-zero exit, one line on stderr).
    #[default]
    Refuse,
    /// Let it start, recording and logging a warning.
    Warn,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Refuse => "refuse",
            Policy::Warn => "warn",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "refuse" => Ok(Policy::Refuse),
            "warn" => Ok(Policy::Warn),
            other => Err(format!(
                "policy `{other}` is unknown: use `refuse` or `warn`"
            )),
        }
    }
}

/// Hook settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    pub policy: Policy,
    pub hash_unknown: bool,
    pub libvirt_run_dir: PathBuf,
    pub proxmox_config_dir: PathBuf,
    pub proxmox_storage_cfg: PathBuf,
    pub proxmox_run_dir: PathBuf,
    pub start_timeout_secs: u64,
    pub allow_ttl_hours: u64,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            policy: Policy::Refuse,
            hash_unknown: true,
            libvirt_run_dir: PathBuf::from("/run/libvirt/qemu"),
            proxmox_config_dir: PathBuf::from("/etc/pve/qemu-server"),
            proxmox_storage_cfg: PathBuf::from("/etc/pve/storage.cfg"),
            proxmox_run_dir: PathBuf::from("/var/run/qemu-server"),
            start_timeout_secs: 600,
            allow_ttl_hours: 24,
        }
    }
}

impl HookSettings {
    /// Apply `section` over the defaults; the error names the key (the caller adds the file).
    pub fn from_section(section: &HooksSection) -> Result<HookSettings, String> {
        let d = HookSettings::default();
        let policy = match &section.policy {
            Some(p) => p.parse().map_err(|e| format!("[hooks] {e}"))?,
            None => d.policy,
        };
        if section.start_timeout_secs == Some(0) {
            return Err("[hooks] start_timeout_secs must be at least 1".into());
        }
        if section.allow_ttl_hours == Some(0) {
            return Err("[hooks] allow_ttl_hours must be at least 1".into());
        }
        Ok(HookSettings {
            policy,
            hash_unknown: section.hash_unknown.unwrap_or(d.hash_unknown),
            libvirt_run_dir: section.libvirt_run_dir.clone().unwrap_or(d.libvirt_run_dir),
            proxmox_config_dir: section
                .proxmox_config_dir
                .clone()
                .unwrap_or(d.proxmox_config_dir),
            proxmox_storage_cfg: section
                .proxmox_storage_cfg
                .clone()
                .unwrap_or(d.proxmox_storage_cfg),
            proxmox_run_dir: section.proxmox_run_dir.clone().unwrap_or(d.proxmox_run_dir),
            start_timeout_secs: section.start_timeout_secs.unwrap_or(d.start_timeout_secs),
            allow_ttl_hours: section.allow_ttl_hours.unwrap_or(d.allow_ttl_hours),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let s = HookSettings::from_section(&HooksSection::default()).unwrap();
        assert_eq!(s, HookSettings::default());
        assert_eq!(s.policy, Policy::Refuse);
        let s = HookSettings::from_section(&HooksSection {
            policy: Some("warn".into()),
            hash_unknown: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.policy, Policy::Warn);
        assert!(!s.hash_unknown);
        let e = HookSettings::from_section(&HooksSection {
            policy: Some("maybe".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("[hooks]") && e.contains("maybe"), "{e}");
    }
}
