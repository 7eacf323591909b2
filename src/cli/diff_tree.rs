//! `vmledger diff` for two tree fingerprints: paths added, removed and changed, tree by
//! tree. Exit 0 when every tree is the same (and was read completely), 1 otherwise.

use anyhow::anyhow;
use serde_json::json;

use super::Ctx;
use super::diff::Operand;
use crate::exit::Exit;
use crate::fingerprint::tree::{self, Document};

/// The format of the diff document.
pub const DIFF_FORMAT: &str = "vmledger-tree-diff/v1";

fn load(op: &Operand) -> anyhow::Result<Document> {
    let Operand::Document { path, value, .. } = op else {
        return Err(anyhow!("{} is not a tree fingerprint", op.path().display()));
    };
    let doc: Document = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        anyhow!(
            "{}: not a valid vmledger-tree/v1 document: at `{}`: {}",
            path.display(),
            e.path(),
            e.inner()
        )
    })?;
    doc.validate().map_err(|m| {
        anyhow!(
            "{}: not a valid vmledger-tree/v1 document: {m}",
            path.display()
        )
    })?;
    Ok(doc)
}

pub fn run(ctx: &Ctx, a: Operand, b: Operand) -> anyhow::Result<Exit> {
    let old = load(&a)?;
    let new = load(&b)?;
    let diffs = tree::compare(&old, &new).map_err(|m| {
        anyhow!(
            "cannot compare {} with {}: {m}",
            a.path().display(),
            b.path().display()
        )
    })?;
    let same = diffs.iter().all(|d| d.same);
    let doc = json!({
        "format": DIFF_FORMAT,
        "old": a.path(),
        "new": b.path(),
        "same": same,
        "trees": diffs,
    });
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        for d in &diffs {
            let (n_a, n_r, n_c) = (d.added.len(), d.removed.len(), d.changed.len());
            s.push_str(&format!(
                "{} -> {}: {}\n",
                d.old_path,
                d.new_path,
                if d.same {
                    "same".to_string()
                } else {
                    format!(
                        "{n_a} added, {n_r} removed, {n_c} changed, {} unreadable",
                        d.unreadable.len()
                    )
                }
            ));
            for p in &d.added {
                s.push_str(&format!("+ {} ({})\n", p.path, p.kind));
            }
            for p in &d.removed {
                s.push_str(&format!("- {} ({})\n", p.path, p.kind));
            }
            for p in &d.changed {
                s.push_str(&format!("~ {} ({})\n", p.path, p.what.join(", ")));
            }
            for p in &d.unreadable {
                s.push_str(&format!("? {p} (could not be read when fingerprinted)\n"));
            }
        }
        s
    })?;
    Ok(Exit::from_bool(same))
}
