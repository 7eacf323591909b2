//! Finding and reading `vmledger-export/v1` bundles with bounded memory.
//!
//! Two steps, so that the cross-check can stream one instance at a time whatever order
//! the files come in:
//! 1. [`scan`]: walk the paths and read each file's *header* only (`format`, `serial`,
//!    `instance`, `public_key`): the reader stops at `entries` once the header is known,
//!    so this costs a few hundred bytes per file. Each header goes to the caller, which
//!    indexes and groups them by serial and instance ([`super::index`]).
//! 2. [`read_bundle`]: read one whole bundle (one instance's file) as a
//!    [`crate::ledger::export::Bundle`].
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

use crate::keys;
use crate::ledger::export::{Bundle, EXPORT_FORMAT};

/// The prefix every version of the export format shares.
const EXPORT_FAMILY: &str = "vmledger-export/";

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
    /// Files found in directories that are not export bundles (other vmledger documents,
    /// files not named `*.json`).
    pub skipped: Vec<FileNote>,
    /// Files that should be bundles but cannot be read as one.
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
    /// Another kind of document (e.g. a simulator label file beside the exports).
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
        (_, Some(Stop::OtherFormat(f))) => {
            return Err(Refused::OtherDocument(format!("a `{f}` document")));
        }
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
        return Err(Refused::OtherDocument(
            "a JSON document without a `format` member".into(),
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

/// Read the whole bundle at `path` (size-checked again: the file may have grown).
pub fn read_bundle(path: &Path, limits: Limits) -> Result<Bundle, Refused> {
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
    let b: Bundle = serde_json::from_slice(&buf).map_err(|e| Refused::Bad(json_reason(&e)))?;
    if b.format != EXPORT_FORMAT {
        return Err(Refused::Bad(format!(
            "unknown format version `{}`: this vmledger reads {EXPORT_FORMAT}",
            b.format
        )));
    }
    Ok(b)
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
}
