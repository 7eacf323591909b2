//! Proxmox VE VM configs (`/etc/pve/qemu-server/VMID.conf`): a bounded parser into
//! [`VmConfig`] (what host hooks need: uuid, vmgenid, NIC MACs, disk volumes and serials)
//! and the hardware fingerprint derived from it.
//!
//! The format is `key: value` lines; `#` lines are the VM's description; the current
//! configuration ends at the first `[section]` (snapshots, `[PENDING]`), which is ignored.
//! Property strings are comma-separated `key=value` lists whose first item may be
//! positional (a disk's volume, a NIC's `model=MAC`). Lines that are not `key: value`, and
//! values that do not parse, are errors naming the line. Never writes.

use std::path::Path;

use base64::Engine as _;

use super::{
    Components, Fingerprint, HardwareError, Source, SourceKind, normalize_mac, normalize_uuid,
    round_memory_mib,
};

/// A Proxmox VM's configuration, as far as vmledger needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmConfig {
    pub name: Option<String>,
    /// `smbios1` (values decoded when `base64=1`).
    pub smbios: Smbios,
    /// `vmgenid`, normalised; `None` when absent or disabled (`0`).
    pub vmgenid: Option<String>,
    /// `netN` in key order.
    pub nets: Vec<Net>,
    /// `ideN`, `sataN`, `scsiN`, `virtioN`, `efidisk0`, `tpmstate0` in key order.
    pub disks: Vec<Disk>,
    /// `cpu` (the CPU type, e.g. `host`, `x86-64-v2-AES`).
    pub cpu: Option<String>,
    pub cores: u64,
    pub sockets: u64,
    pub vcpus: Option<u64>,
    /// `memory` in MiB (default 512).
    pub memory_mib: u64,
    /// False when `kvm: 0` (software emulation).
    pub kvm: bool,
}

/// `smbios1` fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Smbios {
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub family: Option<String>,
    pub sku: Option<String>,
    pub version: Option<String>,
}

/// One `netN`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Net {
    /// `net0`, `net1`, ...
    pub key: String,
    pub model: Option<String>,
    /// Lowercase colon-separated.
    pub mac: Option<String>,
    pub bridge: Option<String>,
}

/// One disk or drive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disk {
    /// `scsi0`, `virtio1`, `ide2`, ...
    pub key: String,
    /// The volume (`local-lvm:vm-100-disk-0`), a path, `none` or `cdrom`.
    pub volume: String,
    /// `disk` or `cdrom`.
    pub media: String,
    pub serial: Option<String>,
    pub format: Option<String>,
    pub size: Option<String>,
    pub readonly: bool,
    pub shared: bool,
}

impl Disk {
    pub fn is_cdrom(&self) -> bool {
        self.media == "cdrom" || self.volume == "cdrom"
    }
}

const DISK_PREFIXES: &[&str] = &["ide", "sata", "scsi", "virtio"];

fn is_disk_key(key: &str) -> bool {
    if key == "efidisk0" || key == "tpmstate0" {
        return true;
    }
    DISK_PREFIXES.iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_net_key(key: &str) -> bool {
    key.strip_prefix("net")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Read and parse a `VMID.conf` (at most [`super::MAX_INPUT`] bytes; `-` is stdin).
pub fn read(path: &Path) -> Result<VmConfig, HardwareError> {
    let text = super::libvirt::read_input(path, "Proxmox VM config")?;
    parse(&text, path)
}

/// Split a property string into (key, value) pairs; positional items get key `""`.
fn props(value: &str) -> Vec<(&str, &str)> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => ("", item.trim()),
        })
        .collect()
}

/// Decode `%XX` escapes (Proxmox URI-encodes some values, e.g. disk serials).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Parse a `VMID.conf`; `path` names the input in errors.
pub fn parse(text: &str, path: &Path) -> Result<VmConfig, HardwareError> {
    let mut c = VmConfig {
        cores: 1,
        sockets: 1,
        memory_mib: 512,
        kvm: true,
        ..VmConfig::default()
    };
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let err = |message: String| HardwareError::Proxmox {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            break;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(err(format!(
                "expected `key: value`, found {:?}",
                truncate(line)
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(format!("{:?} is not a config key", truncate(key))));
        }
        let number = |what: &str, v: &str| -> Result<u64, HardwareError> {
            v.parse::<u64>()
                .map_err(|_| err(format!("{key}: {what} must be a whole number, found {v:?}")))
        };
        match key {
            "name" => c.name = Some(value.to_string()),
            "smbios1" => c.smbios = smbios(value).map_err(|m| err(format!("smbios1: {m}")))?,
            "vmgenid" => {
                c.vmgenid = match value {
                    "0" | "1" | "" => None,
                    v => {
                        let u = normalize_uuid(v);
                        if u.len() != 36 {
                            return Err(err(format!("vmgenid: not a UUID: {v:?}")));
                        }
                        Some(u)
                    }
                }
            }
            "cpu" => {
                let p = props(value);
                c.cpu = p
                    .iter()
                    .find(|(k, _)| k.is_empty() || *k == "cputype")
                    .map(|(_, v)| v.to_string());
            }
            "cores" => c.cores = number("cores", value)?,
            "sockets" => c.sockets = number("sockets", value)?,
            "vcpus" => c.vcpus = Some(number("vcpus", value)?),
            "memory" => {
                let v = props(value)
                    .iter()
                    .find(|(k, _)| k.is_empty() || *k == "current")
                    .map(|(_, v)| *v)
                    .unwrap_or(value);
                c.memory_mib = number("memory", v)?;
            }
            "kvm" => c.kvm = value != "0",
            k if is_net_key(k) => {
                let mut n = Net {
                    key: k.to_string(),
                    ..Net::default()
                };
                for (pk, pv) in props(value) {
                    match pk {
                        "macaddr" => {
                            n.mac = Some(normalize_mac(pv).ok_or_else(|| {
                                err(format!("{k}: macaddr is not a MAC address: {pv:?}"))
                            })?)
                        }
                        "model" => n.model = Some(pv.to_string()),
                        "bridge" => n.bridge = Some(pv.to_string()),
                        "firewall" | "link_down" | "mtu" | "queues" | "rate" | "tag" | "trunks"
                        | "" => {}
                        model => {
                            // `virtio=BC:24:11:..`: the model with its MAC.
                            n.model = Some(model.to_string());
                            if !pv.is_empty() {
                                n.mac = Some(normalize_mac(pv).ok_or_else(|| {
                                    err(format!("{k}: {model}= is not a MAC address: {pv:?}"))
                                })?);
                            }
                        }
                    }
                }
                c.nets.push(n);
            }
            k if is_disk_key(k) => {
                let mut d = Disk {
                    key: k.to_string(),
                    media: "disk".into(),
                    ..Disk::default()
                };
                for (pk, pv) in props(value) {
                    match pk {
                        "" | "file" if d.volume.is_empty() => d.volume = pv.to_string(),
                        "media" => d.media = pv.to_string(),
                        "serial" => d.serial = Some(percent_decode(pv)).filter(|s| !s.is_empty()),
                        "format" => d.format = Some(pv.to_string()),
                        "size" => d.size = Some(pv.to_string()),
                        "ro" => d.readonly = pv == "1",
                        "shared" => d.shared = pv == "1",
                        _ => {}
                    }
                }
                if d.volume.is_empty() {
                    return Err(err(format!("{k}: no volume")));
                }
                c.disks.push(d);
            }
            _ => {}
        }
    }
    Ok(c)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn smbios(value: &str) -> Result<Smbios, String> {
    let p = props(value);
    let b64 = p.iter().any(|(k, v)| *k == "base64" && *v == "1");
    let mut s = Smbios::default();
    for (k, v) in p {
        let decoded = || -> Result<String, String> {
            if b64 {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| format!("{k} is not base64 although base64=1: {e}"))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                Ok(v.to_string())
            }
        };
        match k {
            "uuid" => {
                let u = normalize_uuid(v);
                if u.len() != 36 {
                    return Err(format!("uuid is not a UUID: {v:?}"));
                }
                s.uuid = Some(u);
            }
            "serial" => s.serial = Some(decoded()?),
            "manufacturer" => s.manufacturer = Some(decoded()?),
            "product" => s.product = Some(decoded()?),
            "family" => s.family = Some(decoded()?),
            "sku" => s.sku = Some(decoded()?),
            "version" => s.version = Some(decoded()?),
            _ => {}
        }
    }
    Ok(s)
}

impl VmConfig {
    /// The hardware fingerprint this VM presents; `origin` names the input.
    pub fn fingerprint(&self, origin: &str) -> Fingerprint {
        let mut c = Components::new();
        if let Some(u) = &self.smbios.uuid {
            c.value("smbios.uuid", u, "smbios1.uuid");
        }
        for (v, name, src) in [
            (
                &self.smbios.serial,
                "smbios.product_serial",
                "smbios1.serial",
            ),
            (
                &self.smbios.manufacturer,
                "smbios.sys_vendor",
                "smbios1.manufacturer",
            ),
            (
                &self.smbios.product,
                "smbios.product_name",
                "smbios1.product",
            ),
        ] {
            if let Some(v) = v {
                c.value(name, v, src);
            }
        }
        if let Some(g) = &self.vmgenid {
            c.value("vmgenid", g, "vmgenid");
        }
        for n in &self.nets {
            if let Some(mac) = &n.mac {
                c.value(&format!("net.{}.mac", n.key), mac, n.key.clone());
            }
        }
        for d in &self.disks {
            if d.is_cdrom() {
                continue;
            }
            if let Some(s) = &d.serial {
                c.value(
                    &format!("disk.{}.serial", d.key),
                    s,
                    format!("{}.serial", d.key),
                );
            }
            if d.volume != "none" {
                c.value(&format!("disk.{}.source", d.key), &d.volume, d.key.clone());
            }
        }
        if let Some(cpu) = &self.cpu {
            c.value("cpu.model", cpu, "cpu");
        }
        let count = self
            .vcpus
            .unwrap_or(self.cores.saturating_mul(self.sockets));
        c.value("cpu.count", &count.to_string(), "vcpus, cores x sockets");
        c.value(
            "memory.mib",
            &round_memory_mib(self.memory_mib).to_string(),
            "memory",
        );
        c.value("virt.type", if self.kvm { "kvm" } else { "qemu" }, "kvm");
        c.finish(Source {
            kind: SourceKind::Proxmox,
            path: origin.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "#Appliance%3A edge\nboot: order=scsi0;net0\ncores: 2\nsockets: 2\nmemory: 4096\n\
name: edge-1\nnet0: virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1\n\
net1: model=e1000,macaddr=bc:24:11:00:00:01,bridge=vmbr1\n\
ide2: local:iso/x.iso,media=cdrom,size=100M\n\
scsi0: local-lvm:vm-100-disk-0,iothread=1,size=32G,serial=EDGE%2D01\n\
smbios1: uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f,serial=QVBQLTE=,base64=1\n\
vmgenid: 2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50\n\n[snap1]\nnet0: virtio=00:00:00:00:00:01\n";

    #[test]
    fn parses_current_config_only() {
        let c = parse(CONF, Path::new("100.conf")).unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[0].mac.as_deref(), Some("bc:24:11:2a:3b:4c"));
        assert_eq!(c.nets[0].model.as_deref(), Some("virtio"));
        assert_eq!(c.nets[1].mac.as_deref(), Some("bc:24:11:00:00:01"));
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].is_cdrom());
        assert_eq!(c.disks[1].serial.as_deref(), Some("EDGE-01"));
        assert_eq!(c.smbios.serial.as_deref(), Some("APP-1"));
        let fp = c.fingerprint("100.conf");
        assert_eq!(fp.get("cpu.count").unwrap().value.as_deref(), Some("4"));
        assert!(fp.get("disk.ide2.source").is_none());
        fp.validate().unwrap();
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("cores: 2\nthis is not a key value\n", Path::new("1.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.conf: line 2"), "{e}");
        let e = parse("net0: virtio=nope\n", Path::new("1.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("net0") && e.contains("line 1"), "{e}");
        let e = parse("memory: lots\n", Path::new("1.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory"), "{e}");
    }
}
