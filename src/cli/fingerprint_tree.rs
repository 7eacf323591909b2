//! `vmledger fingerprint tree` (to be built: see the tree fingerprint issue).

use super::Ctx;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Ctx, _args: Args) -> anyhow::Result<Exit> {
    anyhow::bail!("`fingerprint tree` is not built yet")
}
