//! `vmledger service init|key`: create the licensing service's database and key, and
//! print the public key appliances pin. Also the `--db` option shared by `serve`,
//! `service` and `admin`.

use std::path::PathBuf;

use serde_json::json;

use super::Ctx;
use crate::config::{Env as _, ProcessEnv};
use crate::exit::Exit;
use crate::protocol;
use crate::service;
use crate::time::SystemClock;

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
    /// Print the service's public key (standard base64 of the raw 32 bytes) and key id
    Key {
        #[command(flatten)]
        db: DbArg,
    },
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    match cmd {
        Command::Init { db } => {
            let (path, _) = db.resolve(ctx)?;
            let key = service::init(&path, &SystemClock)?;
            print_key(
                ctx,
                &path,
                &key.public_key_b64(),
                &protocol::key_id(&key.public_key()),
                true,
            )
        }
        Command::Key { db } => {
            let (path, _) = db.resolve(ctx)?;
            let (key, key_id) = service::load_key(&path)?;
            print_key(ctx, &path, &key.public_key_b64(), &key_id, false)
        }
    }
}

fn print_key(
    ctx: &Ctx,
    path: &std::path::Path,
    pk: &str,
    key_id: &str,
    created: bool,
) -> anyhow::Result<Exit> {
    let doc = json!({
        "format": "vmledger-service-key/v1",
        "public_key": pk,
        "key_id": key_id,
        "db": path,
        "key_file": service::key_path(path),
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
    }
    Ok(Exit::Ok)
}
