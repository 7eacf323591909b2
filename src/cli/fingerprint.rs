//! `vmledger fingerprint image|hardware|tree`: dispatch to one file per kind.

use super::{Ctx, fingerprint_hardware, fingerprint_image, fingerprint_tree};
use crate::exit::Exit;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fingerprint disk images (raw, sparse, qcow2) by content
    Image(fingerprint_image::Args),
    /// Fingerprint the virtual hardware (this guest, libvirt XML or a Proxmox config)
    Hardware(fingerprint_hardware::Args),
    /// Fingerprint directory trees
    Tree(fingerprint_tree::Args),
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    match cmd {
        Command::Image(a) => fingerprint_image::run(ctx, a),
        Command::Hardware(a) => fingerprint_hardware::run(ctx, a),
        Command::Tree(a) => fingerprint_tree::run(ctx, a),
    }
}
