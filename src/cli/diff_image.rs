//! `vmledger diff` for image fingerprints (to be built: see the image fingerprint issue).

use super::Ctx;
use super::diff::Operand;
use crate::exit::Exit;

pub fn run(_ctx: &Ctx, _a: Operand, _b: Operand) -> anyhow::Result<Exit> {
    anyhow::bail!("`diff` of image fingerprints is not built yet")
}
