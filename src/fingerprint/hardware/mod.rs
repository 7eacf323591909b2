//! Virtual hardware fingerprints: the `vmledger-hardware/v1` document, its components and
//! their classes, read from inside a guest ([`guest`]), from libvirt domain XML
//! ([`libvirt`]) or from a Proxmox VM config ([`proxmox`]); the matching policy
//! ([`policy`]) and the explained comparison of two fingerprints ([`diff`]).
//!
//! A component is one fact about the machine (the SMBIOS UUID, one NIC's MAC address, one
//! disk's serial, ...). Its value is never stored: only a digest of the normalised value
//! (`SHA-256("vmledger/hardware-value/v1\n" || value)`, or for `/etc/machine-id` an
//! HMAC-SHA256 keyed with `vmledger/machine-id/v1`), so the same fact read by the guest and
//! by the host hook yields the same digest. Descriptive components that identify nothing
//! (vendor, CPU model, memory size, ...) also carry their value so a change can be told in
//! words. The exact encodings are specified in `docs/formats/hardware.md`.
//!
//! This module only reads: it never writes a file and never touches the ledger (the boot
//! integration in [`crate::fingerprint::boot`] does that through the ledger API).

pub mod diff;
pub mod guest;
pub mod libvirt;
pub mod policy;
pub mod proxmox;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use diff::{Change, ChangeKind, Conclusion, Drift, compare};
pub use policy::{Policy, Strategy};

/// The document format name.
pub const FORMAT: &str = "vmledger-hardware/v1";
/// Domain-separation prefix of every component value digest.
pub const VALUE_PREFIX: &[u8] = b"vmledger/hardware-value/v1\n";
/// HMAC-SHA256 key for `/etc/machine-id` (fixed, so the digest is stable without state).
pub const MACHINE_ID_KEY: &[u8] = b"vmledger/machine-id/v1";
/// Domain-separation prefix of the overall digest.
pub const DIGEST_PREFIX: &[u8] = b"vmledger/hardware/v1\n";
/// Largest libvirt XML or Proxmox config accepted (a domain XML is a few KiB).
pub const MAX_INPUT: u64 = 4 << 20;

/// Who decides a component's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Assigned by the hypervisor: SMBIOS UUID and serials, MACs, generation ID, CPU, memory.
    Hypervisor,
    /// Carried inside the disk image: machine-id, filesystem identity.
    Image,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Hypervisor => "hypervisor",
            Class::Image => "image",
        }
    }

    /// Words for explanations.
    pub fn describe(self) -> &'static str {
        match self {
            Class::Hypervisor => "assigned by the hypervisor",
            Class::Image => "carried inside the disk image",
        }
    }
}

/// Whether a component's value could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Present,
    /// The value exists but could not be read (e.g. root-only DMI serials); `reason` says why.
    Unavailable,
}

/// One fact about the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Stable name, e.g. `smbios.uuid`, `net.eth0.mac`, `disk.vda.serial`.
    pub name: String,
    pub class: Class,
    pub status: Status,
    /// Lowercase hex SHA-256 (or HMAC for `machine_id`) of the normalised value; present
    /// exactly when `status` is `present`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The value itself, only for descriptive components (see [`shows_value`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why the value could not be read; present exactly when `status` is `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where it was read: a file path, an XML path or a config key.
    pub source: String,
}

impl Component {
    pub fn is_present(&self) -> bool {
        self.status == Status::Present && self.digest.is_some()
    }
}

/// Where a fingerprint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Inside the guest, from a root directory's `/sys`, `/proc`, `/etc`.
    Guest,
    /// From libvirt domain XML.
    Libvirt,
    /// From a Proxmox `VMID.conf`.
    Proxmox,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Guest => "guest",
            SourceKind::Libvirt => "libvirt",
            SourceKind::Proxmox => "proxmox",
        }
    }
}

/// The source of a fingerprint: its kind and the root directory or file read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    /// The root directory (guest) or the file (`-` for stdin).
    pub path: String,
}

/// A `vmledger-hardware/v1` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// Always [`FORMAT`].
    pub format: String,
    pub source: Source,
    /// Overall digest over the present components (see [`overall_digest`]).
    pub digest: String,
    /// Components sorted by name; names are unique.
    pub components: Vec<Component>,
}

impl Fingerprint {
    /// Assemble a fingerprint: sort components by name, drop later duplicates, compute the
    /// overall digest.
    pub fn new(source: Source, mut components: Vec<Component>) -> Fingerprint {
        // Stable sort keeps the first of equal names, which `dedup_by` then retains.
        components.sort_by(|a, b| a.name.cmp(&b.name));
        components.dedup_by(|later, first| later.name == first.name);
        Fingerprint {
            format: FORMAT.to_string(),
            digest: overall_digest(&components),
            source,
            components,
        }
    }

    /// The component called `name`.
    pub fn get(&self, name: &str) -> Option<&Component> {
        self.components
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.components[i])
    }

    /// Check a document read from outside: format, digest shapes, names, sort order, and
    /// that the overall digest matches its components.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "`format` is {:?}, expected {FORMAT:?}",
                self.format
            ));
        }
        if !is_hex64(&self.digest) {
            return Err("`digest` must be 64 lowercase hex digits".into());
        }
        for (i, c) in self.components.iter().enumerate() {
            if !is_valid_name(&c.name) {
                return Err(format!(
                    "components[{i}].name {:?} is not a component name",
                    c.name
                ));
            }
            if i > 0 && self.components[i - 1].name >= c.name {
                return Err(format!(
                    "components[{i}] ({}) is out of order or repeated: components must be sorted by name",
                    c.name
                ));
            }
            match (c.status, &c.digest, &c.reason) {
                (Status::Present, Some(d), None) if is_hex64(d) => {}
                (Status::Present, _, _) => {
                    return Err(format!(
                        "components[{i}] ({}): a present component needs a 64-hex `digest` and no `reason`",
                        c.name
                    ));
                }
                (Status::Unavailable, None, Some(_)) => {}
                (Status::Unavailable, _, _) => {
                    return Err(format!(
                        "components[{i}] ({}): an unavailable component needs a `reason` and no `digest`",
                        c.name
                    ));
                }
            }
        }
        let computed = overall_digest(&self.components);
        if computed != self.digest {
            return Err(format!(
                "`digest` {} does not match the components (computed {computed}): the document was edited",
                self.digest
            ));
        }
        Ok(())
    }

    /// The same fingerprint without values and sources: what `boot` records in the ledger.
    pub fn digests_only(&self) -> Vec<Component> {
        self.components
            .iter()
            .map(|c| Component {
                value: None,
                source: String::new(),
                ..c.clone()
            })
            .collect()
    }
}

/// Errors reading hardware facts. Unreadable individual facts are not errors (they become
/// `unavailable` components); these are about the input as a whole.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {limit} bytes: not a {what}")]
    TooLarge {
        path: PathBuf,
        limit: u64,
        what: &'static str,
    },
    #[error("{path}: not a directory; --root needs the guest's root directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: malformed libvirt domain XML: {message}")]
    Xml { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Proxmox {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Hex SHA-256 of a normalised component value.
pub fn value_digest(value: &str) -> String {
    let mut h = Sha256::new();
    h.update(VALUE_PREFIX);
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

/// Hex HMAC-SHA256 of `/etc/machine-id`'s content (trimmed), keyed with [`MACHINE_ID_KEY`].
pub fn machine_id_digest(machine_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, MACHINE_ID_KEY);
    hex::encode(ring::hmac::sign(&key, machine_id.trim().as_bytes()).as_ref())
}

/// The overall digest: SHA-256 of [`DIGEST_PREFIX`] followed by, for each present
/// component in name order, `name NUL class NUL digest LF`.
pub fn overall_digest(components: &[Component]) -> String {
    let mut h = Sha256::new();
    h.update(DIGEST_PREFIX);
    for c in components {
        if let (Status::Present, Some(d)) = (c.status, &c.digest) {
            h.update(c.name.as_bytes());
            h.update([0]);
            h.update(c.class.as_str().as_bytes());
            h.update([0]);
            h.update(d.as_bytes());
            h.update([b'\n']);
        }
    }
    hex::encode(h.finalize())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Characters allowed in the variable part of a component name (interface, disk ids).
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '@' | '+')
}

/// Turn an interface or disk name read from outside into a component-name segment:
/// characters other than `[A-Za-z0-9_:@+-]` become `_`; at most 64 characters.
pub fn sanitize_id(raw: &str) -> String {
    let s: String = raw
        .chars()
        .take(64)
        .map(|c| if is_id_char(c) { c } else { '_' })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// The fixed component names (those without a per-device segment).
pub const FIXED_NAMES: &[&str] = &[
    "cpu.count",
    "cpu.model",
    "fs.root.uuid",
    "machine_id",
    "memory.mib",
    "smbios.board_serial",
    "smbios.chassis_serial",
    "smbios.product_name",
    "smbios.product_serial",
    "smbios.sys_vendor",
    "smbios.uuid",
    "virt.type",
    "vmgenid",
];

/// True for a well-formed component name: one of [`FIXED_NAMES`], `net.ID.mac`,
/// `disk.ID.serial` or `disk.ID.source`.
pub fn is_valid_name(name: &str) -> bool {
    if FIXED_NAMES.contains(&name) {
        return true;
    }
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [family, id, field] => {
            !id.is_empty()
                && id.len() <= 64
                && id.chars().all(is_id_char)
                && matches!(
                    (*family, *field),
                    ("net", "mac") | ("disk", "serial") | ("disk", "source")
                )
        }
        _ => false,
    }
}

/// The class a component name belongs to (image for `machine_id` and `fs.*`).
pub fn class_of(name: &str) -> Class {
    if name == "machine_id" || name.starts_with("fs.") {
        Class::Image
    } else {
        Class::Hypervisor
    }
}

/// Descriptive components whose value identifies nothing and is shown in the document.
pub fn shows_value(name: &str) -> bool {
    matches!(
        name,
        "smbios.sys_vendor"
            | "smbios.product_name"
            | "cpu.model"
            | "cpu.count"
            | "memory.mib"
            | "virt.type"
    )
}

/// Components that travel with a copy of the VM: image-class components, and what common
/// clone tools copy along (disk serials, the generation ID).
pub fn travels_with_copy(name: &str) -> bool {
    class_of(name) == Class::Image
        || name == "vmgenid"
        || (name.starts_with("disk.") && name.ends_with(".serial"))
}

/// Components a copy gets anew: the SMBIOS UUID and the MAC addresses.
pub fn is_instance_identity(name: &str) -> bool {
    name == "smbios.uuid" || is_mac(name)
}

pub(crate) fn is_mac(name: &str) -> bool {
    name.starts_with("net.") && name.ends_with(".mac")
}

/// What a component is, in words.
pub fn describe(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["smbios", "uuid"] => "SMBIOS system UUID".into(),
        ["smbios", "product_serial"] => "SMBIOS system serial number".into(),
        ["smbios", "board_serial"] => "SMBIOS baseboard serial number".into(),
        ["smbios", "chassis_serial"] => "SMBIOS chassis serial number".into(),
        ["smbios", "sys_vendor"] => "system manufacturer".into(),
        ["smbios", "product_name"] => "system product name".into(),
        ["machine_id"] => "/etc/machine-id (keyed hash)".into(),
        ["fs", "root", "uuid"] => "root filesystem UUID".into(),
        ["cpu", "model"] => "CPU model".into(),
        ["cpu", "count"] => "number of virtual CPUs".into(),
        ["memory", "mib"] => "memory size in MiB".into(),
        ["virt", "type"] => "virtualization type".into(),
        ["vmgenid"] => "VM generation ID".into(),
        ["net", id, "mac"] => format!("MAC address of network interface {id}"),
        ["disk", id, "serial"] => format!("serial number of disk {id}"),
        ["disk", id, "source"] => format!("backing file or volume of disk {id}"),
        _ => name.to_string(),
    }
}

/// Builds the component list for one source.
#[derive(Debug, Default)]
pub struct Components {
    list: Vec<Component>,
}

impl Components {
    pub fn new() -> Components {
        Components::default()
    }

    /// Add a present component from its already normalised value. Empty values (and
    /// firmware placeholders, see [`is_placeholder`]) are not facts and are skipped.
    pub fn value(&mut self, name: &str, value: &str, source: impl Into<String>) {
        let value = value.trim();
        if value.is_empty() || is_placeholder(value) {
            return;
        }
        self.list.push(Component {
            name: name.to_string(),
            class: class_of(name),
            status: Status::Present,
            digest: Some(value_digest(value)),
            value: shows_value(name).then(|| value.to_string()),
            reason: None,
            source: source.into(),
        });
    }

    /// Add a present component whose digest was computed otherwise (machine-id's HMAC).
    pub fn digest(&mut self, name: &str, digest: String, source: impl Into<String>) {
        self.list.push(Component {
            name: name.to_string(),
            class: class_of(name),
            status: Status::Present,
            digest: Some(digest),
            value: None,
            reason: None,
            source: source.into(),
        });
    }

    /// Add a component that exists but could not be read.
    pub fn unavailable(
        &mut self,
        name: &str,
        reason: impl Into<String>,
        source: impl Into<String>,
    ) {
        self.list.push(Component {
            name: name.to_string(),
            class: class_of(name),
            status: Status::Unavailable,
            digest: None,
            value: None,
            reason: Some(reason.into()),
            source: source.into(),
        });
    }

    pub fn finish(self, source: Source) -> Fingerprint {
        Fingerprint::new(source, self.list)
    }
}

/// Values firmware puts where no real value was set ("To be filled by O.E.M.", "None",
/// "Not Specified", all-zero or all-F UUIDs, ...). They identify nothing.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "none",
        "not specified",
        "not applicable",
        "not available",
        "to be filled by o.e.m.",
        "default string",
        "system serial number",
        "chassis serial number",
        "base board serial number",
        "0",
        "n/a",
    ];
    if WORDS.contains(&v.as_str()) {
        return true;
    }
    let hexes: String = v.chars().filter(|c| *c != '-' && *c != ' ').collect();
    hexes.len() >= 16 && (hexes.chars().all(|c| c == '0') || hexes.chars().all(|c| c == 'f'))
}

/// Normalise a UUID to lowercase `8-4-4-4-12` when it is one (with or without dashes or
/// braces); any other text is returned trimmed.
pub fn normalize_uuid(raw: &str) -> String {
    let t = raw.trim().trim_start_matches('{').trim_end_matches('}');
    let hexes: String = t.chars().filter(|c| *c != '-').collect();
    if hexes.len() == 32 && hexes.chars().all(|c| c.is_ascii_hexdigit()) {
        let h = hexes.to_ascii_lowercase();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    } else {
        raw.trim().to_string()
    }
}

/// Normalise a MAC address to lowercase colon-separated form (`aa:bb:cc:dd:ee:ff`) when it
/// is one (colons, dashes or none); `None` otherwise.
pub fn normalize_mac(raw: &str) -> Option<String> {
    let hexes: String = raw
        .trim()
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect();
    if hexes.len() != 12 || !hexes.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hexes.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).map(|i| &h[i * 2..i * 2 + 2]).collect();
    Some(pairs.join(":"))
}

/// Memory size in MiB, rounded up to a multiple of `2^floor(log2(mib / 8))` so that what
/// the guest sees (the configured size less what firmware and the kernel reserve) and what
/// the hypervisor configured give the same value: 1967 MiB seen of 2048 configured -> 2048.
pub fn round_memory_mib(mib: u64) -> u64 {
    if mib < 16 {
        return mib;
    }
    let step = 1u64 << (63 - (mib / 8).leading_zeros());
    mib.div_ceil(step) * step
}

impl fmt::Display for Conclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_rounding_recovers_configured_size() {
        assert_eq!(round_memory_mib(2014936 / 1024), 2048);
        assert_eq!(round_memory_mib(2048), 2048);
        assert_eq!(round_memory_mib(7936), 8192);
        assert_eq!(round_memory_mib(64512), 65536);
        assert_eq!(round_memory_mib(2960), 3072);
        assert_eq!(round_memory_mib(5930), 6144);
        assert_eq!(round_memory_mib(512), 512);
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_uuid(" {6F1C3D2E-5A4B-4C3D-9E8F-0A1B2C3D4E5F}\n"),
            "6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f"
        );
        assert_eq!(
            normalize_mac("52-54-00-AA-BB-01").as_deref(),
            Some("52:54:00:aa:bb:01")
        );
        assert_eq!(normalize_mac("52:54:00:aa:bb"), None);
        assert!(is_placeholder("To Be Filled By O.E.M."));
        assert!(is_placeholder("00000000-0000-0000-0000-000000000000"));
        assert!(!is_placeholder("VMware-56 4d 1b 2c"));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("net.eth0.mac"));
        assert!(is_valid_name("disk.scsi0.source"));
        assert!(!is_valid_name("net.eth0.serial"));
        assert!(!is_valid_name("smbios.uid"));
        assert_eq!(class_of("machine_id"), Class::Image);
        assert!(travels_with_copy("disk.vda.serial"));
        assert!(!travels_with_copy("disk.vda.source"));
        assert_eq!(sanitize_id("we ird/if"), "we_ird_if");
    }

    #[test]
    fn machine_id_is_keyed_and_stable() {
        let a = machine_id_digest("0123456789abcdef0123456789abcdef\n");
        assert_eq!(a, machine_id_digest("0123456789abcdef0123456789abcdef"));
        assert_ne!(a, value_digest("0123456789abcdef0123456789abcdef"));
    }
}
