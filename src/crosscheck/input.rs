//! Finding and reading `vmledger-export/v1` bundles with bounded memory.
//!
//! Two steps, so that the cross-check can stream one instance at a time whatever order
//! the files come in:
//! 1. [`scan`]: walk the paths and read each file's *header* only (`format`, `serial`,
//!    `instance`, `public_key`): the reader stops at `entries` once the header is known,
//!    so this costs a few hundred bytes per file. Each header goes to the caller, which
//!    indexes and groups them by serial and instance ([`super::index`]).
//! 2. [`read_bundle`]: read one whole bundle (one instance's file). Entries are read one
//!    by one: a malformed entry (a missing member, an extra one, a seq beyond 2^64) is a
//!    [`BadEntry`] naming its index, and the bundle's other entries are still returned.
//!
//! What is a bundle: a JSON document whose `format` is `vmledger-export/v1`. Documents of
//! a known other vmledger format (labels, policies, reports, manifests...) are
//! [`Refused::OtherDocument`]; anything else (no `format`, an unknown or garbled one, not
//! a JSON object, unknown export versions) is [`Refused::Bad`] with the reason: it may be
//! an export that is damaged, and it is never silently passed over.
//!
//! Every file is size-checked before it is read ([`Limits::max_bundle_bytes`]); JSON
//! recursion is bounded by `serde_json`. Problems are values naming the file, never
//! panics. This module never judges anything.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::keys;
use crate::ledger::entry::Entry;
use crate::ledger::export::{Bundle, EXPORT_FORMAT};

/// The prefix every version of the export format shares.
const EXPORT_FAMILY: &str = "vmledger-export/";

/// The other documents vmledger writes (their `format` without the version): found in a
/// directory of exports, they are skipped. Any other `format` is not skipped: a garbled
/// one may hide an export.
pub const OTHER_FORMATS: &[&str] = &[
    "vmledger-admin-alerts",
    "vmledger-admin-offline-receipt",
    "vmledger-admin-override",
    "vmledger-admin-show",
    "vmledger-admin-sla",
    "vmledger-admin-sla-import",
    "vmledger-backup-manifest",
    "vmledger-backup-manifest-written",
    "vmledger-backup-verify",
    "vmledger-bench-checkin",
    "vmledger-boot",
    "vmledger-checkin",
    "vmledger-checkin-request",
    "vmledger-crosscheck",
    "vmledger-crosscheck-policy",
    "vmledger-entries",
    "vmledger-error",
    "vmledger-evidence",
    "vmledger-export-written",
    "vmledger-gate",
    "vmledger-hardware",
    "vmledger-hardware-diff",
    "vmledger-health",
    "vmledger-hook-allow",
    "vmledger-hook-install",
    "vmledger-hook-settle",
    "vmledger-hook-status",
    "vmledger-host-root",
    "vmledger-host-running",
    "vmledger-image",
    "vmledger-image-diff",
    "vmledger-image-error",
    "vmledger-init",
    "vmledger-instance",
    "vmledger-manifest",
    "vmledger-receipt",
    "vmledger-serve",
    "vmledger-service-error",
    "vmledger-service-key",
    "vmledger-service-key-change",
    "vmledger-simulate",
    "vmledger-simulate-labels",
    "vmledger-simulate-score",
    "vmledger-status",
    "vmledger-tree",
    "vmledger-tree-diff",
    "vmledger-verify",
    "vmledger-watch",
    "vmledger-watch-snapshot",
];

/// True when `format` is `<a known other vmledger document>/v<digits>`.
pub fn is_other_format(format: &str) -> bool {
    format.split_once("/v").is_some_and(|(family, version)| {
        OTHER_FORMATS.contains(&family)
            && !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Bounds on what one file may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger files are refused without being read.
    pub max_bundle_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_bytes: 64 << 20,
        }
    }
}

/// A bundle file and what its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub path: PathBuf,
    pub serial: Option<String>,
    pub instance: String,
    pub public_key: String,
    pub bytes: u64,
}

/// A file that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNote {
    pub path: String,
    pub reason: String,
}

/// What [`scan`] found besides the bundles (which go to the caller one by one).
#[derive(Debug, Default)]
pub struct Scan {
    /// Files found in directories that are not export bundles (documents of a known other
    /// vmledger format, files not named `*.json`).
    pub skipped: Vec<FileNote>,
    /// Files that should be bundles but cannot be read as one (every `*.json` file that is
    /// not a known other vmledger document).
    pub unreadable: Vec<FileNote>,
}

/// A path named on the command line that does not exist or cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PathError {
    pub path: String,
    pub message: String,
}

/// Headers read in parallel at a time (bounds the scan's memory whatever the fleet).
const BATCH: usize = 4096;

/// Walk `paths` (files as given; directories recursively, in name order, taking
/// `*.json` files and never following symbolic links), read every header, and hand each
/// bundle's [`FileRef`] to `found` in walk order. Headers are read on the rayon pool in
/// batches of [`BATCH`] files.
pub fn scan<E: From<PathError>>(
    paths: &[PathBuf],
    limits: Limits,
    found: &mut dyn FnMut(FileRef) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut out = Scan::default();
    let mut batch: Vec<(PathBuf, bool)> = Vec::with_capacity(BATCH);
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| PathError {
            path: p.display().to_string(),
            message: format!("{e}; name export bundles (files) or directories holding them"),
        })?;
        if !meta.is_dir() {
            batch.push((p.clone(), true));
            if batch.len() >= BATCH {
                read_batch(&mut batch, limits, &mut out, found)?;
            }
            continue;
        }
        for item in walkdir::WalkDir::new(p)
            .follow_links(false)
            .sort_by_file_name()
        {
            match item {
                Ok(e) if e.file_type().is_file() => {
                    let is_json = e
                        .path()
                        .extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| x.eq_ignore_ascii_case("json"));
                    if is_json {
                        batch.push((e.into_path(), false));
                        if batch.len() >= BATCH {
                            read_batch(&mut batch, limits, &mut out, found)?;
                        }
                    } else {
                        out.skipped.push(FileNote {
                            path: e.path().display().to_string(),
                            reason: "not named *.json".into(),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => out.unreadable.push(FileNote {
                    path: e
                        .path()
                        .map_or_else(|| p.display().to_string(), |x| x.display().to_string()),
                    reason: format!("cannot list: {e}"),
                }),
            }
        }
    }
    read_batch(&mut batch, limits, &mut out, found)?;
    Ok(out)
}

/// Read the headers of `batch` in parallel and pass them on in order; empties `batch`.
fn read_batch<E>(
    batch: &mut Vec<(PathBuf, bool)>,
    limits: Limits,
    out: &mut Scan,
    found: &mut dyn FnMut(FileRef) -> Result<(), E>,
) -> Result<(), E> {
    use rayon::prelude::*;
    let results: Vec<(PathBuf, bool, Result<FileRef, Refused>)> = batch
        .par_drain(..)
        .map(|(path, explicit)| {
            let r = read_header(&path, limits);
            (path, explicit, r)
        })
        .collect();
    for (path, explicit, r) in results {
        match r {
            Ok(f) => found(f)?,
            Err(Refused::OtherDocument(what)) if !explicit => out.skipped.push(FileNote {
                path: path.display().to_string(),
                reason: what,
            }),
            Err(Refused::OtherDocument(what)) => out.unreadable.push(FileNote {
                path: path.display().to_string(),
                reason: format!("not an export bundle: {what}"),
            }),
            Err(Refused::Bad(reason)) => out.unreadable.push(FileNote {
                path: path.display().to_string(),
                reason,
            }),
        }
    }
    Ok(())
}

/// Why a file is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A known other vmledger document (e.g. a simulator label file beside the exports).
    OtherDocument(String),
    /// Meant to be a bundle, but unusable: the reason says why and what to do.
    Bad(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::OtherDocument(s) | Refused::Bad(s) => f.write_str(s),
        }
    }
}

fn size_check(path: &Path, limits: Limits) -> Result<(File, u64), Refused> {
    let file = File::open(path).map_err(|e| Refused::Bad(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Refused::Bad(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(Refused::Bad("not a regular file".into()));
    }
    if meta.len() > limits.max_bundle_bytes {
        return Err(Refused::Bad(format!(
            "the file is {} bytes, over the limit of {} bytes for one bundle; \
             a real ledger export is far smaller: check the file, or split the export with \
             `vmledger ledger export --since SEQ`, or raise --max-bundle-mib",
            meta.len(),
            limits.max_bundle_bytes
        )));
    }
    Ok((file, meta.len()))
}

/// Explain a JSON error in words a support engineer can act on.
pub fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => format!(
            "truncated: the JSON document ends early (line {}, column {}); copy the export again",
            e.line(),
            e.column()
        ),
        Category::Syntax => format!("not valid JSON: {e}"),
        Category::Data => format!("not a valid export bundle: {e}"),
        Category::Io => format!("cannot read: {e}"),
    }
}

/// The reason for a `format` that is neither an export nor a known other document.
fn unknown_format(f: &str) -> String {
    let shown: String = f.chars().take(80).collect();
    format!(
        "unknown format `{shown}`: neither {EXPORT_FORMAT} nor another vmledger document; \
         if it is a damaged export, export the ledger again"
    )
}

#[derive(Debug, Default)]
struct RawHeader {
    format: Option<String>,
    serial: Option<Option<String>>,
    instance: Option<String>,
    public_key: Option<String>,
    exported_at: Option<String>,
    unknown: Option<String>,
}

impl RawHeader {
    fn complete(&self) -> bool {
        self.format.is_some()
            && self.serial.is_some()
            && self.instance.is_some()
            && self.public_key.is_some()
            && self.exported_at.is_some()
    }
}

/// Why the header reader stopped before the end of the document.
enum Stop {
    HeaderComplete(RawHeader),
    OtherFormat(String),
}

struct HeaderSeed<'a> {
    stop: &'a RefCell<Option<Stop>>,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (an export bundle)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut h = RawHeader::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "format" => {
                    let f: String = map.next_value()?;
                    if !f.starts_with(EXPORT_FAMILY) {
                        *self.stop.borrow_mut() = Some(Stop::OtherFormat(f));
                        return Err(de::Error::custom("stop: another document"));
                    }
                    h.format = Some(f);
                }
                "serial" => h.serial = Some(map.next_value()?),
                "instance" => h.instance = Some(map.next_value()?),
                "public_key" => h.public_key = Some(map.next_value()?),
                "exported_at" => h.exported_at = Some(map.next_value()?),
                "entries" if h.complete() => {
                    *self.stop.borrow_mut() = Some(Stop::HeaderComplete(std::mem::take(&mut h)));
                    return Err(de::Error::custom("stop: header complete"));
                }
                other => {
                    if other != "entries" && h.unknown.is_none() {
                        h.unknown = Some(other.to_string());
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(h)
    }
}

/// Read only the header of the bundle at `path` (see the module doc).
pub fn read_header(path: &Path, limits: Limits) -> Result<FileRef, Refused> {
    let (file, bytes) = size_check(path, limits)?;
    let stop = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(16 << 10, file));
    let parsed = HeaderSeed { stop: &stop }.deserialize(&mut de);
    let header = match (parsed, stop.into_inner()) {
        (_, Some(Stop::HeaderComplete(h))) => h,
        (_, Some(Stop::OtherFormat(f))) if is_other_format(&f) => {
            return Err(Refused::OtherDocument(format!("a `{f}` document")));
        }
        (_, Some(Stop::OtherFormat(f))) => return Err(Refused::Bad(unknown_format(&f))),
        (Ok(h), None) => {
            de.end().map_err(|e| Refused::Bad(json_reason(&e)))?;
            h
        }
        (Err(e), None) => return Err(Refused::Bad(json_reason(&e))),
    };
    check_header(header, path, bytes)
}

fn check_header(h: RawHeader, path: &Path, bytes: u64) -> Result<FileRef, Refused> {
    let bad = |m: String| Err(Refused::Bad(m));
    let Some(format) = h.format else {
        return bad(format!(
            "not an export bundle: the JSON object has no `format` member (a {EXPORT_FORMAT} \
             bundle starts with \"format\": \"{EXPORT_FORMAT}\"); if it is a damaged export, \
             export the ledger again"
        ));
    };
    if format != EXPORT_FORMAT {
        return bad(format!(
            "unknown format version `{format}`: this vmledger reads {EXPORT_FORMAT}; \
             cross-check it with the vmledger release that wrote it"
        ));
    }
    if let Some(u) = h.unknown {
        return bad(format!(
            "not a valid export bundle: unknown member `{u}` ({EXPORT_FORMAT} has exactly \
             format, serial, instance, public_key, exported_at, entries)"
        ));
    }
    let missing = |m: &str| Refused::Bad(format!("not a valid export bundle: no `{m}` member"));
    let instance = h.instance.ok_or_else(|| missing("instance"))?;
    let public_key = h.public_key.ok_or_else(|| missing("public_key"))?;
    let serial = h.serial.ok_or_else(|| missing("serial"))?;
    h.exported_at.ok_or_else(|| missing("exported_at"))?;
    if instance.len() != 32
        || !instance
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return bad(format!(
            "`instance` is `{}`, not 32 lowercase hex digits",
            instance.chars().take(80).collect::<String>()
        ));
    }
    if let Err(e) = keys::decode_public_key(&public_key, "`public_key`") {
        return bad(e.to_string());
    }
    Ok(FileRef {
        path: path.to_path_buf(),
        serial,
        instance,
        public_key,
        bytes,
    })
}

/// One entry of a bundle that cannot be read as an entry (the bundle's other entries are
/// still read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// Its position in the bundle's `entries` (0-based).
    pub index: usize,
    /// Its `body.seq` and `hash`, when they can be read.
    pub seq: Option<u64>,
    pub hash: Option<String>,
    pub reason: String,
}

/// A bundle read whole: the header (already checked by [`read_header`]) and every entry,
/// each read on its own.
#[derive(Debug)]
pub struct ReadBundle {
    pub serial: Option<String>,
    pub instance: String,
    pub public_key: String,
    pub entries: Vec<Result<Entry, BadEntry>>,
}

/// The bundle with its entries left as raw JSON text (borrowed from the file's bytes), so
/// that one malformed entry does not make the others unreadable.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LenientBundle<'a> {
    format: String,
    serial: Option<String>,
    instance: String,
    public_key: String,
    #[allow(dead_code)]
    exported_at: String,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

/// Entries larger than this are not looked into for a seq and hash when they are bad.
const PEEK_MAX: usize = 1 << 20;

fn bad_entry(index: usize, raw: &RawValue, e: &serde_json::Error) -> BadEntry {
    let mut seq = None;
    let mut hash = None;
    if raw.get().len() <= PEEK_MAX
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get())
    {
        seq = v.pointer("/body/seq").and_then(serde_json::Value::as_u64);
        hash = v
            .get("hash")
            .and_then(serde_json::Value::as_str)
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .map(str::to_string);
    }
    // The position serde gives is within the entry's own text: leave it out.
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    BadEntry {
        index,
        seq,
        hash,
        reason: format!("entry {index} of the bundle is not a valid entry: {msg}"),
    }
}

/// Read the whole bundle at `path` (size-checked again: the file may have grown).
///
/// Well-formed bundles are read in one pass straight into entries; only when that fails
/// on the data (not the JSON syntax) is the file read again entry by entry, so that the
/// good entries are kept and each bad one is reported on its own.
pub fn read_bundle(path: &Path, limits: Limits) -> Result<ReadBundle, Refused> {
    let (file, bytes) = size_check(path, limits)?;
    let mut buf = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
    file.take(limits.max_bundle_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Refused::Bad(format!("cannot read: {e}")))?;
    if buf.len() as u64 > limits.max_bundle_bytes {
        return Err(Refused::Bad(format!(
            "the file grew past the limit of {} bytes while it was read",
            limits.max_bundle_bytes
        )));
    }
    let check_format = |f: &str| {
        if f == EXPORT_FORMAT {
            Ok(())
        } else if f.starts_with(EXPORT_FAMILY) {
            Err(Refused::Bad(format!(
                "unknown format version `{f}`: this vmledger reads {EXPORT_FORMAT}"
            )))
        } else {
            Err(Refused::Bad(unknown_format(f)))
        }
    };
    // UTF-8 checked once for the whole file rather than string by string (a tenth of the
    // parse); a file that is not UTF-8 takes the byte path, which says where.
    let parsed = match std::str::from_utf8(&buf) {
        Ok(text) => serde_json::from_str::<Bundle>(text),
        Err(_) => serde_json::from_slice::<Bundle>(&buf),
    };
    match parsed {
        Ok(b) => {
            check_format(&b.format)?;
            return Ok(ReadBundle {
                serial: b.serial,
                instance: b.instance,
                public_key: b.public_key,
                entries: b.entries.into_iter().map(Ok).collect(),
            });
        }
        Err(e) if e.classify() != serde_json::error::Category::Data => {
            return Err(Refused::Bad(json_reason(&e)));
        }
        Err(_) => {}
    }
    let b: LenientBundle =
        serde_json::from_slice(&buf).map_err(|e| Refused::Bad(json_reason(&e)))?;
    check_format(&b.format)?;
    let entries = b
        .entries
        .iter()
        .enumerate()
        .map(|(i, raw)| serde_json::from_str::<Entry>(raw.get()).map_err(|e| bad_entry(i, raw, &e)))
        .collect();
    Ok(ReadBundle {
        serial: b.serial,
        instance: b.instance,
        public_key: b.public_key,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const PK: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn header_stops_at_entries_and_classifies_documents() {
        let d = tempfile::tempdir().unwrap();
        let inst = "00112233445566778899aabbccddeeff";
        let ok = write(
            d.path(),
            "a.json",
            &format!(
                r#"{{"format":"vmledger-export/v1","serial":"SN","instance":"{inst}","public_key":"{PK}","exported_at":"x","entries":[ garbage after the header"#
            ),
        );
        let f = read_header(&ok, Limits::default()).unwrap();
        assert_eq!(f.instance, inst);
        assert_eq!(f.serial.as_deref(), Some("SN"));
        // Entries first: skipped, header still found.
        let late = write(
            d.path(),
            "b.json",
            &format!(
                r#"{{"entries":[{{"x":[1,2]}}],"format":"vmledger-export/v1","serial":null,"instance":"{inst}","public_key":"{PK}","exported_at":"x"}}"#
            ),
        );
        assert_eq!(read_header(&late, Limits::default()).unwrap().serial, None);
        let other = write(
            d.path(),
            "c.json",
            r#"{"format":"vmledger-simulate-labels/v1","x":1}"#,
        );
        assert!(matches!(
            read_header(&other, Limits::default()),
            Err(Refused::OtherDocument(_))
        ));
        // A garbled or missing format in what looks like a bundle, an unknown document,
        // JSON that is not an object: never skipped.
        for (name, text, why) in [
            (
                "g1.json",
                format!(
                    r#"{{"format":"vmledger-exp0rt/v1","serial":"SN","instance":"{inst}","public_key":"{PK}","exported_at":"x","entries":[]}}"#
                ),
                "unknown format `vmledger-exp0rt/v1`",
            ),
            (
                "g2.json",
                format!(
                    r#"{{"serial":"SN","instance":"{inst}","public_key":"{PK}","exported_at":"x","entries":[]}}"#
                ),
                "no `format` member",
            ),
            (
                "g3.json",
                r#"{"format":"vmledger-simulate-labels","x":1}"#.to_string(),
                "unknown format",
            ),
            ("g4.json", "[1,2]".to_string(), "expected a JSON object"),
            ("g5.json", "{}".to_string(), "no `format` member"),
        ] {
            let p = write(d.path(), name, &text);
            match read_header(&p, Limits::default()) {
                Err(Refused::Bad(r)) => assert!(r.contains(why), "{name}: {r}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let v2 = write(
            d.path(),
            "d.json",
            r#"{"format":"vmledger-export/v2","entries":[]}"#,
        );
        let Err(Refused::Bad(r)) = read_header(&v2, Limits::default()) else {
            panic!()
        };
        assert!(r.contains("unknown format version"), "{r}");
        let trunc = write(d.path(), "e.json", r#"{"format":"vmledger-export/v1","ser"#);
        let Err(Refused::Bad(r)) = read_header(&trunc, Limits::default()) else {
            panic!()
        };
        assert!(r.starts_with("truncated"), "{r}");
        let big = write(d.path(), "f.json", "{}");
        assert!(matches!(
            read_header(&big, Limits::default()),
            Err(Refused::Bad(_))
        ));
        let Err(Refused::Bad(r)) = read_header(
            &big,
            Limits {
                max_bundle_bytes: 1,
            },
        ) else {
            panic!()
        };
        assert!(r.contains("over the limit"), "{r}");
    }

    #[test]
    fn other_formats_cover_every_schema_but_the_export() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let Some(f) = v
                .pointer("/properties/format/const")
                .and_then(|f| f.as_str())
            else {
                continue;
            };
            seen += 1;
            assert!(
                f == EXPORT_FORMAT || is_other_format(f),
                "{f} is neither the export nor in OTHER_FORMATS"
            );
        }
        assert!(seen > 20);
        assert!(!is_other_format(EXPORT_FORMAT));
        assert!(is_other_format("vmledger-tree/v2"));
        assert!(!is_other_format("vmledger-tree/"));
        assert!(!is_other_format("vmledger-tree/vx"));
        assert!(!is_other_format("vmledger-exp0rt/v1"));
    }

    #[test]
    fn bad_entries_are_reported_one_by_one_and_the_rest_is_read() {
        use crate::keys::SigningKey;
        use crate::ledger::entry::{Body, GENESIS_PREV};
        let key = SigningKey::from_seed(&[3; 32]);
        let inst = "00112233445566778899aabbccddeeff";
        let mut entries: Vec<Entry> = Vec::new();
        for seq in 0..5u64 {
            let mut data = serde_json::Map::new();
            if seq == 0 {
                data.insert("public_key".into(), key.public_key_b64().into());
                data.insert("serial".into(), "SN".into());
            }
            let body = Body {
                v: 1,
                instance: inst.into(),
                seq,
                prev: entries
                    .last()
                    .map_or(GENESIS_PREV.to_string(), |e| e.hash.clone()),
                kind: if seq == 0 { "genesis" } else { "boot" }.into(),
                at: format!("2027-01-0{}T00:00:00.000Z", seq + 1),
                boot_id: "b".into(),
                uptime_ms: 1,
                data,
            };
            entries.push(Entry::seal(body, &key).unwrap());
        }
        let mut v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        v[1].as_object_mut().unwrap().remove("sig");
        v[2]["extra"] = 1.into();
        v[3]["body"]["seq"] = 999_999_999.into();
        let text = serde_json::to_string(&serde_json::json!({
            "format": EXPORT_FORMAT, "serial": "SN", "instance": inst,
            "public_key": key.public_key_b64(), "exported_at": "x", "entries": v,
        }))
        .unwrap()
        .replace("999999999", "18446744073709551616");
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "b.json", &text);
        let b = read_bundle(&p, Limits::default()).unwrap();
        assert_eq!(b.entries.len(), 5);
        assert_eq!(b.entries[0].as_ref().unwrap(), &entries[0]);
        assert_eq!(b.entries[4].as_ref().unwrap(), &entries[4]);
        let bad = |i: usize| b.entries[i].clone().unwrap_err();
        assert_eq!(bad(1).index, 1);
        assert_eq!(bad(1).seq, Some(1));
        assert_eq!(bad(1).hash.as_deref(), Some(entries[1].hash.as_str()));
        assert!(
            bad(1).reason.contains("missing field `sig`"),
            "{:?}",
            bad(1)
        );
        assert!(!bad(1).reason.contains("line 1"), "{:?}", bad(1));
        assert!(
            bad(2).reason.contains("unknown field `extra`"),
            "{:?}",
            bad(2)
        );
        assert_eq!(bad(2).seq, Some(2));
        assert_eq!(bad(3).seq, None, "seq 2^64 cannot be read");
        assert_eq!(bad(3).hash.as_deref(), Some(entries[3].hash.as_str()));
        assert!(
            bad(3).reason.starts_with("entry 3 of the bundle"),
            "{:?}",
            bad(3)
        );
        // The header and the JSON syntax still make or break the file.
        let p = write(
            d.path(),
            "c.json",
            &text.replace("\"exported_at\"", "\"exportedAt\""),
        );
        assert!(read_bundle(&p, Limits::default()).is_err());
        let p = write(d.path(), "e.json", &text[..text.len() - 3]);
        let Err(Refused::Bad(r)) = read_bundle(&p, Limits::default()) else {
            panic!()
        };
        assert!(r.starts_with("truncated"), "{r}");
    }
}
