//! Enforcing the lock on configuration files: while the instance is `locked` or
//! `disabled`, every change under the watched paths is recorded in the ledger as
//! `config_change_blocked` (path, kind) and, with `restore`, undone from the copy taken
//! when the lock began.
//!
//! - [`Snapshot`]: a copy of a watched path (a file or a directory tree: regular files,
//!   directories, symlinks) kept in the state dir under `watch/<id>/` (`manifest.json` +
//!   content-addressed `blobs/`), one per lock episode (the `blocked_since` of the
//!   transition into the blocked state). Bounded: [`MAX_SNAPSHOT_BYTES`],
//!   [`MAX_SNAPSHOT_ENTRIES`].
//! - [`run`]: the watch loop (inotify through `notify`). A watched file is watched through
//!   its parent directory, and a watched directory both recursively and through its parent,
//!   so editors' rename-and-replace saves and moves of the directory itself are seen and
//!   the watches re-established. Changes are detected by comparing with the snapshot, not
//!   by trusting event kinds, so a restore's own events and no-op touches record nothing.
//!   At start, while blocked, every watched path is compared with the lock episode's copy
//!   ([`Snapshot::differences`]), so changes made while `watch` was not running are
//!   recorded (with `at_start: true`) and restored too.
//!
//! A copy records each node's type, content (files: SHA-256, the bytes in `blobs/`),
//! permission bits and owner (numeric uid and gid); a change of any of them is a
//! modification, and a restore puts all of them back (the owner only when running as
//! root).
//!
//! Never prints (progress goes to a callback); never decides the license state (it asks
//! [`crate::license::observe`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::identity::Instance;
use crate::ledger::{Entry, Ledger};
use crate::license::observe::{self, LicenseError, Observation, kind};
use crate::license::{Policy, breakpoints};
use crate::time::{self, Clock};

/// `format` of a snapshot's `manifest.json`.
pub const SNAPSHOT_FORMAT: &str = "vmledger-watch-snapshot/v1";
/// Largest total size of the files one snapshot copies.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;
/// Most files, directories and symlinks one snapshot records.
pub const MAX_SNAPSHOT_ENTRIES: usize = 100_000;
/// Longest wait before the state is observed again without any event.
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// Watch errors, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot watch {path}: {message}")]
    Notify { path: String, message: String },
    #[error("{path}: too large to keep a copy of ({message}); watch a smaller configuration path")]
    TooLarge { path: String, message: String },
    #[error("snapshot {path}: {message}; delete it and let `vmledger watch` take a new copy")]
    BadSnapshot { path: String, message: String },
    #[error(transparent)]
    License(#[from] LicenseError),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> WatchError + '_ {
    move |source| WatchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who owns a node: numeric uid and gid. (Absent in copies taken by versions that did
/// not record it; such a copy then restores content and mode only.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    fn of(md: &fs::Metadata) -> Option<Owner> {
        Some(Owner {
            uid: md.uid(),
            gid: md.gid(),
        })
    }
}

/// One recorded node of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    File {
        sha256: String,
        mode: u32,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    Dir {
        mode: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    Symlink {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
}

impl Node {
    fn owner(&self) -> Option<Owner> {
        match self {
            Node::File { owner, .. } | Node::Dir { owner, .. } | Node::Symlink { owner, .. } => {
                *owner
            }
        }
    }

    /// The node without its owner.
    fn without_owner(&self) -> Node {
        let mut n = self.clone();
        match &mut n {
            Node::File { owner, .. } | Node::Dir { owner, .. } | Node::Symlink { owner, .. } => {
                *owner = None
            }
        }
        n
    }

    /// True when `now` is what this recorded node describes: type, content, mode and, when
    /// the copy recorded it, owner.
    pub fn matches(&self, now: &Node) -> bool {
        match self.owner() {
            Some(_) => self == now,
            None => *self == now.without_owner(),
        }
    }
}

/// `manifest.json` of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The watched path (absolute).
    pub path: String,
    /// The lock episode (`blocked_since`) this copy belongs to.
    pub episode: String,
    pub taken_at: String,
    /// Nodes by path relative to `path` (`""` is `path` itself; absent when it did not
    /// exist).
    pub nodes: BTreeMap<String, Node>,
}

/// A copy of one watched path.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub root: PathBuf,
    pub store: PathBuf,
    pub manifest: Manifest,
}

/// What a change did, compared with the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Modified,
    Removed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Modified => "modified",
            ChangeKind::Removed => "removed",
        }
    }
}

fn store_dir(watch_dir: &Path, root: &Path) -> PathBuf {
    let id = hex::encode(Sha256::digest(root.as_os_str().as_encoded_bytes()));
    watch_dir.join(&id[..16])
}

fn rel_key(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    Some(parts.join("/"))
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((hex::encode(h.finalize()), n))
}

/// The node at `path` now (`None` when absent; special files are treated as absent).
pub fn current_node(path: &Path) -> io::Result<Option<Node>> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let ft = md.file_type();
    let mode = md.mode() & 0o7777;
    let owner = Owner::of(&md);
    if ft.is_symlink() {
        Ok(Some(Node::Symlink {
            target: fs::read_link(path)?.to_string_lossy().into_owned(),
            owner,
        }))
    } else if ft.is_dir() {
        Ok(Some(Node::Dir { mode, owner }))
    } else if ft.is_file() {
        match hash_file(path) {
            Ok((sha256, size)) => Ok(Some(Node::File {
                sha256,
                mode,
                size,
                owner,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    } else {
        Ok(None)
    }
}

impl Snapshot {
    /// Copy `root` (absolute) into `watch_dir`, for lock episode `episode`.
    pub fn take(watch_dir: &Path, root: &Path, episode: &str) -> Result<Snapshot, WatchError> {
        let store = store_dir(watch_dir, root);
        let blobs = store.join("blobs");
        if store.exists() {
            fs::remove_dir_all(&store).map_err(io_err(&store))?;
        }
        fsutil::ensure_private_dir(&blobs).map_err(io_err(&blobs))?;
        let mut nodes = BTreeMap::new();
        let mut total = 0u64;
        if fs::symlink_metadata(root).is_ok() {
            for item in walkdir::WalkDir::new(root).follow_links(false) {
                let item = item.map_err(|e| WatchError::Io {
                    path: root.display().to_string(),
                    source: e.into(),
                })?;
                let p = item.path();
                let Some(key) = rel_key(root, p) else {
                    continue;
                };
                if nodes.len() >= MAX_SNAPSHOT_ENTRIES {
                    return Err(WatchError::TooLarge {
                        path: root.display().to_string(),
                        message: format!("more than {MAX_SNAPSHOT_ENTRIES} entries"),
                    });
                }
                let node = if item.file_type().is_file() {
                    let md = fs::symlink_metadata(p).map_err(io_err(p))?;
                    total += md.len();
                    if total > MAX_SNAPSHOT_BYTES {
                        return Err(WatchError::TooLarge {
                            path: root.display().to_string(),
                            message: format!("more than {MAX_SNAPSHOT_BYTES} bytes"),
                        });
                    }
                    let bytes = match fs::read(p) {
                        Ok(b) => b,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(p)(e)),
                    };
                    let sha256 = hex::encode(Sha256::digest(&bytes));
                    let blob = blobs.join(&sha256);
                    if !blob.exists() {
                        fsutil::write_private_atomic(&blob, &bytes).map_err(io_err(&blob))?;
                    }
                    Node::File {
                        sha256,
                        mode: md.mode() & 0o7777,
                        size: bytes.len() as u64,
                        owner: Owner::of(&md),
                    }
                } else {
                    match current_node(p).map_err(io_err(p))? {
                        Some(n) => n,
                        None => continue,
                    }
                };
                nodes.insert(key, node);
            }
        }
        let manifest = Manifest {
            format: SNAPSHOT_FORMAT.into(),
            path: root.display().to_string(),
            episode: episode.to_string(),
            taken_at: time::format_at(chrono::Utc::now()),
            nodes,
        };
        let mut text =
            serde_json::to_vec_pretty(&manifest).map_err(|e| WatchError::BadSnapshot {
                path: store.display().to_string(),
                message: e.to_string(),
            })?;
        text.push(b'\n');
        let mpath = store.join("manifest.json");
        fsutil::write_private_atomic(&mpath, &text).map_err(io_err(&mpath))?;
        Ok(Snapshot {
            root: root.to_path_buf(),
            store,
            manifest,
        })
    }

    /// The stored copy of `root`, if one exists.
    pub fn load(watch_dir: &Path, root: &Path) -> Result<Option<Snapshot>, WatchError> {
        let store = store_dir(watch_dir, root);
        let mpath = store.join("manifest.json");
        let text = match fs::read(&mpath) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&mpath)(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| WatchError::BadSnapshot {
                path: mpath.display().to_string(),
                message: e.to_string(),
            })?;
        if manifest.format != SNAPSHOT_FORMAT || manifest.path != root.display().to_string() {
            return Err(WatchError::BadSnapshot {
                path: mpath.display().to_string(),
                message: "not a snapshot of this path".into(),
            });
        }
        Ok(Some(Snapshot {
            root: root.to_path_buf(),
            store,
            manifest,
        }))
    }

    /// The node the snapshot has for `path` (under the root).
    pub fn node(&self, path: &Path) -> Option<&Node> {
        self.manifest.nodes.get(&rel_key(&self.root, path)?)
    }

    /// How `path` differs from the snapshot, if it does.
    pub fn change(&self, path: &Path) -> Result<Option<ChangeKind>, WatchError> {
        let now = current_node(path).map_err(io_err(path))?;
        let then = self.node(path);
        Ok(match (then, now) {
            (None, None) => None,
            (None, Some(_)) => Some(ChangeKind::Created),
            (Some(_), None) => Some(ChangeKind::Removed),
            (Some(a), Some(b)) if !a.matches(&b) => Some(ChangeKind::Modified),
            _ => None,
        })
    }

    /// Every path under the root that differs from the copy (what changed while nothing
    /// watched), outermost first; nothing is reported below a path that was created or
    /// removed as a whole or changed type (restoring it settles everything below). At most
    /// [`MAX_SNAPSHOT_ENTRIES`] present paths are looked at.
    pub fn differences(&self) -> Result<Vec<(PathBuf, ChangeKind)>, WatchError> {
        let mut keys: BTreeSet<String> = self.manifest.nodes.keys().cloned().collect();
        if fs::symlink_metadata(&self.root).is_ok() {
            for item in walkdir::WalkDir::new(&self.root)
                .follow_links(false)
                .into_iter()
                .take(MAX_SNAPSHOT_ENTRIES)
            {
                // A path that vanished while walking is compared (and reported) below.
                let Ok(item) = item else { continue };
                if let Some(k) = rel_key(&self.root, item.path()) {
                    keys.insert(k);
                }
            }
        }
        let mut out = Vec::new();
        let mut settled: Vec<String> = Vec::new();
        for k in keys {
            if settled
                .iter()
                .any(|s| s.is_empty() || k.starts_with(&format!("{s}/")))
            {
                continue;
            }
            let path = if k.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&k)
            };
            let Some(change) = self.change(&path)? else {
                continue;
            };
            let type_changed = match (self.manifest.nodes.get(&k), current_node(&path)) {
                (Some(a), Ok(Some(b))) => std::mem::discriminant(a) != std::mem::discriminant(&b),
                _ => true,
            };
            if change != ChangeKind::Modified || type_changed {
                settled.push(k.clone());
            }
            out.push((path, change));
        }
        Ok(out)
    }

    fn restore_node(&self, path: &Path, node: &Node) -> io::Result<()> {
        match (node, current_node(path)?) {
            (Node::Dir { mode, owner }, Some(Node::Dir { .. })) => {
                set_owner_and_mode(path, *owner, Some(*mode))
            }
            (Node::Dir { mode, owner }, other) => {
                if other.is_some() {
                    fs::remove_file(path)?;
                }
                fs::create_dir(path)?;
                set_owner_and_mode(path, *owner, Some(*mode))
            }
            (
                Node::File {
                    sha256,
                    mode,
                    owner,
                    ..
                },
                other,
            ) => {
                let bytes = fs::read(self.store.join("blobs").join(sha256))?;
                if matches!(other, Some(Node::Dir { .. })) {
                    fs::remove_dir_all(path)?;
                }
                // Write beside it and rename over it, like an editor would.
                fsutil::write_private_atomic(path, &bytes)?;
                set_owner_and_mode(path, *owner, Some(*mode))
            }
            (Node::Symlink { target, owner }, other) => {
                match other {
                    Some(Node::Dir { .. }) => fs::remove_dir_all(path)?,
                    Some(_) => fs::remove_file(path)?,
                    None => {}
                }
                std::os::unix::fs::symlink(target, path)?;
                set_owner_and_mode(path, *owner, None)
            }
        }
    }

    /// Put `path` back as the snapshot has it: recreate it (with its missing ancestors
    /// and, for a directory, everything under it), rewrite it, or remove it when the
    /// snapshot does not have it.
    pub fn restore(&self, path: &Path) -> Result<(), WatchError> {
        let e = io_err(path);
        let Some(key) = rel_key(&self.root, path) else {
            return Ok(());
        };
        match self.manifest.nodes.get(&key) {
            None => match current_node(path).map_err(&e)? {
                None => Ok(()),
                Some(Node::Dir { .. }) => fs::remove_dir_all(path).map_err(e),
                Some(_) => fs::remove_file(path).map_err(e),
            },
            Some(node) => {
                // Ancestors first (a moved-away directory), then the node, then, for a
                // directory, everything the snapshot has under it.
                let mut ancestors = Vec::new();
                let mut p = path.parent();
                while let Some(a) = p {
                    if !a.starts_with(&self.root) || a.exists() {
                        break;
                    }
                    ancestors.push(a.to_path_buf());
                    p = a.parent();
                }
                for a in ancestors.iter().rev() {
                    if let Some(n) = self.node(a) {
                        self.restore_node(a, n).map_err(io_err(a))?;
                    }
                }
                self.restore_node(path, node).map_err(&e)?;
                if matches!(node, Node::Dir { .. }) {
                    let prefix = if key.is_empty() {
                        String::new()
                    } else {
                        format!("{key}/")
                    };
                    // Remove what the snapshot does not have, then restore what differs.
                    let mut extra = Vec::new();
                    for item in walkdir::WalkDir::new(path)
                        .min_depth(1)
                        .contents_first(true)
                        .into_iter()
                        .flatten()
                    {
                        if self.node(item.path()).is_none() {
                            extra.push(item.path().to_path_buf());
                        }
                    }
                    for x in extra {
                        let _ = fs::remove_dir_all(&x).or_else(|_| fs::remove_file(&x));
                    }
                    for (k, n) in &self.manifest.nodes {
                        if k.is_empty() || !k.starts_with(&prefix) {
                            continue;
                        }
                        let child = self.root.join(k);
                        let now = current_node(&child).map_err(io_err(&child))?;
                        if !now.is_some_and(|c| n.matches(&c)) {
                            self.restore_node(&child, n).map_err(io_err(&child))?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Give `path` its recorded owner (only when running as root: nobody else may give a
/// file away, and a non-root watcher restores what it can), then its mode (after the
/// owner: `chown` clears set-id bits). Symlinks are changed themselves (`lchown`) and have
/// no mode of their own.
fn set_owner_and_mode(path: &Path, owner: Option<Owner>, mode: Option<u32>) -> io::Result<()> {
    if let Some(o) = owner
        && crate::config::running_as_root()
    {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))?;
    }
    if let Some(m) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

/// What happened, for the caller to show.
#[derive(Clone, Debug)]
pub enum Event {
    /// Watches are in place.
    Ready { paths: Vec<PathBuf> },
    /// The license state was observed (at start, after events, and at deadlines).
    State { observation: Box<Observation> },
    /// A copy of a watched path was taken for a lock episode.
    SnapshotTaken { path: PathBuf, episode: String },
    /// A blocked change was recorded (and restored, if asked).
    Blocked {
        entry: Box<Entry>,
        path: PathBuf,
        kind: ChangeKind,
        restored: bool,
    },
}

/// Options of [`run`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Put changed paths back from the snapshot.
    pub restore: bool,
    /// Return after recording this many blocked changes.
    pub exit_after: Option<u64>,
}

/// Make `p` absolute (relative to the current directory) without resolving symlinks.
pub fn absolute(p: &Path) -> Result<PathBuf, WatchError> {
    std::path::absolute(p).map_err(io_err(p))
}

struct Watches {
    watcher: notify::RecommendedWatcher,
    roots: Vec<PathBuf>,
    watched: BTreeSet<(PathBuf, bool)>,
}

impl Watches {
    /// (Re)establish the watches: each root's parent non-recursively, and a directory root
    /// recursively.
    fn refresh(&mut self) -> Result<(), WatchError> {
        let mut want = BTreeSet::new();
        for r in &self.roots {
            if let Some(parent) = r.parent() {
                want.insert((parent.to_path_buf(), false));
            }
            if r.is_dir() {
                want.insert((r.clone(), true));
            }
        }
        // A directory root that was moved or replaced must be watched afresh.
        for (p, _) in std::mem::take(&mut self.watched) {
            let _ = self.watcher.unwatch(&p);
        }
        for (p, recursive) in want {
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            self.watcher
                .watch(&p, mode)
                .map_err(|e| WatchError::Notify {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
            self.watched.insert((p, recursive));
        }
        Ok(())
    }
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watch `roots` (absolute paths) until `opts.exit_after` blocked changes were recorded
/// (forever without it). `on_event` sees what happens.
pub fn run(
    inst: &Instance,
    ledger: &Ledger,
    policy: &Policy,
    roots: &[PathBuf],
    opts: &Options,
    clock: &dyn Clock,
    mut on_event: impl FnMut(&Event),
) -> Result<u64, WatchError> {
    for r in roots {
        let parent = r.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(WatchError::Io {
                path: r.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "its parent directory does not exist",
                ),
            });
        }
    }
    let (tx, rx) = mpsc::channel();
    let watcher = notify::recommended_watcher(tx).map_err(|e| WatchError::Notify {
        path: roots
            .first()
            .map(|r| r.display().to_string())
            .unwrap_or_default(),
        message: e.to_string(),
    })?;
    let mut watches = Watches {
        watcher,
        roots: roots.to_vec(),
        watched: BTreeSet::new(),
    };
    watches.refresh()?;
    let watch_dir = inst.dir.watch_dir();
    let mut snapshots: BTreeMap<PathBuf, Snapshot> = BTreeMap::new();

    // Observe, and when blocked make sure every root has this episode's copy.
    let observe_now = |snapshots: &mut BTreeMap<PathBuf, Snapshot>,
                       on_event: &mut dyn FnMut(&Event)|
     -> Result<Observation, WatchError> {
        let obs = observe::observe(inst, ledger, policy, clock)?;
        if let (true, Some(episode)) = (obs.state().blocks_config(), obs.blocked_since.clone()) {
            for r in roots {
                let current = match snapshots.get(r) {
                    Some(s) => Some(s.clone()),
                    None => Snapshot::load(&watch_dir, r)?,
                };
                match current {
                    Some(s) if s.manifest.episode == episode => {
                        snapshots.insert(r.clone(), s);
                    }
                    _ => {
                        let s = Snapshot::take(&watch_dir, r, &episode)?;
                        on_event(&Event::SnapshotTaken {
                            path: r.clone(),
                            episode: episode.clone(),
                        });
                        snapshots.insert(r.clone(), s);
                    }
                }
            }
        }
        on_event(&Event::State {
            observation: Box::new(obs.clone()),
        });
        Ok(obs)
    };

    let mut obs = observe_now(&mut snapshots, &mut on_event)?;
    let mut recorded = 0u64;
    // Changes made while nothing watched: the current lock episode's copy against what is
    // there now (nothing differs from a copy just taken). Before `Ready`, so that a change
    // made after `Ready` is an event, never mistaken for one made before (the watches are
    // already in place: what happens meanwhile is queued).
    if obs.state().blocks_config() {
        for root in roots {
            let Some(snap) = snapshots.get(root) else {
                continue;
            };
            for (path, change) in snap.differences()? {
                let b = Blocked {
                    path: &path,
                    root,
                    change,
                    at_start: true,
                };
                block(
                    inst,
                    ledger,
                    clock,
                    opts,
                    &obs,
                    snap,
                    &b,
                    &mut watches,
                    &mut on_event,
                )?;
                recorded += 1;
            }
        }
    }
    on_event(&Event::Ready {
        paths: roots.to_vec(),
    });
    loop {
        if opts.exit_after.is_some_and(|n| recorded >= n) {
            return Ok(recorded);
        }
        // Sleep until an event arrives or the next deadline of the state machine.
        let now = obs.time.now;
        let next = breakpoints(&obs.facts.facts, policy)
            .into_iter()
            .find(|b| *b > now)
            .and_then(|b| (b - now).to_std().ok())
            .unwrap_or(MAX_IDLE)
            .clamp(Duration::from_millis(100), MAX_IDLE);
        let first = match rx.recv_timeout(next) {
            Ok(ev) => Some(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(WatchError::Notify {
                    path: String::new(),
                    message: "the file watcher stopped".into(),
                });
            }
        };
        let mut batch = Vec::new();
        if let Some(ev) = first {
            batch.push(ev);
            // Let a burst (an editor's save) settle before comparing.
            let mut rounds = 0;
            while let Ok(ev) = rx.recv_timeout(Duration::from_millis(150)) {
                batch.push(ev);
                rounds += 1;
                if rounds > 200 {
                    break;
                }
            }
        }
        let mut candidates: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut rewatch = false;
        for ev in batch {
            let Ok(ev) = ev else { continue };
            if !relevant(&ev.kind) {
                continue;
            }
            for p in &ev.paths {
                for r in roots {
                    if p == r {
                        rewatch = true;
                    }
                    if p.starts_with(r) {
                        candidates.insert(p.clone(), r.clone());
                    }
                }
            }
        }
        if rewatch {
            watches.refresh()?;
        }
        obs = observe_now(&mut snapshots, &mut on_event)?;
        if !obs.state().blocks_config() {
            continue;
        }
        // Outermost paths first: restoring a directory settles everything under it.
        for (path, root) in candidates {
            let Some(snap) = snapshots.get(&root) else {
                continue;
            };
            let Some(change) = snap.change(&path)? else {
                continue;
            };
            let b = Blocked {
                path: &path,
                root: &root,
                change,
                at_start: false,
            };
            block(
                inst,
                ledger,
                clock,
                opts,
                &obs,
                snap,
                &b,
                &mut watches,
                &mut on_event,
            )?;
            recorded += 1;
        }
    }
}

/// One change to record (and restore).
struct Blocked<'a> {
    path: &'a Path,
    root: &'a Path,
    change: ChangeKind,
    /// Found when `watch` started (made while nothing watched).
    at_start: bool,
}

/// Restore a blocked change when asked, record it as `config_change_blocked`, tell the
/// caller.
#[allow(clippy::too_many_arguments)]
fn block(
    inst: &Instance,
    ledger: &Ledger,
    clock: &dyn Clock,
    opts: &Options,
    obs: &Observation,
    snap: &Snapshot,
    b: &Blocked<'_>,
    watches: &mut Watches,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), WatchError> {
    let mut restored = false;
    let mut restore_error = None;
    if opts.restore {
        match snap.restore(b.path) {
            Ok(()) => restored = true,
            Err(e) => restore_error = Some(e.to_string()),
        }
        if b.path == b.root {
            watches.refresh()?;
        }
    }
    let mut d = Map::new();
    d.insert("path".into(), json!(b.path.display().to_string()));
    d.insert("kind".into(), json!(b.change.as_str()));
    d.insert("state".into(), json!(obs.state().as_str()));
    d.insert("watched".into(), json!(b.root.display().to_string()));
    d.insert("episode".into(), json!(snap.manifest.episode));
    d.insert("restored".into(), json!(restored));
    if let Some(e) = restore_error {
        d.insert("restore_error".into(), json!(e));
    }
    if b.at_start {
        d.insert("at_start".into(), json!(true));
    }
    let entry = observe::append_trusted(inst, ledger, kind::CONFIG_CHANGE_BLOCKED, d, clock)?
        .pop()
        .expect("append_trusted returns the entry");
    on_event(&Event::Blocked {
        entry: Box::new(entry),
        path: b.path.to_path_buf(),
        kind: b.change,
        restored,
    });
    Ok(())
}
