//! The hardware fingerprint as seen from inside the guest: DMI (`/sys/class/dmi/id`),
//! permanent NIC MACs (`/sys/class/net`), disk serials (`/sys/block`), `/etc/machine-id`,
//! the root filesystem's UUID, CPU and memory (`/proc`), the virtualization type and the
//! QEMU VM Generation ID (`fw_cfg`).
//!
//! Every path is read relative to a root directory (`/` on a real guest, a fixture tree in
//! tests). A fact that is missing is simply not a component (containers and micro-VMs have
//! no DMI); a fact that exists but cannot be read (root-only DMI serials as a normal user)
//! is an `unavailable` component with the reason, never an error. Reads are bounded
//! ([`MAX_FILE`]). Symlinks are followed as sysfs needs; fixture trees should use relative
//! symlinks, as sysfs does, so that they resolve inside the root. Never writes.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{
    Components, Fingerprint, HardwareError, Source, SourceKind, machine_id_digest, normalize_mac,
    normalize_uuid, round_memory_mib, sanitize_id,
};

/// Largest file read (`/proc/cpuinfo` of a 512-vCPU guest is ~700 KiB).
pub const MAX_FILE: u64 = 4 << 20;

/// DMI attributes: (file in `/sys/class/dmi/id`, component name).
const DMI: &[(&str, &str)] = &[
    ("product_uuid", "smbios.uuid"),
    ("product_serial", "smbios.product_serial"),
    ("board_serial", "smbios.board_serial"),
    ("chassis_serial", "smbios.chassis_serial"),
    ("sys_vendor", "smbios.sys_vendor"),
    ("product_name", "smbios.product_name"),
];

/// Where QEMU's fw_cfg exposes the VM Generation ID blob (needs the `qemu_fw_cfg` module
/// and root), and the GUID's offset in it (QEMU's `VMGENID_GUID_OFFSET`).
pub const VMGENID_FW_CFG: &str = "sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw";
pub const VMGENID_GUID_OFFSET: usize = 40;

/// The outcome of reading one file.
enum Fact {
    Value(String),
    Missing,
    Unreadable(String),
}

/// A root directory to read the guest's facts from.
struct Guest {
    root: PathBuf,
}

impl Guest {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The displayed source of `rel`: the path as it is on the guest.
    fn shown(rel: &str) -> String {
        format!("/{rel}")
    }

    fn read_bytes(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        read_bounded(&self.path(rel))
    }

    fn read(&self, rel: &str) -> Fact {
        match self.read_bytes(rel) {
            Ok(Some(b)) => Fact::Value(String::from_utf8_lossy(&b).trim().to_string()),
            Ok(None) => Fact::Missing,
            Err(reason) => Fact::Unreadable(reason),
        }
    }

    fn text(&self, rel: &str) -> Option<String> {
        match self.read(rel) {
            Fact::Value(v) => Some(v),
            _ => None,
        }
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    /// Names in a directory, sorted; empty when it does not exist or cannot be listed.
    fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.path(rel)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// Read a file of at most [`MAX_FILE`] bytes: `Ok(None)` when it does not exist,
/// `Err(reason)` when it exists but cannot be read.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(reason(&e)),
    };
    let mut buf = Vec::new();
    match f.take(MAX_FILE + 1).read_to_end(&mut buf) {
        Ok(_) if buf.len() as u64 > MAX_FILE => Err(format!("larger than {MAX_FILE} bytes")),
        Ok(_) => Ok(Some(buf)),
        Err(e) => Err(reason(&e)),
    }
}

fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "permission denied (readable by root only: run as root to include it)".into()
        }
        _ => e.to_string(),
    }
}

/// Fingerprint the guest whose root directory is `root`.
pub fn fingerprint(root: &Path) -> Result<Fingerprint, HardwareError> {
    let meta = fs::metadata(root).map_err(|source| HardwareError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(HardwareError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let g = Guest {
        root: root.to_path_buf(),
    };
    let mut c = Components::new();
    dmi(&g, &mut c);
    nics(&g, &mut c);
    disks(&g, &mut c);
    machine_id(&g, &mut c);
    root_fs(&g, &mut c);
    cpu_memory(&g, &mut c);
    c.value(
        "virt.type",
        &virt_type(&g),
        "/sys/class/dmi/id, /proc/cpuinfo, /run/systemd/container",
    );
    vmgenid(&g, &mut c);
    Ok(c.finish(Source {
        kind: SourceKind::Guest,
        path: root.display().to_string(),
    }))
}

fn dmi(g: &Guest, c: &mut Components) {
    for (file, name) in DMI {
        let rel = format!("sys/class/dmi/id/{file}");
        match g.read(&rel) {
            Fact::Value(v) if *name == "smbios.uuid" => {
                c.value(name, &normalize_uuid(&v), Guest::shown(&rel))
            }
            Fact::Value(v) => c.value(name, &v, Guest::shown(&rel)),
            Fact::Missing => {}
            Fact::Unreadable(r) => c.unavailable(name, r, Guest::shown(&rel)),
        }
    }
}

/// NICs backed by a device (not loopback, bridges, veths, tunnels, bonds) whose address is
/// the permanent one (`addr_assign_type` 0).
fn nics(g: &Guest, c: &mut Components) {
    for ifname in g.list("sys/class/net") {
        let base = format!("sys/class/net/{ifname}");
        if ifname == "lo"
            || g.text(&format!("{base}/type")).as_deref() == Some("772")
            || g.exists(&format!("{base}/bridge"))
            || !g.exists(&format!("{base}/device"))
        {
            continue;
        }
        let assign = g.text(&format!("{base}/addr_assign_type"));
        if assign.as_deref().is_some_and(|a| a != "0") {
            continue;
        }
        let rel = format!("{base}/address");
        let name = format!("net.{}.mac", sanitize_id(&ifname));
        match g.read(&rel) {
            Fact::Value(v) => {
                if let Some(mac) = normalize_mac(&v) {
                    c.value(&name, &mac, Guest::shown(&rel));
                }
            }
            Fact::Missing => {}
            Fact::Unreadable(r) => c.unavailable(&name, r, Guest::shown(&rel)),
        }
    }
}

/// Disk serials: `/sys/block/X/serial` (virtio), `device/serial` (NVMe), or the SCSI unit
/// serial number VPD page `device/vpd_pg80`.
fn disks(g: &Guest, c: &mut Components) {
    for disk in g.list("sys/block") {
        if ["loop", "ram", "zram", "dm-", "md", "nbd", "sr"]
            .iter()
            .any(|p| disk.starts_with(p))
        {
            continue;
        }
        let name = format!("disk.{}.serial", sanitize_id(&disk));
        let base = format!("sys/block/{disk}");
        let mut unreadable = None;
        let mut found = false;
        for rel in [format!("{base}/serial"), format!("{base}/device/serial")] {
            match g.read(&rel) {
                Fact::Value(v) if !v.is_empty() => {
                    c.value(&name, &v, Guest::shown(&rel));
                    found = true;
                    break;
                }
                Fact::Unreadable(r) => unreadable = Some((r, rel)),
                _ => {}
            }
        }
        if !found {
            let rel = format!("{base}/device/vpd_pg80");
            match g.read_bytes(&rel) {
                Ok(Some(page)) => {
                    if let Some(serial) = parse_vpd_pg80(&page) {
                        c.value(&name, &serial, Guest::shown(&rel));
                        found = true;
                    }
                }
                Ok(None) => {}
                Err(r) => unreadable = Some((r, rel)),
            }
        }
        if let (false, Some((r, rel))) = (found, unreadable) {
            c.unavailable(&name, r, Guest::shown(&rel));
        }
    }
}

/// The serial in a SCSI Unit Serial Number VPD page (0x80): byte 1 is the page code,
/// bytes 2..4 the big-endian length, the serial follows (ASCII, space padded).
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let body = page.get(4..4 + len).unwrap_or(&page[4..]);
    let s = String::from_utf8_lossy(body)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    (!s.is_empty()).then_some(s)
}

fn machine_id(g: &Guest, c: &mut Components) {
    let rel = "etc/machine-id";
    match g.read(rel) {
        // An empty or "uninitialized" machine-id is a sealed image before first boot.
        Fact::Value(v) if !v.is_empty() && v != "uninitialized" => {
            c.digest("machine_id", machine_id_digest(&v), Guest::shown(rel))
        }
        Fact::Unreadable(r) => c.unavailable("machine_id", r, Guest::shown(rel)),
        _ => {}
    }
}

/// The root filesystem's UUID: the device mounted on `/` in `/proc/self/mountinfo`, looked
/// up among the `/dev/disk/by-uuid` symlinks.
fn root_fs(g: &Guest, c: &mut Components) {
    let Some(mountinfo) = g.text("proc/self/mountinfo") else {
        return;
    };
    let Some(device) = root_device(&mountinfo) else {
        return;
    };
    let Some(dev_name) = Path::new(&device).file_name().map(|n| n.to_owned()) else {
        return;
    };
    for uuid in g.list("dev/disk/by-uuid") {
        let link = g.path(&format!("dev/disk/by-uuid/{uuid}"));
        if let Ok(target) = fs::read_link(&link)
            && target.file_name() == Some(dev_name.as_os_str())
        {
            c.value(
                "fs.root.uuid",
                &normalize_uuid(&uuid),
                format!("/dev/disk/by-uuid/{uuid}"),
            );
            return;
        }
    }
}

/// The mount source of `/` in a mountinfo text (the last such line wins, as the kernel
/// stacks mounts).
pub fn root_device(mountinfo: &str) -> Option<String> {
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(4) == Some(&"/")
            && let Some(source) = fields.get(sep + 2)
        {
            found = Some(source.to_string());
        }
    }
    found.filter(|s| s.starts_with("/dev/"))
}

fn cpu_memory(g: &Guest, c: &mut Components) {
    match g.read("proc/cpuinfo") {
        Fact::Value(info) => {
            let (model, count) = parse_cpuinfo(&info);
            if let Some(m) = model {
                c.value("cpu.model", &m, "/proc/cpuinfo");
            }
            if count > 0 {
                c.value("cpu.count", &count.to_string(), "/proc/cpuinfo");
            }
        }
        Fact::Missing => {}
        Fact::Unreadable(r) => c.unavailable("cpu.model", r, "/proc/cpuinfo"),
    }
    match g.read("proc/meminfo") {
        Fact::Value(info) => {
            if let Some(kib) = parse_meminfo_total_kib(&info) {
                c.value(
                    "memory.mib",
                    &round_memory_mib(kib / 1024).to_string(),
                    "/proc/meminfo",
                );
            }
        }
        Fact::Missing => {}
        Fact::Unreadable(r) => c.unavailable("memory.mib", r, "/proc/meminfo"),
    }
}

/// The first CPU model name and the number of processors in `/proc/cpuinfo`.
pub fn parse_cpuinfo(info: &str) -> (Option<String>, u64) {
    let mut model = None;
    let mut count = 0;
    for line in info.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k == "processor" {
            count += 1;
        }
        if model.is_none() && matches!(k, "model name" | "cpu model" | "Processor" | "cpu") {
            let v = v.trim();
            if !v.is_empty() {
                model = Some(v.to_string());
            }
        }
    }
    (model, count)
}

/// `MemTotal` in KiB from `/proc/meminfo`.
pub fn parse_meminfo_total_kib(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The virtualization type: a container (systemd's `/run/systemd/container`, or
/// `/.dockerenv`), else the hypervisor told by the DMI vendor, `/sys/hypervisor/type` or
/// the CPU's `hypervisor` flag, else `none`.
fn virt_type(g: &Guest) -> String {
    if let Some(v) = g.text("run/systemd/container").filter(|v| !v.is_empty()) {
        return format!("container:{v}");
    }
    if g.exists(".dockerenv") {
        return "container:docker".into();
    }
    let vendor = g.text("sys/class/dmi/id/sys_vendor").unwrap_or_default();
    let product = g.text("sys/class/dmi/id/product_name").unwrap_or_default();
    let clocksource = g
        .text("sys/devices/system/clocksource/clocksource0/available_clocksource")
        .unwrap_or_default();
    let by_dmi = match vendor.as_str() {
        "QEMU" if clocksource.contains("kvm-clock") => Some("kvm"),
        "QEMU" => Some("qemu"),
        v if v.starts_with("VMware") => Some("vmware"),
        "Microsoft Corporation" if product == "Virtual Machine" => Some("microsoft"),
        "Xen" => Some("xen"),
        "innotek GmbH" | "Oracle Corporation" => Some("oracle"),
        "Amazon EC2" => Some("amazon"),
        "Google" => Some("google"),
        "Parallels Software International Inc." => Some("parallels"),
        _ => None,
    };
    if let Some(t) = by_dmi {
        return t.into();
    }
    if let Some(t) = g.text("sys/hypervisor/type").filter(|t| !t.is_empty()) {
        return t;
    }
    let flags = g
        .text("proc/cpuinfo")
        .and_then(|i| {
            i.lines()
                .find(|l| l.starts_with("flags"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    if flags.split_whitespace().any(|f| f == "hypervisor") {
        if clocksource.contains("kvm-clock") {
            return "kvm".into();
        }
        return "vm-other".into();
    }
    "none".into()
}

fn vmgenid(g: &Guest, c: &mut Components) {
    match g.read_bytes(VMGENID_FW_CFG) {
        Ok(Some(blob)) => {
            if let Some(guid) = parse_vmgenid_blob(&blob) {
                c.value("vmgenid", &guid, Guest::shown(VMGENID_FW_CFG));
            }
        }
        Ok(None) => {}
        Err(r) => c.unavailable("vmgenid", r, Guest::shown(VMGENID_FW_CFG)),
    }
}

/// The GUID in QEMU's `etc/vmgenid_guid` fw_cfg blob: 16 bytes at offset 40 in Microsoft's
/// little-endian GUID layout, returned as the canonical lowercase UUID string (as libvirt's
/// `<genid>` and Proxmox's `vmgenid` write it). A bare 16-byte blob is read from offset 0.
pub fn parse_vmgenid_blob(blob: &[u8]) -> Option<String> {
    let off = if blob.len() == 16 {
        0
    } else {
        VMGENID_GUID_OFFSET
    };
    let b = blob.get(off..off + 16)?;
    if b.iter().all(|x| *x == 0) {
        return None;
    }
    let mut be = [0u8; 16];
    be[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    be[4..6].copy_from_slice(&[b[5], b[4]]);
    be[6..8].copy_from_slice(&[b[7], b[6]]);
    be[8..16].copy_from_slice(&b[8..16]);
    Some(normalize_uuid(&hex::encode(be)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpd_page() {
        let mut p = vec![0x00, 0x80, 0x00, 0x0c];
        p.extend_from_slice(b"  SER-123   ");
        assert_eq!(parse_vpd_pg80(&p).as_deref(), Some("SER-123"));
        assert_eq!(parse_vpd_pg80(&[0, 0x83, 0, 0]), None);
        // a length beyond the page is clamped, not a panic
        assert_eq!(
            parse_vpd_pg80(&[0, 0x80, 0xff, 0xff, b'A']).as_deref(),
            Some("A")
        );
    }

    #[test]
    fn vmgenid_blob_is_little_endian_guid() {
        let mut blob = vec![0u8; 4096];
        let le = [
            0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
            0xff, 0x00,
        ];
        blob[40..56].copy_from_slice(&le);
        assert_eq!(
            parse_vmgenid_blob(&blob).as_deref(),
            Some("11223344-5566-7788-99aa-bbccddeeff00")
        );
        assert_eq!(parse_vmgenid_blob(&[0u8; 10]), None);
    }

    #[test]
    fn mountinfo_root() {
        let mi = "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                  23 22 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(root_device(mi).as_deref(), Some("/dev/vda1"));
        assert_eq!(root_device("1 0 0:1 / / rw - overlay overlay rw\n"), None);
    }

    #[test]
    fn cpuinfo_and_meminfo() {
        let info = "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n";
        assert_eq!(
            parse_cpuinfo(info),
            (Some("QEMU Virtual CPU version 2.5+".into()), 2)
        );
        assert_eq!(
            parse_meminfo_total_kib("MemTotal:        2014936 kB\nMemFree: 1 kB\n"),
            Some(2014936)
        );
    }
}
