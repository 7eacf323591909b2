//! `vmledger boot`: record a boot (creating the identity on a sealed image's first boot),
//! observe the license state (recording what changed while the appliance was off), check
//! in when a service is configured (never waiting on the network longer than
//! `--checkin-timeout`, default 5 s, for the whole check-in), observe again, and exit 4
//! when the appliance is disabled so that units ordered after `vmledger-boot.service` do
//! not start.

use serde_json::{Map, json};

use super::Ctx;
use super::status::{Agent, enforcement_exit};
use crate::checkin::{self, Outcome};
use crate::exit::Exit;
use crate::identity::{Instance, StateDir};
use crate::license::observe::{self, kind};
use crate::license::{State, report};
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial number to use if this is the first boot of a sealed image [default: `serial` from the config]
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// Do not try to check in, even when a licensing service is configured
    #[arg(long)]
    pub offline: bool,
    /// Longest wait on the network for the boot-time check-in, in seconds
    #[arg(long, value_name = "SECS", default_value_t = checkin::BOOT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=60))]
    pub checkin_timeout: u64,
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
    let hardware_summary = fps.data.get("hardware").cloned();
    let mut data = Map::new();
    data.extend(fps.data);
    let entry = observe::append_trusted(&inst, &ledger, kind::BOOT, data, &clock)?
        .pop()
        .expect("append_trusted returns the entry");
    let mut agent = Agent { cfg, inst, ledger };
    // Record what changed while the appliance was off (a lock that began under the old
    // receipt, an SLA that ended) before the check-in changes the facts: the history
    // explains itself and the service receives it.
    agent.observe_before_checkin(&clock)?;

    // Check in at boot when a service URL and key are configured: bounded, best effort.
    let service = agent.service()?;
    let mut checkin_doc = serde_json::Value::Null;
    if !args.offline
        && service.url.is_some()
        && !service.keys.is_empty()
        && agent.inst.settings.serial.is_some()
    {
        let opts = checkin::Options {
            timeout: std::time::Duration::from_secs(args.checkin_timeout),
            hardware: hardware_summary,
        };
        let outcome = checkin::checkin(&mut agent.inst, &agent.ledger, &service, &opts, &clock);
        checkin_doc = match &outcome {
            Ok(Outcome::Accepted { receipt, entry }) => json!({
                "ok": true, "seq": entry.body.seq, "status": receipt.body.status,
                "reason": receipt.body.reason, "verdict": receipt.body.verdict,
                "receipt": entry.body.data.get("receipt"),
            }),
            Ok(Outcome::Failed { failure, entry }) => {
                ctx.out.note(format!(
                    "vmledger: check-in failed ({}): {}",
                    failure.reason, failure.detail
                ));
                json!({"ok": false, "seq": entry.body.seq, "reason": failure.reason, "detail": failure.detail})
            }
            // The boot itself is recorded; a check-in that cannot even start must not keep
            // the appliance from learning (and enforcing) its state.
            Err(e) => {
                ctx.out.note(format!("vmledger: cannot check in: {e}"));
                json!({"ok": false, "error": e.to_string()})
            }
        };
    }

    let obs = agent.observe(&clock)?;
    let state = obs.state();
    let inst = &agent.inst;
    let message = report::message(&obs);
    let doc = json!({
        "format": "vmledger-boot/v1",
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "created": created,
        "seq": entry.body.seq,
        "hash": entry.hash,
        "at": entry.body.at,
        "checkin": checkin_doc,
        "state": state.as_str(),
        "reason": obs.evaluation.reason,
        "message": message,
        "hardware_drift": drift,
    });
    if inst.settings.serial.is_none() {
        ctx.out.note(
            "vmledger: no serial number is configured; register with `vmledger init --serial SERIAL`",
        );
    }
    if state == State::Disabled {
        ctx.out.note(format!("vmledger: {message}"));
    }
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        if created {
            s.push_str(&format!(
                "created instance {} in {}\n",
                inst.settings.instance,
                inst.dir.root.display()
            ));
        }
        s.push_str(&format!(
            "boot recorded: seq {} at {} ({})\n",
            entry.body.seq,
            entry.body.at,
            &entry.hash[..16]
        ));
        if let Some(c) = drift.as_ref().and_then(|d| d.get("conclusion")) {
            s.push_str(&format!("hardware: {}\n", c.as_str().unwrap_or_default()));
        }
        s.push_str(&format!("license {state}: {message}"));
        s
    })?;
    Ok(match enforcement_exit(state) {
        Exit::Disabled => Exit::Disabled,
        _ => Exit::Ok,
    })
}
