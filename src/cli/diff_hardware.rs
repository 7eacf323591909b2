//! `vmledger diff` for two hardware fingerprints: each change explained, the policy from
//! the config applied, and a conclusion (`same`, `hardware_changed`, `clone_suspected`,
//! `snapshot_or_clone`, `different_machine`). Exit 0 for `same`, 1 otherwise.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde_json::json;

use super::Ctx;
use super::diff::Operand;
use crate::exit::Exit;
use crate::fingerprint::hardware::{ChangeKind, Conclusion, Fingerprint, compare};

/// The format of the diff document.
pub const DIFF_FORMAT: &str = "vmledger-hardware-diff/v1";

/// Parse and check a `vmledger-hardware/v1` operand, naming the file and the field.
pub fn load(op: &Operand) -> anyhow::Result<Fingerprint> {
    let Operand::Document { path, value, .. } = op else {
        return Err(anyhow!(
            "{} is not a hardware fingerprint",
            op.path().display()
        ));
    };
    let fp: Fingerprint = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        anyhow!(
            "{}: not a valid vmledger-hardware/v1 document: at `{}`: {}",
            path.display(),
            e.path(),
            e.inner()
        )
    })?;
    fp.validate().map_err(|m| {
        anyhow!(
            "{}: not a valid vmledger-hardware/v1 document: {m}",
            path.display()
        )
    })?;
    Ok(fp)
}

pub fn run(ctx: &Ctx, a: Operand, b: Operand) -> anyhow::Result<Exit> {
    let old = load(&a)?;
    let new = load(&b)?;
    let cfg = ctx
        .config(None)
        .context("cannot read the configuration for the `[hardware]` policy")?;
    let d = compare(&old, &new, &cfg.hardware.policy);
    let side =
        |p: &Path, f: &Fingerprint| json!({"path": p, "digest": f.digest, "source": f.source});
    let doc = json!({
        "format": DIFF_FORMAT,
        "old": side(a.path(), &old),
        "new": side(b.path(), &new),
        "conclusion": d.conclusion,
        "explanation": d.explanation,
        "changes": d.changes,
        "not_compared": d.not_compared,
        "policy": d.policy,
    });
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        for c in &d.changes {
            let mark = match c.change {
                ChangeKind::Changed => '~',
                ChangeKind::Added => '+',
                ChangeKind::Removed => '-',
            };
            s.push_str(&format!("{mark} {}: {}\n", c.component, c.explanation));
        }
        for n in &d.not_compared {
            s.push_str(&format!("? {}: not compared ({})\n", n.component, n.reason));
        }
        s.push_str(&format!(
            "conclusion: {}\n{}\n",
            d.conclusion, d.explanation
        ));
        s
    })?;
    Ok(Exit::from_bool(d.conclusion == Conclusion::Same))
}
