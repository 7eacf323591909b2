//! `vmledger init`: create the instance identity and ledger, and store where it checks in
//! (`--service URL --service-key KEY [--activation-code CODE]`). On an initialised instance
//! `init` only registers a missing serial or sets the service settings (recorded as a
//! `service_configured` entry); anything else is refused.

use anyhow::{Context as _, bail};
use serde_json::{Map, json};

use super::Ctx;
use crate::checkin::{self, Service};
use crate::exit::Exit;
use crate::identity::{Instance, ServiceSettings, StateDir, is_initialised};
use crate::keys;
use crate::license::observe::{self, kind};
use crate::protocol;
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The appliance's serial number, as on its license [default: `serial` from the config]
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// The licensing service's base URL (https://..., or http:// on loopback); check-ins go
    /// to URL/v1/checkin
    #[arg(long = "service", value_name = "URL")]
    pub service_url: Option<String>,
    /// The licensing service's Ed25519 public key (standard base64 of the raw 32 bytes),
    /// pinned to verify receipts
    #[arg(long, value_name = "KEY")]
    pub service_key: Option<String>,
    /// The serial's activation code from the vendor, needed for the first check-in
    #[arg(long, value_name = "CODE", requires = "service_key")]
    pub activation_code: Option<String>,
}

impl Args {
    fn has_service(&self) -> bool {
        self.service_url.is_some() || self.service_key.is_some() || self.activation_code.is_some()
    }
}

/// Validate the service flags and merge them into `current`.
fn service_settings(
    args: &Args,
    current: Option<&ServiceSettings>,
) -> anyhow::Result<ServiceSettings> {
    let mut s = current.cloned().unwrap_or_default();
    if let Some(url) = &args.service_url {
        checkin::validate_url(url)?;
        s.url = Some(url.trim_end_matches('/').to_string());
    }
    if let Some(key) = &args.service_key {
        let raw = keys::decode_public_key(key, "--service-key")?;
        s.public_key = Some(keys::b64_encode(&raw));
        s.announced_keys.clear();
    }
    if let Some(code) = &args.activation_code {
        let ok =
            !code.is_empty() && code.len() <= 256 && code.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            bail!("--activation-code: use 1-256 printable ASCII characters without spaces");
        }
        s.activation_code = Some(code.clone());
    }
    if s.url.is_some() && s.public_key.is_none() {
        bail!(
            "--service needs --service-key KEY too: receipts are verified against the pinned service key"
        );
    }
    Ok(s)
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let cfg = ctx.config(args.serial.as_deref())?;
    let dir = StateDir::new(cfg.state_dir()?);
    let clock = SystemClock;
    let mut service_changed = false;
    let mut inst = if is_initialised(&dir.root) {
        // The changes init makes to an existing instance: registering the serial of a
        // sealed image that first booted without one, and setting the service settings.
        let mut inst = Instance::open(&dir)?;
        let register = match (&inst.settings.serial, &args.serial) {
            (None, Some(_)) => true,
            (Some(existing), Some(wanted)) if existing != wanted => {
                return Err(Instance::init(&dir, Some(wanted), &clock)
                    .unwrap_err()
                    .into());
            }
            _ => false,
        };
        if !register && !args.has_service() {
            let serial = cfg.serial.as_deref().unwrap_or("none");
            return Err(Instance::init(&dir, Some(serial), &clock)
                .err()
                .context("init refused")?
                .into());
        }
        if register && let Some(serial) = &args.serial {
            inst.register_serial(serial, &clock)?;
        }
        inst
    } else {
        let Some(serial) = cfg.serial.as_deref() else {
            bail!(
                "init needs a serial number: pass --serial SERIAL (or set `serial` in the config file)"
            );
        };
        // Check the service flags before creating anything.
        service_settings(&args, None)?;
        Instance::init(&dir, Some(serial), &clock)?
    };
    if args.has_service() {
        let settings = service_settings(&args, inst.settings.service.as_ref())?;
        if inst.settings.service.as_ref() != Some(&settings) {
            let key_id = settings
                .public_key
                .as_deref()
                .and_then(|k| keys::decode_public_key(k, "service key").ok())
                .map(|k| protocol::key_id(&k));
            inst.settings.service = Some(settings.clone());
            inst.save_settings()?;
            let ledger = inst.ledger()?;
            let mut d = Map::new();
            d.insert("url".into(), json!(settings.url));
            d.insert("key_id".into(), json!(key_id));
            d.insert(
                "activation_code".into(),
                json!(settings.activation_code.is_some()),
            );
            observe::append_trusted(&inst, &ledger, kind::SERVICE_CONFIGURED, d, &clock)?;
            service_changed = true;
        }
    }
    let head = inst
        .ledger()?
        .head()?
        .context("the new ledger has no head")?;
    let service = Service::resolve(inst.settings.service.as_ref(), &cfg.service)?;
    let serial = inst.settings.serial.clone().unwrap_or_default();
    let doc = json!({
        "format": "vmledger-init/v1",
        "instance": inst.settings.instance,
        "serial": inst.settings.serial,
        "public_key": inst.settings.public_key,
        "state_dir": dir.root,
        "head": {"seq": head.seq, "hash": head.hash},
        "service": {
            "url": service.url,
            "key_id": service.keys.first().map(|k| k.key_id.clone()),
            "changed": service_changed,
        },
    });
    ctx.out.emit(&doc, || {
        let mut s = format!(
            "initialised instance {} (serial {}) in {}\npublic key {}",
            inst.settings.instance,
            serial,
            dir.root.display(),
            inst.settings.public_key
        );
        if let Some(k) = service.keys.first() {
            s.push_str(&format!(
                "\nlicensing service {} (key {})",
                service.url.as_deref().unwrap_or("(air-gapped: no URL)"),
                k.key_id
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}
