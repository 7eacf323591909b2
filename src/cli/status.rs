//! `vmledger status`: the instance, its ledger head and its license state
//! (`vmledger-status/v1`, schema `schemas/status.schema.json`). Exits 0 whenever the state
//! could be determined, whatever it is. Also the helpers the other license commands share:
//! opening the agent and observing its state.

use serde_json::{Value, json};

use super::Ctx;
use crate::checkin::{self, Service};
use crate::config::Config;
use crate::exit::Exit;
use crate::identity::{Instance, StateDir};
use crate::ledger::Ledger;
use crate::license::observe::{self, Observation};
use crate::license::{Policy, State, report};
use crate::time::Clock;

/// `format` of the status document.
pub const STATUS_FORMAT: &str = "vmledger-status/v1";

#[derive(Debug, clap::Args)]
pub struct Args {}

/// An opened appliance agent: configuration, instance and ledger.
pub(super) struct Agent {
    pub cfg: Config,
    pub inst: Instance,
    pub ledger: Ledger,
}

impl Agent {
    /// Open the initialised instance in the configured state dir.
    pub fn open(ctx: &Ctx) -> anyhow::Result<Agent> {
        let cfg = ctx.config(None)?;
        let dir = StateDir::new(cfg.state_dir()?);
        let inst = Instance::open(&dir)?;
        let ledger = inst.ledger()?;
        Ok(Agent { cfg, inst, ledger })
    }

    pub fn policy(&self) -> Policy {
        self.cfg.license.into()
    }

    /// The service settings: `instance.json`, overridden by the config's `[service]`.
    pub fn service(&self) -> anyhow::Result<Service> {
        Ok(Service::resolve(
            self.inst.settings.service.as_ref(),
            &self.cfg.service,
        )?)
    }

    /// Observe the license state, recording transitions. First the newest stored receipt
    /// is made sure to be on record ([`checkin::reconcile`]: a check-in interrupted before
    /// its `checkin` entry, or entries deleted after it).
    pub fn observe(&self, clock: &dyn Clock) -> anyhow::Result<Observation> {
        self.reconcile(clock)?;
        Ok(observe::observe(
            &self.inst,
            &self.ledger,
            &self.policy(),
            clock,
        )?)
    }

    /// [`Agent::observe`] just before a check-in ([`observe::observe_before_checkin`]).
    pub fn observe_before_checkin(&self, clock: &dyn Clock) -> anyhow::Result<Observation> {
        self.reconcile(clock)?;
        Ok(observe::observe_before_checkin(
            &self.inst,
            &self.ledger,
            &self.policy(),
            clock,
        )?)
    }

    /// [`checkin::reconcile`] with the configured service keys (nothing to do without a
    /// usable pinned key: no stored receipt could be trusted; `checkin` reports a bad one).
    pub fn reconcile(&self, clock: &dyn Clock) -> anyhow::Result<()> {
        let Ok(service) = self.service() else {
            return Ok(());
        };
        checkin::reconcile(&self.inst, &self.ledger, &service, clock)?;
        Ok(())
    }
}

/// The exit outcome for commands that enforce the lock (`gate`) or the disable (`boot`).
pub(super) fn enforcement_exit(state: State) -> Exit {
    match state {
        State::Locked => Exit::Locked,
        State::Disabled => Exit::Disabled,
        _ => Exit::Ok,
    }
}

pub fn run(ctx: &Ctx, _args: Args) -> anyhow::Result<Exit> {
    let agent = Agent::open(ctx)?;
    let obs = agent.observe(&crate::time::SystemClock)?;
    let inst = &agent.inst;
    let ledger = &agent.ledger;
    let head = ledger.head()?;
    let last_boot = ledger.latest_of_kind("boot")?;
    let service = agent.service().ok();
    let drift = crate::fingerprint::boot::last_drift(ledger)?;
    let mut doc = json!({
        "format": STATUS_FORMAT,
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "state_dir": inst.dir.root,
        "entries": ledger.count()?,
        "head": head.as_ref().map(|h| json!({"seq": h.seq, "hash": h.hash, "at": h.at})),
        "last_boot_at": last_boot.as_ref().map(|e| e.body.at.clone()),
        "service": service.as_ref().map(|s| json!({
            "url": s.url,
            "key_id": s.keys.first().map(|k| k.key_id.clone()),
        })),
        "hardware_drift": drift.as_ref().map(|d| json!({"conclusion": d.conclusion, "seq": d.seq, "against_seq": d.against_seq, "explanation": d.explanation})),
    });
    if let Value::Object(m) = &mut doc {
        m.extend(report::status_members(&obs));
    }
    ctx.out.emit(&doc, || {
        let e = &obs.evaluation;
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
        s.push_str(&format!(
            "state    {}{}\n",
            e.state,
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        if let Some(c) = e.countdown {
            s.push_str(&format!(
                "countdown {} ends {} ({} days left)\n",
                c.kind.as_str(),
                report::human_time(c.ends_at),
                e.days_left.unwrap_or(0)
            ));
        }
        s.push_str(&report::message(&obs));
        s
    })?;
    Ok(Exit::Ok)
}
