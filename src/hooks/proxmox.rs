//! Proxmox VE hookscripts: `VMID PHASE` (no stdin), the VM's config in
//! `<config dir>/VMID.conf`, and its disk volumes resolved to local paths through
//! `storage.cfg`.
//!
//! | phase | vmledger |
//! |---|---|
//! | `pre-start` | a start: the guard (a non-zero exit aborts the start) |
//! | `post-start` | `host_started` with the QEMU pid |
//! | `pre-stop` | nothing |
//! | `post-stop` | `host_stop`, then the at-rest fingerprint (like libvirt's `release`) |
//! | anything else | an error (exit 2): Proxmox defines exactly these four |
//!
//! Volumes: `storage:volume` on `dir`, `nfs`, `cifs`, `glusterfs` and `cephfs` storages
//! are files under the storage's path (`<path>/images/<volume>`); on `lvm`/`lvmthin` they
//! are `/dev/<vgname>/<volume>`; on `zfspool` `/dev/zvol/<pool>/<volume>`; absolute paths
//! are themselves. Anything else (Ceph RBD, iSCSI, ...) is guarded by its volume id only.
//! Reads files, never writes, never calls back into Proxmox.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::HookError;
use super::engine::StartPhase;
use super::vm::{Hypervisor, Vm, VmDisk, instance_of};
use crate::fingerprint::hardware::proxmox::VmConfig;
use crate::fingerprint::image::FormatChoice;

/// Largest `storage.cfg` read.
const MAX_STORAGE_CFG: u64 = 1 << 20;

/// A Proxmox hookscript phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
}

impl Phase {
    pub fn parse(s: &str) -> Result<Phase, HookError> {
        match s {
            "pre-start" => Ok(Phase::PreStart),
            "post-start" => Ok(Phase::PostStart),
            "pre-stop" => Ok(Phase::PreStop),
            "post-stop" => Ok(Phase::PostStop),
            other => Err(HookError::Input {
                what: "hookscript phase".into(),
                message: format!(
                    "`{other}` is not a Proxmox VE phase (pre-start, post-start, pre-stop, post-stop)"
                ),
            }),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreStart => "pre-start",
            Phase::PostStart => "post-start",
            Phase::PreStop => "pre-stop",
            Phase::PostStop => "post-stop",
        }
    }
    /// The start phase, for `pre-start`.
    pub fn start_phase(self) -> Option<StartPhase> {
        (self == Phase::PreStart).then_some(StartPhase::PreStart)
    }
}

/// Check a VMID (Proxmox allows 100 to 999999999).
pub fn parse_vmid(s: &str) -> Result<u32, HookError> {
    let bad = || HookError::Input {
        what: "VMID".into(),
        message: format!("`{s}` is not a Proxmox VMID (a number from 100 to 999999999)"),
    };
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u32 = s.parse().map_err(|_| bad())?;
    if n < 100 {
        return Err(bad());
    }
    Ok(n)
}

/// One storage from `storage.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Storage {
    pub kind: String,
    pub id: String,
    pub path: Option<String>,
    pub vgname: Option<String>,
    pub pool: Option<String>,
}

/// Parse `storage.cfg`: `TYPE: ID` lines start a storage, indented `KEY VALUE` lines
/// follow. Errors name the line.
pub fn parse_storage_cfg(text: &str, path: &Path) -> Result<Vec<Storage>, HookError> {
    let mut out: Vec<Storage> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let err = |m: String| HookError::State {
            path: path.to_path_buf(),
            message: format!("line {}: {m}", i + 1),
        };
        if !line.starts_with([' ', '\t']) {
            let (kind, id) = line
                .split_once(':')
                .ok_or_else(|| err(format!("expected `type: id`, found {line:?}")))?;
            out.push(Storage {
                kind: kind.trim().to_string(),
                id: id.trim().to_string(),
                ..Storage::default()
            });
            continue;
        }
        let s = out
            .last_mut()
            .ok_or_else(|| err("an option before any storage".into()))?;
        let t = line.trim();
        let (k, v) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
        let v = v.trim().to_string();
        match k {
            "path" => s.path = Some(v),
            "vgname" => s.vgname = Some(v),
            "pool" => s.pool = Some(v),
            _ => {}
        }
    }
    Ok(out)
}

/// Read `storage.cfg`; a missing file means no storages (absolute paths still resolve).
pub fn read_storage_cfg(path: &Path) -> Result<Vec<Storage>, HookError> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HookError::io(path, "reading", e)),
        Ok(m) if m.len() > MAX_STORAGE_CFG => {
            return Err(HookError::State {
                path: path.to_path_buf(),
                message: format!("larger than {MAX_STORAGE_CFG} bytes"),
            });
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| HookError::io(path, "reading", e))?,
    };
    parse_storage_cfg(&text, path)
}

/// Where a volume is: a local path, or `None` for storages vmledger cannot read locally.
pub fn resolve_volume(volume: &str, storages: &[Storage]) -> Option<PathBuf> {
    if volume.starts_with('/') {
        return Some(PathBuf::from(volume));
    }
    let (id, vol) = volume.split_once(':')?;
    if vol.is_empty() || vol.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    let s = storages.iter().find(|s| s.id == id)?;
    match s.kind.as_str() {
        "dir" | "nfs" | "cifs" | "cephfs" | "glusterfs" => {
            let base = s
                .path
                .clone()
                .unwrap_or_else(|| format!("/mnt/pve/{}", s.id));
            Some(Path::new(&base).join("images").join(vol))
        }
        "lvm" | "lvmthin" => Some(Path::new("/dev").join(s.vgname.as_ref()?).join(vol)),
        "zfspool" => Some(Path::new("/dev/zvol").join(s.pool.as_ref()?).join(vol)),
        _ => None,
    }
}

fn format_of(declared: Option<&str>, path: Option<&Path>) -> (FormatChoice, Option<String>) {
    let ext = path
        .and_then(|p| p.extension())
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match declared.or(ext.as_deref()) {
        Some("raw") => (FormatChoice::Raw, None),
        Some("qcow2") => (FormatChoice::Qcow2, None),
        Some(f @ ("vmdk" | "vdi" | "vhd" | "vhdx" | "qed")) => {
            (FormatChoice::Auto, Some(f.to_string()))
        }
        _ => (FormatChoice::Auto, None),
    }
}

/// The instance of a VM without `smbios1: uuid=` (Proxmox sets one on every VM it creates;
/// hand-written configs may lack it): derived from the VMID, stable on this cluster.
pub fn fallback_uuid(vmid: u32) -> String {
    let d = Sha256::digest(format!("vmledger/proxmox-vmid/v1\n{vmid}").as_bytes());
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The VM as the hooks see it.
pub fn vm(vmid: u32, conf: &VmConfig, storages: &[Storage], run_dir: &Path) -> Vm {
    let uuid = conf
        .smbios
        .uuid
        .clone()
        .unwrap_or_else(|| fallback_uuid(vmid));
    let instance = instance_of(&uuid)
        .unwrap_or_else(|| instance_of(&fallback_uuid(vmid)).unwrap_or_else(|| "0".repeat(32)));
    let disks = conf
        .disks
        .iter()
        .map(|d| {
            let path = if d.is_cdrom() || d.volume == "none" {
                None
            } else {
                resolve_volume(&d.volume, storages)
            };
            let ignored = if d.is_cdrom() {
                Some("cdrom")
            } else if d.volume == "none" {
                Some("no source")
            } else if d.readonly {
                Some("read-only")
            } else if d.shared {
                Some("shareable")
            } else {
                None
            };
            let (format, unreadable_format) = format_of(d.format.as_deref(), path.as_deref());
            VmDisk {
                target: d.key.clone(),
                device: if d.is_cdrom() {
                    "cdrom".into()
                } else {
                    "disk".into()
                },
                source: Some(d.volume.clone()),
                path,
                format,
                unreadable_format,
                ignored,
            }
        })
        .collect();
    Vm {
        hypervisor: Hypervisor::Proxmox,
        uuid,
        instance,
        name: conf.name.clone().unwrap_or_else(|| format!("VM {vmid}")),
        vmid: Some(vmid.to_string()),
        genid: conf.vmgenid.clone(),
        hardware: conf.fingerprint(&format!("{vmid}.conf")),
        disks,
        pid_file: run_dir.join(format!("{vmid}.pid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,images\n\n\
lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
zfspool: tank\n\tpool rpool/data\n\nrbd: ceph\n\tpool vms\n";

    #[test]
    fn volumes_resolve_by_storage_type() {
        let s = parse_storage_cfg(CFG, Path::new("storage.cfg")).unwrap();
        assert_eq!(s.len(), 4);
        let r = |v: &str| resolve_volume(v, &s);
        assert_eq!(
            r("local:100/vm-100-disk-0.qcow2"),
            Some(PathBuf::from("/var/lib/vz/images/100/vm-100-disk-0.qcow2"))
        );
        assert_eq!(
            r("local-lvm:vm-100-disk-0"),
            Some(PathBuf::from("/dev/pve/vm-100-disk-0"))
        );
        assert_eq!(
            r("tank:vm-100-disk-1"),
            Some(PathBuf::from("/dev/zvol/rpool/data/vm-100-disk-1"))
        );
        assert_eq!(r("ceph:vm-100-disk-0"), None);
        assert_eq!(r("nosuch:vm-100-disk-0"), None);
        assert_eq!(r("local:../../etc/shadow"), None);
        assert_eq!(r("/srv/img/a.raw"), Some(PathBuf::from("/srv/img/a.raw")));
    }

    #[test]
    fn phases_and_vmids() {
        assert_eq!(Phase::parse("pre-start").unwrap(), Phase::PreStart);
        let e = Phase::parse("pre-snapshot").unwrap_err().to_string();
        assert!(e.contains("pre-snapshot"), "{e}");
        assert_eq!(parse_vmid("100").unwrap(), 100);
        for bad in ["99", "abc", "", "1234567890", "-100"] {
            assert!(parse_vmid(bad).is_err(), "{bad}");
        }
        assert_eq!(fallback_uuid(100).len(), 36);
        let e = parse_storage_cfg("\tpath /x\n", Path::new("s.cfg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
