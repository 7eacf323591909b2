//! `vmledger boot`: record a boot (creating the identity on a sealed image's first boot).

use serde_json::{Map, json};

use super::Ctx;
use crate::exit::Exit;
use crate::identity::{Instance, StateDir};
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial number to use if this is the first boot of a sealed image [default: `serial` from the config]
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let cfg = ctx.config(args.serial.as_deref())?;
    let dir = StateDir::new(cfg.state_dir()?);
    let clock = SystemClock;
    let (inst, created) = Instance::open_or_init(&dir, cfg.serial.as_deref(), &clock)?;
    let ledger = inst.ledger()?;
    // Hardware fingerprint, drift against the previous boot, configured trees.
    let fps = crate::fingerprint::boot::collect(&cfg, &ledger)?;
    fps.notes.iter().for_each(|n| ctx.out.note(n));
    let drift = fps.data.get("hardware_drift").cloned();
    let mut data = Map::new();
    data.extend(fps.data);
    let entry = ledger.append(&inst.key, "boot", data, &clock)?;
    let doc = json!({
        "format": "vmledger-boot/v1",
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "created": created,
        "seq": entry.body.seq,
        "hash": entry.hash,
        "at": entry.body.at,
        "hardware_drift": drift,
    });
    if inst.settings.serial.is_none() {
        ctx.out.note(
            "vmledger: no serial number is configured; register with `vmledger init --serial SERIAL`",
        );
    }
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        if created {
            s.push_str(&format!(
                "created instance {} in {}\n",
                inst.settings.instance,
                dir.root.display()
            ));
        }
        s.push_str(&format!(
            "boot recorded: seq {} at {} ({})",
            entry.body.seq,
            entry.body.at,
            &entry.hash[..16]
        ));
        if let Some(c) = drift.as_ref().and_then(|d| d.get("conclusion")) {
            s.push_str(&format!("\nhardware: {}", c.as_str().unwrap_or_default()));
        }
        s
    })?;
    Ok(Exit::Ok)
}
