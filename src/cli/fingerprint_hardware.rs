//! `vmledger fingerprint hardware`: the virtual hardware fingerprint of this guest (or of
//! a root directory), of a libvirt domain XML, or of a Proxmox VM config. Only reads.

use std::path::PathBuf;

use anyhow::Context as _;

use super::Ctx;
use crate::exit::Exit;
use crate::fingerprint::hardware::{Fingerprint, Status, guest, libvirt, proxmox};

#[derive(Debug, clap::Args)]
#[group(id = "source", multiple = false)]
pub struct Args {
    /// Read the guest's /sys, /proc and /etc under DIR [default: `[hardware] root` from the config, else /]
    #[arg(long, value_name = "DIR", group = "source")]
    pub root: Option<PathBuf>,
    /// Read a libvirt domain XML (`-` for stdin, as a libvirt hook receives it)
    #[arg(long, value_name = "FILE", group = "source")]
    pub libvirt_xml: Option<PathBuf>,
    /// Read a Proxmox VM config (/etc/pve/qemu-server/VMID.conf)
    #[arg(long, value_name = "FILE", group = "source")]
    pub proxmox_conf: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let fp = if let Some(xml) = &args.libvirt_xml {
        libvirt::read(xml)?.fingerprint(&xml.display().to_string())
    } else if let Some(conf) = &args.proxmox_conf {
        proxmox::read(conf)?.fingerprint(&conf.display().to_string())
    } else {
        let root = match args.root {
            Some(r) => r,
            None => ctx
                .config(None)
                .context("cannot read the configuration for `[hardware] root`")?
                .hardware
                .root
                .clone(),
        };
        guest::fingerprint(&root)?
    };
    ctx.out.emit(&fp, || human(&fp))?;
    Ok(Exit::Ok)
}

/// The fingerprint as a table for humans.
pub fn human(fp: &Fingerprint) -> String {
    let unavailable = fp
        .components
        .iter()
        .filter(|c| c.status == Status::Unavailable)
        .count();
    let mut s = format!(
        "hardware fingerprint {} ({} {}): {} components, {} unavailable\n",
        fp.digest,
        fp.source.kind.as_str(),
        fp.source.path,
        fp.components.len(),
        unavailable
    );
    let width = fp
        .components
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &fp.components {
        let what = match (&c.digest, &c.value, &c.reason) {
            (Some(d), Some(v), _) => format!("{}  {v}", &d[..16]),
            (Some(d), None, _) => d[..16].to_string(),
            (None, _, Some(r)) => format!("unavailable: {r}"),
            _ => "unavailable".to_string(),
        };
        s.push_str(&format!(
            "  {:width$}  {:10}  {what}  [{}]\n",
            c.name,
            c.class.as_str(),
            c.source
        ));
    }
    s
}
