//! `vmledger ledger show|verify|export`.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;

use super::Ctx;
use crate::exit::Exit;
use crate::fsutil;
use crate::identity::{IdentityError, Instance, StateDir, is_initialised};
use crate::keys::{self, KeyError};
use crate::ledger::export::{Bundle, EXPORT_FORMAT};
use crate::ledger::{Ledger, verify};
use crate::time::{self, Clock, SystemClock};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print ledger entries
    Show {
        /// Only the last N entries
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Check every hash, signature, link and sequence number (exit 1 names the first bad seq)
    Verify,
    /// Write a vmledger-export/v1 bundle for the vendor's cross-check
    Export {
        /// Only entries with seq >= SEQ
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Write to FILE instead of stdout
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    let dir = StateDir::new(cfg.state_dir()?);
    match cmd {
        Command::Show { tail } => show(ctx, &dir, tail),
        Command::Verify => verify_cmd(ctx, &dir),
        Command::Export { since, output } => export(ctx, &dir, since, output),
    }
}

fn show(ctx: &Ctx, dir: &StateDir, tail: Option<u64>) -> anyhow::Result<Exit> {
    let ledger = Ledger::open(&dir.ledger_path())?;
    let entries = match tail {
        Some(n) => ledger.tail(n)?,
        None => ledger.entries_from(0)?,
    };
    let doc = json!({"format": "vmledger-entries/v1", "entries": entries});
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        for e in &entries {
            let data = serde_json::to_string(&e.body.data).unwrap_or_default();
            s.push_str(&format!(
                "{:>6}  {}  {:<20} {}  {}\n",
                e.body.seq,
                e.body.at,
                e.body.kind,
                &e.hash[..12],
                if data == "{}" { String::new() } else { data }
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}

fn verify_cmd(ctx: &Ctx, dir: &StateDir) -> anyhow::Result<Exit> {
    let ledger = if is_initialised(&dir.root) && !dir.ledger_path().exists() {
        // Lost, not yet created: say so, and what to do.
        Instance::open(dir)?.ledger()?
    } else {
        Ledger::open(&dir.ledger_path())?
    };
    // The instance's own key, when its files are present, must be the genesis key. Without
    // instance.key the chain is still checked under the genesis entry's key: the missing
    // key is reported beside the verdict, which it does not change.
    let (expected, key_file) = if is_initialised(&dir.root) {
        match Instance::open(dir) {
            Ok(inst) => (Some(inst.key.public_key()), "checked"),
            Err(IdentityError::Key(KeyError::Read { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ctx.out.note(format!(
                    "vmledger: warning: {} is missing; verifying against the genesis entry's public key only. Restore instance.key from a backup: this instance cannot sign new entries without it",
                    dir.key_path().display()
                ));
                (None, "missing")
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        (None, "not_initialised")
    };
    let report = verify::verify(&ledger, expected.as_ref())?;
    let doc = json!({
        "format": "vmledger-verify/v1",
        "ok": report.ok(),
        "ledger": ledger.path(),
        "instance_key": key_file,
        "entries": report.entries,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_bad": report.first_bad,
    });
    ctx.out.emit(&doc, || match &report.first_bad {
        None => format!(
            "ok: {} entries verified; head seq {} {}",
            report.entries,
            report.head_seq.unwrap_or(0),
            report.head_hash.as_deref().unwrap_or("")
        ),
        Some(b) => format!(
            "FAILED at seq {}: {}\nThe ledger in {} has been altered or damaged. Keep this copy for support; do not delete it.",
            b.seq,
            b.problem,
            ledger.path().display()
        ),
    })?;
    Ok(Exit::from_bool(report.ok()))
}

fn export(
    ctx: &Ctx,
    dir: &StateDir,
    since: Option<u64>,
    output: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let inst = Instance::open(dir)?;
    let ledger = inst.ledger()?;
    let entries = ledger.entries_from(since.unwrap_or(0))?;
    let bundle = Bundle {
        format: EXPORT_FORMAT.into(),
        serial: inst.settings.serial.clone(),
        instance: inst.settings.instance.clone(),
        public_key: keys::b64_encode(&inst.key.public_key()),
        exported_at: time::format_at(SystemClock.now()),
        entries,
    };
    match output {
        None => {
            // The bundle is the document, with or without --json.
            let mut out = ctx.out;
            out.json = true;
            out.emit(&bundle, String::new)?;
        }
        Some(path) => {
            let mut bytes = serde_json::to_vec(&bundle)?;
            bytes.push(b'\n');
            fsutil::write_output(&path, &bytes)
                .with_context(|| format!("cannot write export to {}", path.display()))?;
            let (first, last) = (
                bundle.entries.first().map(|e| e.body.seq),
                bundle.entries.last().map(|e| e.body.seq),
            );
            let doc = json!({
                "format": "vmledger-export-written/v1",
                "path": path,
                "entries": bundle.entries.len(),
                "first_seq": first,
                "last_seq": last,
            });
            ctx.out.emit(&doc, || {
                format!(
                    "exported {} entries (seq {}..{}) to {}",
                    bundle.entries.len(),
                    first.map_or("-".into(), |s| s.to_string()),
                    last.map_or("-".into(), |s| s.to_string()),
                    path.display()
                )
            })?;
        }
    }
    Ok(Exit::Ok)
}
