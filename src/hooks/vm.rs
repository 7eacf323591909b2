//! What the hooks need to know about a VM, whichever hypervisor described it: identity
//! (uuid, name, generation ID), the hardware fingerprint, the disks (which ones the guard
//! looks at, and where they are), and where the hypervisor keeps the QEMU pid.
//!
//! Built from a parsed libvirt [`Domain`] or a Proxmox [`VmConfig`]; pure data, no I/O
//! (Proxmox volume paths are resolved by the caller).

use std::path::PathBuf;

use crate::fingerprint::hardware::Fingerprint;
use crate::fingerprint::hardware::libvirt::Domain;
use crate::fingerprint::image::FormatChoice;

use super::HookError;

/// Which hypervisor runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    Libvirt,
    Proxmox,
}

impl Hypervisor {
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Libvirt => "libvirt",
            Hypervisor::Proxmox => "proxmox",
        }
    }
}

/// A VM as the hooks see it.
#[derive(Debug, Clone)]
pub struct Vm {
    pub hypervisor: Hypervisor,
    /// Lowercase, with dashes.
    pub uuid: String,
    /// The uuid without dashes: the host ledger's `instance`.
    pub instance: String,
    pub name: String,
    /// The Proxmox VMID.
    pub vmid: Option<String>,
    pub genid: Option<String>,
    pub hardware: Fingerprint,
    pub disks: Vec<VmDisk>,
    /// Where the hypervisor keeps the running QEMU's pid.
    pub pid_file: PathBuf,
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// `vda`, `scsi0`, ...
    pub target: String,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// The hypervisor's name for the source.
    pub source: Option<String>,
    /// The local path, for file and block disks.
    pub path: Option<PathBuf>,
    /// The image format to read it as.
    pub format: FormatChoice,
    /// The format the hypervisor names, when it is one vmledger cannot read.
    pub unreadable_format: Option<String>,
    /// Why the guard ignores this disk (`read-only`, `shareable`, `cdrom`, `floppy`,
    /// `no source`); `None` for a guarded, writable disk.
    pub ignored: Option<&'static str>,
}

impl VmDisk {
    pub fn guarded(&self) -> bool {
        self.ignored.is_none()
    }
}

/// 32 lowercase hex digits from a dashed uuid.
pub fn instance_of(uuid: &str) -> Option<String> {
    let s: String = uuid.chars().filter(|c| *c != '-').collect();
    let s = s.to_ascii_lowercase();
    super::is_instance(&s).then_some(s)
}

/// `driver type` -> how vmledger reads the image.
pub fn format_choice(driver: Option<&str>) -> (FormatChoice, Option<String>) {
    match driver {
        None => (FormatChoice::Auto, None),
        Some("raw") => (FormatChoice::Raw, None),
        Some("qcow2") => (FormatChoice::Qcow2, None),
        Some(other) => (FormatChoice::Auto, Some(other.to_string())),
    }
}

impl Vm {
    /// From libvirt domain XML; `run_dir` is where libvirt keeps `<name>.pid`.
    pub fn from_libvirt(d: &Domain, run_dir: &std::path::Path) -> Result<Vm, HookError> {
        let uuid = d.uuid.clone().ok_or_else(|| HookError::Input {
            what: format!("libvirt domain XML of `{}`", d.name),
            message:
                "/domain/uuid is missing: libvirt always passes it; is this a domain definition?"
                    .into(),
        })?;
        let instance = instance_of(&uuid).ok_or_else(|| HookError::Input {
            what: format!("libvirt domain XML of `{}`", d.name),
            message: format!("/domain/uuid `{uuid}` is not a UUID"),
        })?;
        let disks = d
            .disks
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let ignored = if k.device == "cdrom" {
                    Some("cdrom")
                } else if k.device == "floppy" {
                    Some("floppy")
                } else if k.readonly {
                    Some("read-only")
                } else if k.shareable {
                    Some("shareable")
                } else if k.source.as_deref().is_none_or(str::is_empty) {
                    Some("no source")
                } else {
                    None
                };
                let (format, unreadable_format) = format_choice(k.driver_format.as_deref());
                VmDisk {
                    target: k.target.clone().unwrap_or_else(|| format!("disk{}", i + 1)),
                    device: k.device.clone(),
                    source: k.source.clone(),
                    path: if k.is_local_path() {
                        k.source.as_ref().map(PathBuf::from)
                    } else {
                        None
                    },
                    format,
                    unreadable_format,
                    ignored,
                }
            })
            .collect();
        Ok(Vm {
            hypervisor: Hypervisor::Libvirt,
            uuid,
            instance,
            name: d.name.clone(),
            vmid: None,
            genid: d.genid.clone(),
            hardware: d.fingerprint("-"),
            disks,
            pid_file: run_dir.join(format!("{}.pid", d.name)),
        })
    }
}
