//! `vmledger watch [PATH...] [--restore]`: while the appliance is locked or disabled,
//! record every change under the watched configuration paths as `config_change_blocked`
//! and, with `--restore`, put it back from the copy taken when the lock began. Paths come
//! from the command line, else from the config file's `[watch] paths`; with neither, it
//! says so and exits 0 (nothing to enforce is not a failure for `vmledger-watch.service`).
//! At start it also records (and restores) what changed while it was not running.
//!
//! Progress goes to stderr (one line per event); with `--exit-after N` the command returns
//! after N blocked changes and prints a summary document.

use std::path::PathBuf;

use serde_json::json;

use super::Ctx;
use super::status::Agent;
use crate::exit::Exit;
use crate::time::SystemClock;
use crate::watch::{self, Event};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration files or directories to watch [default: `[watch] paths` from the config]
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Put every blocked change back from the copy taken when the lock began
    /// [default: `[watch] restore` from the config]
    #[arg(long)]
    pub restore: bool,
    /// Stop after recording N blocked changes (for scripts and tests)
    #[arg(long, value_name = "N")]
    pub exit_after: Option<u64>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let agent = Agent::open(ctx)?;
    let (paths, restore) = if args.paths.is_empty() {
        (
            agent.cfg.watch.paths.clone(),
            args.restore || agent.cfg.watch.restore,
        )
    } else {
        (args.paths.clone(), args.restore)
    };
    if paths.is_empty() {
        // Not an error: `vmledger-watch.service` is enabled on appliances that configure
        // no paths, and a failure would only make systemd restart it forever.
        let file = agent
            .cfg
            .config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the config file (none was found)".into());
        ctx.out.note(format!(
            "vmledger: nothing to watch: no PATH given and no [watch] paths in {file}; exiting"
        ));
        let doc = json!({
            "format": "vmledger-watch/v1",
            "paths": [],
            "recorded": 0,
            "blocked": [],
        });
        ctx.out.emit(&doc, String::new)?;
        return Ok(Exit::Ok);
    }
    // The state rests on the newest stored receipt (see `checkin::reconcile`).
    agent.reconcile(&SystemClock)?;
    let roots = paths
        .iter()
        .map(|p| watch::absolute(p))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = watch::Options {
        restore,
        exit_after: args.exit_after,
    };
    let mut blocked = Vec::new();
    let mut last_state = None;
    let out = ctx.out;
    let recorded = watch::run(
        &agent.inst,
        &agent.ledger,
        &agent.policy(),
        &roots,
        &opts,
        &SystemClock,
        |ev| match ev {
            Event::Ready { paths } => out.note(format!(
                "vmledger: watching {} path(s){}",
                paths.len(),
                if restore {
                    " (restoring blocked changes)"
                } else {
                    ""
                }
            )),
            Event::State { observation } => {
                let s = observation.state();
                if last_state != Some(s) {
                    out.note(format!("vmledger: license {s}"));
                    last_state = Some(s);
                }
            }
            Event::SnapshotTaken { path, episode } => out.note(format!(
                "vmledger: kept a copy of {} (locked since {episode})",
                path.display()
            )),
            Event::Blocked {
                entry,
                path,
                kind,
                restored,
            } => {
                out.note(format!(
                    "vmledger: blocked change: {} {}{} (seq {})",
                    path.display(),
                    kind.as_str(),
                    if *restored { ", restored" } else { "" },
                    entry.body.seq
                ));
                blocked.push(json!({
                    "seq": entry.body.seq,
                    "path": path,
                    "kind": kind.as_str(),
                    "restored": restored,
                }));
            }
        },
    )?;
    let doc = json!({
        "format": "vmledger-watch/v1",
        "paths": roots,
        "recorded": recorded,
        "blocked": blocked,
    });
    ctx.out
        .emit(&doc, || format!("{recorded} blocked change(s) recorded"))?;
    Ok(Exit::Ok)
}
