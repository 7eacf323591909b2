//! Appliance tree fingerprints (`vmledger-tree/v1`): every entry under a directory with
//! its relative path, type, permission bits, size, the SHA-256 of regular files and the
//! target of symlinks, and a root digest over the sorted entries; plus the comparison of
//! two fingerprints ([`diff`]).
//!
//! The walk ([`walk`], single-threaded, `walkdir`) never follows symlinks below the root
//! and never opens anything but regular files; files are then hashed in parallel (rayon),
//! each opened with `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat`, so a file swapped
//! for a FIFO or a symlink mid-walk is reported, never blocked on or followed. Entries that
//! vanish or cannot be read are reported per path ([`TreeError`]-free: they are data) and
//! the walk finishes the rest. The exact encoding of the root digest is in
//! `docs/formats/tree.md`. Only reads.

pub mod diff;

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use diff::{PathChange, TreeDiff, compare};

/// The document format name.
pub const FORMAT: &str = "vmledger-tree/v1";
/// Domain-separation prefix of the root digest.
pub const ROOT_PREFIX: &[u8] = b"vmledger/tree/v1\n";
/// Read buffer per hashing thread.
const BUF: usize = 256 << 10;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl Kind {
    /// The one-letter code used in the root digest encoding.
    pub fn code(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
            Kind::Char => b'c',
            Kind::Block => b'b',
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Char => "char",
            Kind::Block => "block",
        }
    }

    fn of(ft: &fs::FileType) -> Kind {
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::Char
        } else {
            Kind::Block
        }
    }
}

/// One entry of a tree, as it appears in the document. `path` and `target` are escaped
/// byte strings (see [`escape`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated, escaped.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`) as four octal digits, e.g. `0644`.
    pub mode: String,
    /// Regular files: the number of bytes hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Regular files: lowercase hex SHA-256 of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks: the target as stored (never followed), escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// An entry that could not be fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryError {
    /// Escaped relative path (`""` for the root itself).
    pub path: String,
    pub error: String,
}

/// Counts for humans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub other: u64,
    pub bytes: u64,
}

/// The fingerprint of one directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The directory as given on the command line.
    pub path: String,
    /// Lowercase hex root digest over `entries` (see [`root_digest`]).
    pub root: String,
    /// False when some entries could not be read (listed in `errors`).
    pub complete: bool,
    pub counts: Counts,
    /// Sorted by the raw bytes of the path.
    pub entries: Vec<Entry>,
    pub errors: Vec<EntryError>,
}

/// A `vmledger-tree/v1` document: one or more trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub format: String,
    /// The `--exclude` patterns applied.
    pub exclude: Vec<String>,
    pub trees: Vec<Tree>,
}

impl Document {
    /// True when every tree was read completely.
    pub fn complete(&self) -> bool {
        self.trees.iter().all(|t| t.complete)
    }

    /// Check a document read from outside: format, shapes, order, and that every root
    /// digest matches its entries.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "`format` is {:?}, expected {FORMAT:?}",
                self.format
            ));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let mut prev: Option<Vec<u8>> = None;
            for (i, e) in tree.entries.iter().enumerate() {
                let at = format!("trees[{t}].entries[{i}]");
                let raw = unescape(&e.path).map_err(|m| format!("{at}.path: {m}"))?;
                if raw.is_empty() || raw.starts_with(b"/") {
                    return Err(format!("{at}.path must be a non-empty relative path"));
                }
                if prev.as_ref().is_some_and(|p| *p >= raw) {
                    return Err(format!(
                        "{at}: entries must be sorted by path without repeats"
                    ));
                }
                prev = Some(raw);
                if parse_mode(&e.mode).is_none() {
                    return Err(format!("{at}.mode must be four octal digits"));
                }
                let ok = match e.kind {
                    Kind::File => {
                        e.size.is_some()
                            && e.sha256.as_deref().is_some_and(is_hex64)
                            && e.target.is_none()
                    }
                    Kind::Symlink => e.size.is_none() && e.sha256.is_none() && e.target.is_some(),
                    _ => e.size.is_none() && e.sha256.is_none() && e.target.is_none(),
                };
                if !ok {
                    return Err(format!(
                        "{at}: a file needs size and sha256, a symlink a target, others neither"
                    ));
                }
            }
            let computed = root_digest(&tree.entries).map_err(|m| format!("trees[{t}]: {m}"))?;
            if computed != tree.root {
                return Err(format!(
                    "trees[{t}].root {} does not match its entries (computed {computed}): the document was edited",
                    tree.root
                ));
            }
        }
        Ok(())
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_mode(s: &str) -> Option<u32> {
    (s.len() == 4 && s.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .then(|| u32::from_str_radix(s, 8).ok())
        .flatten()
}

/// Escape a byte string for JSON: valid UTF-8 is kept, `\` becomes `\\`, and every byte
/// of an invalid UTF-8 sequence becomes `\xHH` (lowercase hex). Injective.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(ch);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Reverse [`escape`].
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('\\') {
            out.push(b'\\');
            rest = t;
        } else if let Some(t) = tail.strip_prefix('x')
            && t.len() >= 2
            && t.is_char_boundary(2)
            && let Ok(b) = u8::from_str_radix(&t[..2], 16)
        {
            out.push(b);
            rest = &t[2..];
        } else {
            return Err("bad escape: `\\` must be followed by `\\` or `xHH`".into());
        }
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// The root digest: SHA-256 of [`ROOT_PREFIX`] followed by one record per entry, in the
/// entries' order (sorted by raw path bytes):
/// `TYPE SP MODE SP SIZE SP SHA256 SP LEN ":" PATH SP LEN ":" TARGET LF`, where TYPE is
/// the one-letter [`Kind::code`], MODE four octal digits, SIZE decimal (0 for non-files),
/// SHA256 64 hex digits or `-`, and PATH/TARGET raw bytes prefixed by their decimal length
/// (TARGET empty for non-symlinks).
pub fn root_digest(entries: &[Entry]) -> Result<String, String> {
    let mut h = Sha256::new();
    h.update(ROOT_PREFIX);
    let mut rec = Vec::with_capacity(256);
    for e in entries {
        rec.clear();
        let path = unescape(&e.path)?;
        let target = match &e.target {
            Some(t) => unescape(t)?,
            None => Vec::new(),
        };
        rec.push(e.kind.code());
        rec.push(b' ');
        rec.extend_from_slice(e.mode.as_bytes());
        rec.extend_from_slice(format!(" {} ", e.size.unwrap_or(0)).as_bytes());
        rec.extend_from_slice(e.sha256.as_deref().unwrap_or("-").as_bytes());
        rec.extend_from_slice(format!(" {}:", path.len()).as_bytes());
        rec.extend_from_slice(&path);
        rec.extend_from_slice(format!(" {}:", target.len()).as_bytes());
        rec.extend_from_slice(&target);
        rec.push(b'\n');
        h.update(&rec);
    }
    Ok(hex::encode(h.finalize()))
}

/// `--exclude` patterns: a pattern without `/` matches an entry's name at any depth; one
/// with `/` matches the whole relative path (`*` never crosses `/`, `**` does). An
/// excluded directory is skipped with everything below it.
#[derive(Debug, Clone)]
pub struct Excludes {
    pub patterns: Vec<String>,
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes, String> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in patterns {
            let g = GlobBuilder::new(p.trim_start_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("--exclude {p:?} is not a valid glob: {}", e.kind()))?;
            if p.contains('/') {
                paths.add(g);
            } else {
                names.add(g);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| format!("--exclude: {e}"));
        Ok(Excludes {
            patterns: patterns.to_vec(),
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    pub fn none() -> Excludes {
        Excludes {
            patterns: Vec::new(),
            names: GlobSet::empty(),
            paths: GlobSet::empty(),
        }
    }

    /// True when the entry at relative path `rel` is excluded.
    pub fn excludes(&self, rel: &Path) -> bool {
        (!self.names.is_empty() && rel.file_name().is_some_and(|n| self.names.is_match(n)))
            || (!self.paths.is_empty() && self.paths.is_match(rel))
    }
}

/// An entry found by the walk, not yet examined.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Relative path bytes.
    pub rel: Vec<u8>,
    pub full: PathBuf,
    /// The walk saw a regular file (from the directory entry's type, usually without a
    /// `stat`): it is opened directly and checked with `fstat`.
    pub is_file: bool,
}

/// A tree that cannot be walked at all (the root itself is missing or not a directory).
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot fingerprint {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("cannot fingerprint {path}: not a directory")]
    NotADirectory { path: PathBuf },
}

/// Walk `dir` (without following symlinks below it), returning the entries to examine
/// sorted by raw path bytes, and the errors met while listing directories.
pub fn walk(dir: &Path, excludes: &Excludes) -> Result<(Vec<Pending>, Vec<EntryError>), TreeError> {
    let meta = fs::metadata(dir).map_err(|source| TreeError::Root {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut pending = Vec::new();
    let mut errors = Vec::new();
    let it = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            e.path()
                .strip_prefix(dir)
                .map(|rel| !excludes.excludes(rel))
                .unwrap_or(true)
        });
    for item in it {
        match item {
            Ok(e) => {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap_or(e.path())
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                let is_file = e.file_type().is_file();
                pending.push(Pending {
                    rel,
                    full: e.into_path(),
                    is_file,
                });
            }
            Err(err) => {
                let rel = err
                    .path()
                    .and_then(|p| p.strip_prefix(dir).ok())
                    .map(|p| escape(p.as_os_str().as_bytes()))
                    .unwrap_or_default();
                let msg = match err.io_error() {
                    Some(io) => describe_io(io),
                    None => err.to_string(),
                };
                errors.push(EntryError {
                    path: rel,
                    error: format!("cannot list directory: {msg}"),
                });
            }
        }
    }
    pending.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok((pending, errors))
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "vanished during the walk".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Examine and hash the walked entries in parallel; keeps the walk's order.
pub fn examine(dir: &Path, pending: Vec<Pending>, mut errors: Vec<EntryError>) -> Tree {
    let results: Vec<Result<Entry, EntryError>> = pending
        .par_iter()
        .map_init(
            || vec![0u8; BUF],
            |buf, p| {
                examine_one(p, buf).map_err(|error| EntryError {
                    path: escape(&p.rel),
                    error,
                })
            },
        )
        .collect();
    let mut entries = Vec::with_capacity(results.len());
    let mut counts = Counts::default();
    for r in results {
        match r {
            Ok(e) => {
                match e.kind {
                    Kind::File => {
                        counts.files += 1;
                        counts.bytes += e.size.unwrap_or(0);
                    }
                    Kind::Dir => counts.dirs += 1,
                    Kind::Symlink => counts.symlinks += 1,
                    _ => counts.other += 1,
                }
                entries.push(e);
            }
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    // Escaped paths of well-formed entries always unescape.
    let root = root_digest(&entries).unwrap_or_default();
    Tree {
        path: dir.display().to_string(),
        root,
        complete: errors.is_empty(),
        counts,
        entries,
        errors,
    }
}

fn examine_one(p: &Pending, buf: &mut [u8]) -> Result<Entry, String> {
    // Regular files (nearly everything): open, fstat and hash, no separate lstat.
    if p.is_file
        && let Some((size, digest, mode)) = hash_file(&p.full, buf)?
    {
        return Ok(Entry {
            path: escape(&p.rel),
            kind: Kind::File,
            mode: format!("{:04o}", mode & 0o7777),
            size: Some(size),
            sha256: Some(digest),
            target: None,
        });
    }
    // Anything else, or a file that changed type since the walk: record what it is now.
    let meta = fs::symlink_metadata(&p.full).map_err(|e| describe_io(&e))?;
    let kind = Kind::of(&meta.file_type());
    let mut entry = Entry {
        path: escape(&p.rel),
        kind,
        mode: format!("{:04o}", meta.mode() & 0o7777),
        size: None,
        sha256: None,
        target: None,
    };
    match kind {
        Kind::File => {
            let (size, digest, mode) =
                hash_file(&p.full, buf)?.ok_or("changed type during the walk")?;
            entry.size = Some(size);
            entry.sha256 = Some(digest);
            entry.mode = format!("{:04o}", mode & 0o7777);
        }
        Kind::Symlink => {
            let t = fs::read_link(&p.full).map_err(|e| describe_io(&e))?;
            entry.target = Some(escape(t.as_os_str().as_bytes()));
        }
        _ => {}
    }
    Ok(entry)
}

/// Hash a regular file opened without following symlinks and without blocking; returns
/// (bytes hashed, hex SHA-256, mode from `fstat`), or `None` when the path is no longer a
/// regular file (a symlink or FIFO swapped in).
fn hash_file(path: &Path, buf: &mut [u8]) -> Result<Option<(u64, String, u32)>, String> {
    let flags =
        nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    let mut f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => return Ok(None),
        Err(e) => return Err(describe_io(&e)),
    };
    let meta = f.metadata().map_err(|e| describe_io(&e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe_io(&e)),
        }
    }
    Ok(Some((n, hex::encode(h.finalize()), meta.mode())))
}

/// Fingerprint one directory tree: walk, then hash in parallel.
pub fn fingerprint(dir: &Path, excludes: &Excludes) -> Result<Tree, TreeError> {
    let (pending, errors) = walk(dir, excludes)?;
    Ok(examine(dir, pending, errors))
}

/// Fingerprint several trees into one document.
pub fn fingerprint_all(dirs: &[PathBuf], excludes: &Excludes) -> Result<Document, TreeError> {
    let trees = dirs
        .iter()
        .map(|d| fingerprint(d, excludes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Document {
        format: FORMAT.to_string(),
        exclude: excludes.patterns.clone(),
        trees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_is_injective() {
        for raw in [
            &b"plain/name"[..],
            b"back\\slash",
            b"bad\xff\xfebytes",
            b"\\xff",
        ] {
            assert_eq!(unescape(&escape(raw)).unwrap(), raw);
        }
        assert_ne!(escape(b"\xff"), escape(b"\\xff"));
        assert!(unescape("dangling\\").is_err());
    }

    #[test]
    fn vanished_and_swapped_entries_are_reported_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"a").unwrap();
        fs::write(d.path().join("b"), b"b").unwrap();
        fs::write(d.path().join("c"), b"c").unwrap();
        let (pending, errors) = walk(d.path(), &Excludes::none()).unwrap();
        fs::remove_file(d.path().join("b")).unwrap();
        fs::remove_file(d.path().join("c")).unwrap();
        nix::unistd::mkfifo(&d.path().join("c"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // c was a file when walked and is a FIFO now: examined as what it is now.
        let t = examine(d.path(), pending, errors);
        assert!(!t.complete);
        assert_eq!(t.errors.len(), 1);
        assert_eq!(t.errors[0].path, "b");
        assert!(t.errors[0].error.contains("vanished"), "{:?}", t.errors);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[1].kind, Kind::Fifo);
    }

    #[test]
    fn excludes() {
        let x = Excludes::new(&["*.log".into(), "var/cache".into()]).unwrap();
        assert!(x.excludes(Path::new("a/b/c.log")));
        assert!(x.excludes(Path::new("var/cache")));
        assert!(!x.excludes(Path::new("x/var/cache")));
        assert!(!x.excludes(Path::new("a/log")));
        assert!(Excludes::new(&["[".into()]).is_err());
    }
}
