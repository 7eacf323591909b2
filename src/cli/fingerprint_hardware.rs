//! `vmledger fingerprint hardware` (to be built: see the hardware fingerprint issue).

use super::Ctx;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Ctx, _args: Args) -> anyhow::Result<Exit> {
    anyhow::bail!("`fingerprint hardware` is not built yet")
}
