//! `vmledger status`: the instance, its ledger head and (later) its license state.

use serde_json::json;

use super::Ctx;
use crate::exit::Exit;
use crate::identity::{Instance, StateDir};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    let dir = StateDir::new(cfg.state_dir()?);
    let inst = Instance::open(&dir)?;
    let ledger = inst.ledger()?;
    let head = ledger.head()?;
    let last_boot = ledger.latest_of_kind("boot")?;
    let drift = crate::fingerprint::boot::last_drift(&ledger)?;
    let doc = json!({
        "format": "vmledger-status/v1",
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "state_dir": dir.root,
        "entries": ledger.count()?,
        "head": head.as_ref().map(|h| json!({"seq": h.seq, "hash": h.hash, "at": h.at})),
        "last_boot_at": last_boot.as_ref().map(|e| e.body.at.clone()),
        "hardware_drift": drift.as_ref().map(|d| json!({"conclusion": d.conclusion, "seq": d.seq, "against_seq": d.against_seq, "explanation": d.explanation})),
    });
    ctx.out.emit(&doc, || {
        let mut s = format!(
            "instance {}\nserial   {}\n",
            inst.settings.instance,
            inst.settings.serial.as_deref().unwrap_or("(none)")
        );
        if let Some(h) = &head {
            s.push_str(&format!(
                "ledger   {} entries, head seq {} at {}\n",
                h.seq + 1,
                h.seq,
                h.at
            ));
        }
        if let Some(b) = &last_boot {
            s.push_str(&format!("booted   {}\n", b.body.at));
        }
        if let Some(d) = &drift {
            s.push_str(&format!(
                "hardware {} (boot seq {}): {}\n",
                d.conclusion, d.seq, d.explanation
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}
