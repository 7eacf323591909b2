//! `vmledger diff` for tree fingerprints (to be built: see the tree fingerprint issue).

use super::Ctx;
use super::diff::Operand;
use crate::exit::Exit;

pub fn run(_ctx: &Ctx, _a: Operand, _b: Operand) -> anyhow::Result<Exit> {
    anyhow::bail!("`diff` of tree fingerprints is not built yet")
}
