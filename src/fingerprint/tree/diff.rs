//! Comparing two tree fingerprints: paths added, removed and changed (and what about
//! them changed: type, content, size, mode, symlink target). Trees are paired by position
//! (the first directory of one document with the first of the other, ...). Pure logic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Document, Entry};

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathChange {
    /// Escaped relative path.
    pub path: String,
    /// What differs: `type`, `content`, `size`, `mode`, `target` (empty for added/removed).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub what: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The differences between two trees at the same position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDiff {
    pub old_path: String,
    pub new_path: String,
    pub old_root: String,
    pub new_root: String,
    pub same: bool,
    pub added: Vec<PathChange>,
    pub removed: Vec<PathChange>,
    pub changed: Vec<PathChange>,
    /// Paths that could not be read in either fingerprint (the comparison is incomplete
    /// for them).
    pub unreadable: Vec<String>,
}

/// Compare tree `i` of `old` with tree `i` of `new`. The documents must hold the same
/// number of trees.
pub fn compare(old: &Document, new: &Document) -> Result<Vec<TreeDiff>, String> {
    if old.trees.len() != new.trees.len() {
        return Err(format!(
            "the fingerprints cover different numbers of trees ({} and {}); trees are compared by position",
            old.trees.len(),
            new.trees.len()
        ));
    }
    Ok(old
        .trees
        .iter()
        .zip(&new.trees)
        .map(|(a, b)| {
            let index = |es: &'_ [Entry]| -> BTreeMap<String, Entry> {
                es.iter().map(|e| (e.path.clone(), e.clone())).collect()
            };
            let (ma, mb) = (index(&a.entries), index(&b.entries));
            let mut d = TreeDiff {
                old_path: a.path.clone(),
                new_path: b.path.clone(),
                old_root: a.root.clone(),
                new_root: b.root.clone(),
                same: false,
                added: Vec::new(),
                removed: Vec::new(),
                changed: Vec::new(),
                unreadable: a
                    .errors
                    .iter()
                    .chain(&b.errors)
                    .map(|e| e.path.clone())
                    .collect(),
            };
            d.unreadable.sort();
            d.unreadable.dedup();
            for (p, ea) in &ma {
                match mb.get(p) {
                    None => d.removed.push(PathChange {
                        path: p.clone(),
                        what: vec![],
                        kind: ea.kind.as_str().into(),
                    }),
                    Some(eb) => {
                        let mut what = Vec::new();
                        if ea.kind != eb.kind {
                            what.push("type".to_string());
                        } else {
                            if ea.sha256 != eb.sha256 {
                                what.push("content".into());
                            }
                            if ea.size != eb.size {
                                what.push("size".into());
                            }
                            if ea.target != eb.target {
                                what.push("target".into());
                            }
                        }
                        if ea.mode != eb.mode {
                            what.push("mode".into());
                        }
                        if !what.is_empty() {
                            d.changed.push(PathChange {
                                path: p.clone(),
                                what,
                                kind: eb.kind.as_str().into(),
                            });
                        }
                    }
                }
            }
            for (p, eb) in &mb {
                if !ma.contains_key(p) {
                    d.added.push(PathChange {
                        path: p.clone(),
                        what: vec![],
                        kind: eb.kind.as_str().into(),
                    });
                }
            }
            d.same = d.added.is_empty()
                && d.removed.is_empty()
                && d.changed.is_empty()
                && d.unreadable.is_empty();
            d
        })
        .collect())
}
