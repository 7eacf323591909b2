//! `vmledger fingerprint tree DIR...`: fingerprint directory trees (paths, types, modes,
//! sizes, SHA-256 of files, symlink targets; a root digest per tree). Entries that cannot
//! be read are reported one per line on stderr, the rest is finished, the (incomplete)
//! fingerprint is printed all the same (`complete: false` with its `errors`; with
//! `--json` it is the one document on stdout) and the command exits 2. Only reads, except
//! the `-o FILE` the user asks for.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

use super::Ctx;
use crate::exit::{self, Exit};
use crate::fingerprint::tree::{self, Document, Excludes};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directories to fingerprint (symlinks inside them are recorded, never followed)
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Skip entries matching GLOB: without `/` it matches a name at any depth (`*.log`),
    /// with `/` the relative path (`var/cache/**`); repeatable
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Also write the vmledger-tree/v1 document to FILE (written even when some entries
    /// could not be read)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let excludes = Excludes::new(&args.exclude).map_err(|m| anyhow!(m))?;
    let doc = tree::fingerprint_all(&args.dirs, &excludes)?;
    if let Some(out) = &args.output {
        let mut bytes = serde_json::to_vec_pretty(&doc)?;
        bytes.push(b'\n');
        crate::fsutil::write_output(out, &bytes)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let failed: usize = doc.trees.iter().map(|t| t.errors.len()).sum();
    for t in &doc.trees {
        for e in &t.errors {
            ctx.out
                .note(format!("vmledger: {}/{}: {}", t.path, e.path, e.error));
        }
    }
    // The document is printed either way: an incomplete one says so (`complete: false`
    // and its `errors`), and only the exit status says "error".
    ctx.out.emit(&doc, || human(&doc))?;
    if failed == 0 {
        return Ok(Exit::Ok);
    }
    ctx.out.note(format!(
        "vmledger: error: {failed} entr{} could not be read (listed above); the root digests cover the rest and the fingerprint {} is marked incomplete{}",
        if failed == 1 { "y" } else { "ies" },
        if ctx.out.json { "on stdout" } else { "above" },
        match &args.output {
            Some(o) => format!("; {} holds it too", o.display()),
            None => String::new(),
        }
    ));
    Ok(Exit::Child(exit::ERROR))
}

fn human(doc: &Document) -> String {
    let mut s = String::new();
    for t in &doc.trees {
        let c = t.counts;
        s.push_str(&format!(
            "{}  {}  {} files, {} dirs, {} symlinks, {} other, {} bytes{}\n",
            t.root,
            t.path,
            c.files,
            c.dirs,
            c.symlinks,
            c.other,
            c.bytes,
            if t.complete { "" } else { " (INCOMPLETE)" }
        ));
    }
    s
}
