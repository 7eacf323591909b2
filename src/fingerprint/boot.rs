//! What `boot` records about fingerprints, and what `status` shows of it.
//!
//! [`collect`] builds the members that `boot` merges into its ledger entry's `data`:
//! - `hardware`: this guest's hardware fingerprint, component digests only (no values,
//!   no sources): `{"digest", "components": [{"name","class","digest"} |
//!   {"name","class","unavailable": reason}]}`;
//! - `hardware_drift`: the comparison with the previous boot's fingerprint under the
//!   configured policy: `{"conclusion", "against_seq", "changed", "added", "removed",
//!   "explanation"}` (absent when the previous boot recorded no fingerprint);
//! - `trees`: for each `[fingerprint] trees` directory, `{"path","root","entries",
//!   "complete","errors"}` or `{"path","error"}`;
//! - `images`: for each `[fingerprint] images` disk image, `{"path","image_format",
//!   "virtual_size","content_root"}` or `{"path","error"}` (see `docs/formats/image.md`).
//!
//! [`summary`] and [`current_hardware`] give the same hardware member to `vmledger
//! checkin`, whose requests carry it.
//!
//! Nothing here can stop a boot from being recorded: a fingerprint that cannot be taken is
//! recorded as an error and reported as a note. Reads the ledger; never writes it (the
//! caller appends the entry).

use serde_json::{Map, Value, json};

use super::hardware::{self, Class, Component, Status, diff::compare_components};
use super::image;
use super::tree;
use crate::config::Config;
use crate::ledger::{Ledger, LedgerError};

/// The `data` members for a boot entry, and notes for the operator.
#[derive(Debug, Default)]
pub struct BootFingerprints {
    pub data: Map<String, Value>,
    pub notes: Vec<String>,
}

/// The last recorded drift conclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDrift {
    /// The boot entry that recorded it.
    pub seq: u64,
    pub at: String,
    pub conclusion: String,
    pub against_seq: Option<u64>,
    pub explanation: String,
}

/// Fingerprint what the configuration asks for and compare the hardware with the
/// previous boot recorded in `ledger`.
pub fn collect(cfg: &Config, ledger: &Ledger) -> Result<BootFingerprints, LedgerError> {
    let mut out = BootFingerprints::default();
    if cfg.fingerprint.hardware {
        hardware_at_boot(cfg, ledger, &mut out)?;
    }
    trees_at_boot(cfg, &mut out);
    images_at_boot(cfg, &mut out);
    Ok(out)
}

fn hardware_at_boot(
    cfg: &Config,
    ledger: &Ledger,
    out: &mut BootFingerprints,
) -> Result<(), LedgerError> {
    let fp = match hardware::guest::fingerprint(&cfg.hardware.root) {
        Ok(fp) => fp,
        Err(e) => {
            out.notes
                .push(format!("vmledger: hardware fingerprint not recorded: {e}"));
            out.data
                .insert("hardware".into(), json!({"error": e.to_string()}));
            return Ok(());
        }
    };
    let recorded: Vec<Value> = fp.components.iter().map(record_component).collect();
    if let Some(prev) = ledger.latest_of_kind("boot")?
        && let Some(old) = recorded_components(prev.body.data.get("hardware"))
    {
        let d = compare_components(&old, &fp.components, &cfg.hardware.policy);
        let names = |k: hardware::ChangeKind| -> Vec<&str> {
            d.changes
                .iter()
                .filter(|c| c.change == k)
                .map(|c| c.component.as_str())
                .collect()
        };
        out.data.insert(
            "hardware_drift".into(),
            json!({
                "conclusion": d.conclusion.as_str(),
                "against_seq": prev.body.seq,
                "changed": names(hardware::ChangeKind::Changed),
                "added": names(hardware::ChangeKind::Added),
                "removed": names(hardware::ChangeKind::Removed),
                "explanation": d.explanation,
            }),
        );
    }
    out.data
        .insert("hardware".into(), summary_of(&fp.digest, recorded));
    Ok(())
}

fn summary_of(digest: &str, components: Vec<Value>) -> Value {
    json!({"digest": digest, "components": components})
}

/// The hardware summary of a fingerprint, as `boot` records it in its entry and check-in
/// requests carry it (`hardware` member): `{"digest", "components": [{"name","class",
/// "digest"} | {"name","class","unavailable"}]}`. Digests only, never values.
pub fn summary(fp: &hardware::Fingerprint) -> Value {
    summary_of(
        &fp.digest,
        fp.components.iter().map(record_component).collect(),
    )
}

/// This guest's hardware summary now (see [`summary`]), or `None` when the configuration
/// turns hardware fingerprints off (`[fingerprint] hardware = false`).
pub fn current_hardware(cfg: &Config) -> Result<Option<Value>, hardware::HardwareError> {
    if !cfg.fingerprint.hardware {
        return Ok(None);
    }
    Ok(Some(summary(&hardware::guest::fingerprint(
        &cfg.hardware.root,
    )?)))
}

fn record_component(c: &Component) -> Value {
    match (&c.status, &c.digest) {
        (Status::Present, Some(d)) => json!({"name": c.name, "class": c.class, "digest": d}),
        _ => json!({
            "name": c.name,
            "class": c.class,
            "unavailable": c.reason.clone().unwrap_or_default(),
        }),
    }
}

/// Read back the components a boot entry recorded (`None` when it recorded none or they
/// do not parse: an entry written by another version is not a reason to fail a boot).
pub fn recorded_components(hw: Option<&Value>) -> Option<Vec<Component>> {
    let list = hw?.get("components")?.as_array()?;
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let name = v.get("name")?.as_str()?.to_string();
        let class: Class = serde_json::from_value(v.get("class")?.clone()).ok()?;
        let (status, digest, reason) = match (v.get("digest"), v.get("unavailable")) {
            (Some(d), _) => (Status::Present, Some(d.as_str()?.to_string()), None),
            (None, Some(r)) => (Status::Unavailable, None, Some(r.as_str()?.to_string())),
            _ => return None,
        };
        out.push(Component {
            name,
            class,
            status,
            digest,
            value: None,
            reason,
            source: String::new(),
        });
    }
    Some(out)
}

fn trees_at_boot(cfg: &Config, out: &mut BootFingerprints) {
    if cfg.fingerprint.trees.is_empty() {
        return;
    }
    // The patterns were validated when the configuration was read.
    let excludes =
        tree::Excludes::new(&cfg.fingerprint.exclude).unwrap_or_else(|_| tree::Excludes::none());
    let mut trees = Vec::new();
    for dir in &cfg.fingerprint.trees {
        match tree::fingerprint(dir, &excludes) {
            Ok(t) => {
                if !t.complete {
                    out.notes.push(format!(
                        "vmledger: tree {}: {} entries could not be read (first: {}: {}); its root digest covers the rest",
                        dir.display(),
                        t.errors.len(),
                        t.errors[0].path,
                        t.errors[0].error
                    ));
                }
                trees.push(json!({
                    "path": dir.display().to_string(),
                    "root": t.root,
                    "entries": t.entries.len(),
                    "complete": t.complete,
                    "errors": t.errors.len(),
                }));
            }
            Err(e) => {
                out.notes.push(format!("vmledger: {e}"));
                trees.push(json!({"path": dir.display().to_string(), "error": e.to_string()}));
            }
        }
    }
    out.data.insert("trees".into(), Value::Array(trees));
}

/// Configured disk images (`[fingerprint] images`): their content roots, hashed on every
/// core. An image that cannot be read is recorded with its error and reported as a note.
fn images_at_boot(cfg: &Config, out: &mut BootFingerprints) {
    if cfg.fingerprint.images.is_empty() {
        return;
    }
    let opts = image::Options::default();
    let images = cfg
        .fingerprint
        .images
        .iter()
        .map(|path| match image::fingerprint(path, &opts) {
            Ok(fp) => json!({
                "path": path.display().to_string(),
                "image_format": fp.image_format,
                "virtual_size": fp.virtual_size,
                "content_root": image::hex(&fp.content_root),
            }),
            Err(e) => {
                out.notes.push(format!("vmledger: {e}"));
                json!({"path": path.display().to_string(), "error": e.to_string()})
            }
        })
        .collect();
    out.data.insert("images".into(), Value::Array(images));
}

/// The drift conclusion recorded by the latest boot entry, if it recorded one.
pub fn last_drift(ledger: &Ledger) -> Result<Option<LastDrift>, LedgerError> {
    let Some(e) = ledger.latest_of_kind("boot")? else {
        return Ok(None);
    };
    let Some(d) = e.body.data.get("hardware_drift") else {
        return Ok(None);
    };
    let s = |k: &str| {
        d.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Some(LastDrift {
        seq: e.body.seq,
        at: e.body.at.clone(),
        conclusion: s("conclusion"),
        against_seq: d.get("against_seq").and_then(Value::as_u64),
        explanation: s("explanation"),
    }))
}
