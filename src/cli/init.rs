//! `vmledger init`: create the instance identity and ledger.

use anyhow::{Context as _, bail};
use serde_json::json;

use super::Ctx;
use crate::exit::Exit;
use crate::identity::{Instance, StateDir, is_initialised};
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The appliance's serial number, as on its license [default: `serial` from the config]
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let cfg = ctx.config(args.serial.as_deref())?;
    let dir = StateDir::new(cfg.state_dir()?);
    let Some(serial) = cfg.serial.as_deref() else {
        bail!(
            "init needs a serial number: pass --serial SERIAL (or set `serial` in the config file)"
        );
    };
    let clock = SystemClock;
    let inst = if is_initialised(&dir.root) {
        // The one change init makes to an existing instance: registering the serial of a
        // sealed image that first booted without one. Anything else is refused.
        let mut inst = Instance::open(&dir)?;
        if inst.settings.serial.is_some() || args.serial.is_none() {
            return Err(Instance::init(&dir, Some(serial), &clock)
                .unwrap_err()
                .into());
        }
        inst.register_serial(serial, &clock)?;
        inst
    } else {
        Instance::init(&dir, Some(serial), &clock)?
    };
    let head = inst
        .ledger()?
        .head()?
        .context("the new ledger has no head")?;
    let doc = json!({
        "format": "vmledger-init/v1",
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "public_key": inst.settings.public_key,
        "state_dir": dir.root,
        "head": {"seq": head.seq, "hash": head.hash},
    });
    ctx.out.emit(&doc, || {
        format!(
            "initialised instance {} (serial {}) in {}\npublic key {}",
            inst.settings.instance,
            serial,
            dir.root.display(),
            inst.settings.public_key
        )
    })?;
    Ok(Exit::Ok)
}
