//! `vmledger service init|key`: create the licensing service's database and key, print
//! the public key appliances pin and every key's state, and rotate the key
//! (`service key rotate|activate|retire`, see `service::keyring`). Also the `--db` option
//! shared by `serve`, `service` and `admin`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::Ctx;
use crate::config::{Env as _, ProcessEnv};
use crate::exit::Exit;
use crate::service::store::ServiceKeyRecord;
use crate::service::{self, keyring};
use crate::time::{Clock, SystemClock};

/// `--db FILE`, shared by `serve`, `service` and `admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArg {
    /// Service database (env VMLEDGER_DB) [default: `[server] db` from the config, else STATE_DIR/service.sqlite]
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,
}

impl DbArg {
    /// The database path: flag/env > config > default in the state dir.
    pub fn resolve(&self, ctx: &Ctx) -> anyhow::Result<(PathBuf, crate::config::Config)> {
        let cfg = ctx.config(None)?;
        // VMLEDGER_DB is read here, not by clap, so that an empty value counts as unset.
        let flag = self
            .db
            .clone()
            .or_else(|| ProcessEnv.var("VMLEDGER_DB").map(PathBuf::from));
        let path = match (&flag, &cfg.server.db) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => cfg.state_dir()?.join("service.sqlite"),
        };
        Ok((path, cfg))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the service database and its Ed25519 key; print the public key appliances pin
    Init {
        #[command(flatten)]
        db: DbArg,
    },
    /// Print the active public key (standard base64 of the raw 32 bytes) on stdout and every
    /// key with its state on stderr; `rotate`, `activate`, `retire` change keys
    Key {
        #[command(subcommand)]
        action: Option<KeyAction>,
        #[command(flatten)]
        db: DbArg,
    },
}

/// Service key rotation (ARCHITECTURE.md, "Key rotation").
#[derive(Debug, clap::Subcommand)]
pub enum KeyAction {
    /// Create the successor key (state `announced`): receipts announce it from now on
    Rotate,
    /// Make KEYID the key that signs receipts; the active key stays usable for appliances
    /// that trust no newer key (state `previous`)
    Activate {
        #[arg(value_name = "KEYID")]
        key_id: String,
    },
    /// Never sign with KEYID again (end of the transition, or a compromised key)
    Retire {
        #[arg(value_name = "KEYID")]
        key_id: String,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    match cmd {
        Command::Init { db } => {
            let (path, _) = db.resolve(ctx)?;
            let key = service::init(&path, &SystemClock)?;
            print_key(ctx, &path, &key.public_key_b64(), true)
        }
        Command::Key { action: None, db } => {
            let (path, _) = db.resolve(ctx)?;
            let (key, _) = service::load_key(&path)?;
            print_key(ctx, &path, &key.public_key_b64(), false)
        }
        Command::Key {
            action: Some(action),
            db,
        } => {
            let (path, _) = db.resolve(ctx)?;
            change(ctx, &path, action)
        }
    }
}

fn key_doc(db: &Path, k: &ServiceKeyRecord) -> Value {
    json!({
        "key_id": k.key_id,
        "public_key": k.public_key,
        "state": k.state.as_str(),
        "created_at": k.created_at,
        "activated_at": k.activated_at,
        "retired_at": k.retired_at,
        "key_file": keyring::key_file(db, &k.key_id),
    })
}

fn key_table(keys: &[ServiceKeyRecord]) -> String {
    let mut s = format!(
        "{:<16}  {:<9}  {:<24}  {:<24}  {}",
        "KEY ID", "STATE", "CREATED", "ACTIVATED", "RETIRED"
    );
    for k in keys {
        s.push_str(&format!(
            "\n{:<16}  {:<9}  {:<24}  {:<24}  {}",
            k.key_id,
            k.state.as_str(),
            k.created_at,
            k.activated_at.as_deref().unwrap_or("-"),
            k.retired_at.as_deref().unwrap_or("-")
        ));
    }
    s
}

fn print_key(ctx: &Ctx, path: &Path, pk: &str, created: bool) -> anyhow::Result<Exit> {
    let keys = keyring::list(path)?;
    let active = keys
        .iter()
        .find(|k| k.public_key == pk)
        .map(|k| k.key_id.clone())
        .unwrap_or_default();
    let doc = json!({
        "format": "vmledger-service-key/v1",
        "public_key": pk,
        "key_id": active,
        "db": path,
        "key_file": keyring::key_file(path, &active),
        "keys": keys.iter().map(|k| key_doc(path, k)).collect::<Vec<_>>(),
    });
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        if created {
            s.push_str(&format!(
                "created service database {} and key {}\n",
                path.display(),
                service::key_path(path).display()
            ));
        }
        s.push_str(&format!("{pk}\n"));
        s
    })?;
    if created {
        ctx.out.note(format!(
            "vmledger: appliances pin this key: vmledger init --service-key {pk}"
        ));
    } else if !ctx.out.json {
        ctx.out.note(key_table(&keys));
    }
    Ok(Exit::Ok)
}

fn change(ctx: &Ctx, path: &Path, action: KeyAction) -> anyhow::Result<Exit> {
    let now = SystemClock.now();
    let (name, key, predecessor) = match &action {
        KeyAction::Rotate => ("rotate", keyring::rotate(path, now)?, None),
        KeyAction::Activate { key_id } => {
            let a = keyring::activate(path, key_id, now)?;
            ("activate", a.key, a.predecessor)
        }
        KeyAction::Retire { key_id } => ("retire", keyring::retire(path, key_id, now)?, None),
    };
    let keys = keyring::list(path)?;
    let doc = json!({
        "format": "vmledger-service-key-change/v1",
        "action": name,
        "key": key_doc(path, &key),
        "predecessor": predecessor.as_ref().map(|p| key_doc(path, p)),
        "db": path,
        "keys": keys.iter().map(|k| key_doc(path, k)).collect::<Vec<_>>(),
    });
    let id = &key.key_id;
    ctx.out.emit(&doc, || match (&action, &predecessor) {
        (KeyAction::Rotate, _) => format!(
            "service key {id} announced: {}\nkey file {}\n",
            key.public_key,
            keyring::key_file(path, id).display()
        ),
        (KeyAction::Activate { .. }, Some(p)) => format!(
            "service key {id} is active: it signs receipts from now on; {} still signs for appliances that trust no newer key\n",
            p.key_id
        ),
        (KeyAction::Activate { .. }, None) => {
            format!("service key {id} is already active; nothing changed\n")
        }
        (KeyAction::Retire { .. }, _) => {
            format!("service key {id} is retired: it never signs again\n")
        }
    })?;
    if !ctx.out.json {
        match (&action, &predecessor) {
            (KeyAction::Rotate, _) => ctx.out.note(format!(
                "vmledger: receipts announce it from now on; after a transition period longer than any appliance stays offline, run `vmledger service key activate {id}`"
            )),
            (KeyAction::Activate { .. }, Some(p)) => ctx.out.note(format!(
                "vmledger: appliances re-pin {id} at their next check-in; when the stragglers have caught up (or at once, if {} was compromised) run `vmledger service key retire {}`",
                p.key_id, p.key_id
            )),
            _ => {}
        }
    }
    Ok(Exit::Ok)
}
