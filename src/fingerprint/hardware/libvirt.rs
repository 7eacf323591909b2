//! libvirt domain XML: a bounded, strict parser into [`Domain`] (what host hooks need:
//! uuid, name, genid, interfaces, disks with their sources and flags, CPU, memory, SMBIOS
//! sysinfo) and the hardware fingerprint derived from it.
//!
//! Input is at most [`super::MAX_INPUT`] bytes and [`MAX_NODES`] XML nodes; DTDs are
//! refused (no entity expansion). Malformed XML, and values that do not parse (a UUID, a
//! MAC, a memory size), are errors naming the element or attribute. Unknown elements are
//! ignored: libvirt adds new ones every release. Never writes, never talks to libvirt.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use roxmltree::{Document, Node, ParsingOptions};

use super::{
    Components, Fingerprint, HardwareError, MAX_INPUT, Source, SourceKind, normalize_mac,
    normalize_uuid, round_memory_mib, sanitize_id,
};

/// Most XML nodes accepted in one document (a large domain has a few thousand).
pub const MAX_NODES: u32 = 200_000;

/// A libvirt domain, as far as vmledger needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Domain {
    /// The `type` attribute of `<domain>`: `kvm`, `qemu`, `xen`, ...
    pub domain_type: String,
    pub name: String,
    /// `<uuid>`, normalised to lowercase.
    pub uuid: Option<String>,
    /// `<genid>` (the VM Generation ID), normalised; `None` when absent or left empty
    /// for libvirt to generate.
    pub genid: Option<String>,
    /// `<memory>` in KiB.
    pub memory_kib: Option<u64>,
    /// `<vcpu>`: the `current` attribute when present, else the element's value.
    pub vcpus: Option<u64>,
    /// `<cpu>`: the `<model>` for custom CPUs, else the mode (`host-passthrough`, ...).
    pub cpu_model: Option<String>,
    /// `<sysinfo type='smbios'>` entries per block (`system`, `baseBoard`, `chassis`):
    /// entry name -> value.
    pub sysinfo: BTreeMap<String, BTreeMap<String, String>>,
    pub interfaces: Vec<Interface>,
    pub disks: Vec<Disk>,
}

/// One `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// The `type` attribute: `network`, `bridge`, `direct`, `user`, ...
    pub kind: String,
    /// `<mac address>`, lowercase colon-separated.
    pub mac: Option<String>,
    /// `<source network|bridge|dev>`.
    pub source: Option<String>,
    /// `<model type>`.
    pub model: Option<String>,
    /// `<target dev>` (the host-side device, assigned at start).
    pub target: Option<String>,
}

/// One `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disk {
    /// The `type` attribute: `file`, `block`, `network`, `volume`, `dir`.
    pub kind: String,
    /// The `device` attribute: `disk` (default), `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// The source: `file` or `dev` path, `dir`, `protocol:name` for network disks,
    /// `pool/volume` for volumes. `None` for an empty CD-ROM drive.
    pub source: Option<String>,
    /// `<target dev>` (`vda`, `sda`, ...) and `bus`.
    pub target: Option<String>,
    pub bus: Option<String>,
    /// `<readonly/>` and `<shareable/>`.
    pub readonly: bool,
    pub shareable: bool,
    /// `<serial>`.
    pub serial: Option<String>,
    /// `<driver type>` (the image format: `raw`, `qcow2`, ...) and `<driver name>`.
    pub driver_format: Option<String>,
    pub driver_name: Option<String>,
}

impl Disk {
    /// True for removable media (CD-ROM, floppy), whose source changes with the medium.
    pub fn is_removable(&self) -> bool {
        matches!(self.device.as_str(), "cdrom" | "floppy")
    }

    /// True when the source is a local path (a `file` or `block` disk).
    pub fn is_local_path(&self) -> bool {
        matches!(self.kind.as_str(), "file" | "block")
    }
}

/// Read domain XML from `path` (`-` for stdin), at most [`MAX_INPUT`] bytes, and parse it.
pub fn read(path: &Path) -> Result<Domain, HardwareError> {
    let text = read_input(path, "libvirt domain XML")?;
    parse(&text, path)
}

/// Read a text input (`-` is stdin) of at most [`MAX_INPUT`] bytes.
pub(crate) fn read_input(path: &Path, what: &'static str) -> Result<String, HardwareError> {
    let mut buf = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_INPUT + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut buf))
    };
    result.map_err(|source| HardwareError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(HardwareError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_INPUT,
            what,
        });
    }
    String::from_utf8(buf).map_err(|e| HardwareError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ),
    })
}

/// Parse domain XML; `path` names the input in errors.
pub fn parse(text: &str, path: &Path) -> Result<Domain, HardwareError> {
    let err = |message: String| HardwareError::Xml {
        path: path.to_path_buf(),
        message,
    };
    let doc = Document::parse_with_options(
        text,
        ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_NODES,
            ..ParsingOptions::default()
        },
    )
    .map_err(|e| err(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(err(format!(
            "the root element is <{}>, expected <domain>",
            root.tag_name().name()
        )));
    }
    let mut d = Domain {
        domain_type: root.attribute("type").unwrap_or_default().to_string(),
        ..Domain::default()
    };
    for child in root.children().filter(Node::is_element) {
        match child.tag_name().name() {
            "name" => d.name = text_of(child),
            "uuid" => d.uuid = Some(uuid_of(child, "/domain/uuid").map_err(err)?),
            "genid" => {
                let t = text_of(child);
                if !t.is_empty() {
                    d.genid = Some(uuid_of(child, "/domain/genid").map_err(err)?);
                }
            }
            "memory" => d.memory_kib = Some(memory_kib(child).map_err(err)?),
            "vcpu" => {
                let v = match child.attribute("current") {
                    Some(c) => c.trim().parse::<u64>().map_err(|_| {
                        err(format!(
                            "/domain/vcpu: attribute `current` is not a whole number: {c:?}"
                        ))
                    })?,
                    None => text_of(child).parse::<u64>().map_err(|_| {
                        err(format!(
                            "/domain/vcpu: not a whole number of vCPUs: {:?}",
                            text_of(child)
                        ))
                    })?,
                };
                d.vcpus = Some(v);
            }
            "cpu" => d.cpu_model = cpu_model(child),
            "sysinfo" if child.attribute("type") == Some("smbios") => {
                for block in child.children().filter(Node::is_element) {
                    let entries = d
                        .sysinfo
                        .entry(block.tag_name().name().to_string())
                        .or_default();
                    for e in block.children().filter(|n| n.has_tag_name("entry")) {
                        if let Some(name) = e.attribute("name") {
                            entries.insert(name.to_string(), text_of(e));
                        }
                    }
                }
            }
            "devices" => devices(child, &mut d).map_err(err)?,
            _ => {}
        }
    }
    if d.name.is_empty() {
        return Err(err("/domain/name is missing or empty".into()));
    }
    Ok(d)
}

fn text_of(n: Node) -> String {
    n.text().unwrap_or_default().trim().to_string()
}

fn uuid_of(n: Node, at: &str) -> Result<String, String> {
    let t = text_of(n);
    let u = normalize_uuid(&t);
    if u.len() == 36 && u.chars().filter(|c| *c == '-').count() == 4 {
        Ok(u)
    } else {
        Err(format!("{at}: not a UUID: {t:?}"))
    }
}

/// `<memory unit=...>` in KiB (libvirt's units: b, KB, K/KiB, MB, M/MiB, GB, G/GiB, ...).
fn memory_kib(n: Node) -> Result<u64, String> {
    let t = text_of(n);
    let v: u64 = t
        .parse()
        .map_err(|_| format!("/domain/memory: not a whole number: {t:?}"))?;
    let unit = n.attribute("unit").unwrap_or("KiB");
    let bytes_per: u128 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "/domain/memory: attribute `unit` is unknown: {other:?}"
            ));
        }
    };
    u64::try_from(u128::from(v) * bytes_per / 1024)
        .map_err(|_| format!("/domain/memory: {t} {unit} is too large"))
}

fn cpu_model(cpu: Node) -> Option<String> {
    let model = cpu
        .children()
        .find(|n| n.has_tag_name("model"))
        .map(text_of)
        .filter(|m| !m.is_empty());
    match (cpu.attribute("mode"), model) {
        (Some("host-passthrough"), _) => Some("host-passthrough".into()),
        (Some("maximum"), _) => Some("maximum".into()),
        (_, Some(m)) => Some(m),
        (Some(mode), None) => Some(mode.to_string()),
        (None, None) => None,
    }
}

fn devices(devs: Node, d: &mut Domain) -> Result<(), String> {
    let (mut ni, mut di) = (0usize, 0usize);
    for dev in devs.children().filter(Node::is_element) {
        match dev.tag_name().name() {
            "interface" => {
                ni += 1;
                let at = format!("/domain/devices/interface[{ni}]");
                let mut i = Interface {
                    kind: dev.attribute("type").unwrap_or_default().to_string(),
                    ..Interface::default()
                };
                for c in dev.children().filter(Node::is_element) {
                    match c.tag_name().name() {
                        "mac" => {
                            let raw = c.attribute("address").ok_or_else(|| {
                                format!("{at}/mac: attribute `address` is missing")
                            })?;
                            i.mac = Some(normalize_mac(raw).ok_or_else(|| {
                                format!(
                                    "{at}/mac: attribute `address` is not a MAC address: {raw:?}"
                                )
                            })?);
                        }
                        "source" => {
                            i.source = ["network", "bridge", "dev", "path"]
                                .iter()
                                .find_map(|a| c.attribute(*a))
                                .map(str::to_string)
                        }
                        "model" => i.model = c.attribute("type").map(str::to_string),
                        "target" => i.target = c.attribute("dev").map(str::to_string),
                        _ => {}
                    }
                }
                d.interfaces.push(i);
            }
            "disk" => {
                di += 1;
                let at = format!("/domain/devices/disk[{di}]");
                let mut k = Disk {
                    kind: dev.attribute("type").unwrap_or("file").to_string(),
                    device: dev.attribute("device").unwrap_or("disk").to_string(),
                    ..Disk::default()
                };
                for c in dev.children().filter(Node::is_element) {
                    match c.tag_name().name() {
                        "source" => k.source = disk_source(c, &k.kind),
                        "target" => {
                            let t = c.attribute("dev").ok_or_else(|| {
                                format!("{at}/target: attribute `dev` is missing")
                            })?;
                            k.target = Some(t.to_string());
                            k.bus = c.attribute("bus").map(str::to_string);
                        }
                        "readonly" => k.readonly = true,
                        "shareable" => k.shareable = true,
                        "serial" => k.serial = Some(text_of(c)).filter(|s| !s.is_empty()),
                        "driver" => {
                            k.driver_format = c.attribute("type").map(str::to_string);
                            k.driver_name = c.attribute("name").map(str::to_string);
                        }
                        _ => {}
                    }
                }
                d.disks.push(k);
            }
            _ => {}
        }
    }
    Ok(())
}

fn disk_source(src: Node, kind: &str) -> Option<String> {
    let attr = |a: &str| src.attribute(a).map(str::to_string);
    match kind {
        "file" => attr("file"),
        "block" => attr("dev"),
        "dir" => attr("dir"),
        "network" => {
            let name = attr("name").unwrap_or_default();
            Some(match src.attribute("protocol") {
                Some(p) => format!("{p}:{name}"),
                None => name,
            })
        }
        "volume" => Some(format!(
            "{}/{}",
            attr("pool").unwrap_or_default(),
            attr("volume").unwrap_or_default()
        )),
        _ => attr("file").or_else(|| attr("dev")),
    }
}

impl Domain {
    /// The hardware fingerprint this domain presents; `origin` names the input (`-` for
    /// stdin). See `docs/formats/hardware.md` for which element feeds which component.
    pub fn fingerprint(&self, origin: &str) -> Fingerprint {
        let mut c = Components::new();
        let system = self.sysinfo.get("system");
        let sys = |k: &str| system.and_then(|s| s.get(k)).map(String::as_str);
        match sys("uuid") {
            Some(u) => c.value(
                "smbios.uuid",
                &normalize_uuid(u),
                "/domain/sysinfo/system/entry[@name='uuid']",
            ),
            None => {
                if let Some(u) = &self.uuid {
                    c.value("smbios.uuid", u, "/domain/uuid");
                }
            }
        }
        for (key, name) in [
            ("serial", "smbios.product_serial"),
            ("manufacturer", "smbios.sys_vendor"),
            ("product", "smbios.product_name"),
        ] {
            if let Some(v) = sys(key) {
                c.value(
                    name,
                    v,
                    format!("/domain/sysinfo/system/entry[@name='{key}']"),
                );
            }
        }
        for (block, name) in [
            ("baseBoard", "smbios.board_serial"),
            ("chassis", "smbios.chassis_serial"),
        ] {
            if let Some(v) = self.sysinfo.get(block).and_then(|b| b.get("serial")) {
                c.value(
                    name,
                    v,
                    format!("/domain/sysinfo/{block}/entry[@name='serial']"),
                );
            }
        }
        if let Some(g) = &self.genid {
            c.value("vmgenid", g, "/domain/genid");
        }
        for (i, nic) in self.interfaces.iter().enumerate() {
            if let Some(mac) = &nic.mac {
                c.value(
                    &format!("net.{i}.mac"),
                    mac,
                    format!("/domain/devices/interface[{}]/mac", i + 1),
                );
            }
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let (Some(target), false) = (&disk.target, disk.is_removable()) else {
                continue;
            };
            let id = sanitize_id(target);
            let at = format!("/domain/devices/disk[{}]", i + 1);
            if let Some(s) = &disk.serial {
                c.value(&format!("disk.{id}.serial"), s, format!("{at}/serial"));
            }
            if let Some(s) = &disk.source {
                c.value(&format!("disk.{id}.source"), s, format!("{at}/source"));
            }
        }
        if let Some(m) = &self.cpu_model {
            c.value("cpu.model", m, "/domain/cpu");
        }
        if let Some(n) = self.vcpus {
            c.value("cpu.count", &n.to_string(), "/domain/vcpu");
        }
        if let Some(kib) = self.memory_kib {
            c.value(
                "memory.mib",
                &round_memory_mib(kib / 1024).to_string(),
                "/domain/memory",
            );
        }
        if !self.domain_type.is_empty() {
            c.value("virt.type", &self.domain_type, "/domain/@type");
        }
        c.finish(Source {
            kind: SourceKind::Libvirt,
            path: origin.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm'>
  <name>app1</name>
  <uuid>6F1C3D2E-5A4B-4C3D-9E8F-0A1B2C3D4E5F</uuid>
  <genid>11111111-2222-4333-8444-555555555555</genid>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <cpu mode='host-passthrough'/>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/img/app1.qcow2'/><target dev='vda' bus='virtio'/><serial>D1</serial></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdb'/><shareable/></disk>
    <interface type='network'><mac address='52:54:00:AA:BB:01'/><source network='default'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_what_hooks_need() {
        let d = parse(XML, Path::new("t.xml")).unwrap();
        assert_eq!(d.name, "app1");
        assert_eq!(
            d.uuid.as_deref(),
            Some("6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f")
        );
        assert_eq!(d.memory_kib, Some(2 << 20));
        assert_eq!(d.vcpus, Some(2));
        assert_eq!(d.disks.len(), 3);
        assert_eq!(d.disks[0].driver_format.as_deref(), Some("qcow2"));
        assert!(d.disks[1].readonly && d.disks[1].is_removable() && d.disks[1].source.is_none());
        assert_eq!(d.disks[2].source.as_deref(), Some("rbd:pool/img"));
        assert!(d.disks[2].shareable);
        assert_eq!(d.interfaces[0].mac.as_deref(), Some("52:54:00:aa:bb:01"));
        let fp = d.fingerprint("t.xml");
        assert!(fp.get("disk.sda.serial").is_none());
        assert_eq!(fp.get("memory.mib").unwrap().value.as_deref(), Some("2048"));
        fp.validate().unwrap();
    }

    #[test]
    fn errors_name_the_element() {
        let e = |x: &str| parse(x, Path::new("x.xml")).unwrap_err().to_string();
        assert!(e("<domain><name>a</name><uuid>nope</uuid></domain>").contains("/domain/uuid"));
        assert!(
            e("<domain><name>a</name><devices><interface><mac address='zz'/></interface></devices></domain>")
                .contains("interface[1]/mac: attribute `address`")
        );
        assert!(
            e("<domain><name>a</name><memory unit='parsec'>1</memory></domain>").contains("unit")
        );
        assert!(e("<domain><name>a</name>").contains("x.xml"));
        assert!(e("<vm/>").contains("expected <domain>"));
        assert!(e("<!DOCTYPE d [<!ENTITY x 'y'>]><domain/>").contains("x.xml"));
    }
}
