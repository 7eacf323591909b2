//! `vmledger gate [-- CMD ARGS...]`: may configuration change now? Exit 0 when allowed,
//! 3 when locked, 4 when disabled, with the reason on stderr. With a command: run it only
//! when allowed and pass on its exit status.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use anyhow::Context as _;
use serde_json::json;

use super::Ctx;
use super::status::{Agent, enforcement_exit};
use crate::exit::Exit;
use crate::license::report;
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Command to run only when configuration changes are allowed; its exit status is passed
    /// on (128+N when it dies of signal N)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let agent = Agent::open(ctx)?;
    let obs = agent.observe(&SystemClock)?;
    let state = obs.state();
    let outcome = enforcement_exit(state);
    let allowed = outcome == Exit::Ok;
    let message = report::message(&obs);
    if !allowed {
        ctx.out.note(format!(
            "vmledger: configuration changes are blocked ({state}): {message}"
        ));
    }
    if args.command.is_empty() || !allowed {
        let doc = json!({
            "format": "vmledger-gate/v1",
            "allowed": allowed,
            "state": state.as_str(),
            "reason": obs.evaluation.reason,
            "message": message,
            "exit_code": outcome.code(),
        });
        ctx.out.emit(&doc, || {
            if allowed {
                format!("allowed ({state})")
            } else {
                String::new()
            }
        })?;
        return Ok(outcome);
    }
    let (prog, rest) = args.command.split_first().context("no command given")?;
    let status = std::process::Command::new(prog)
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {}", prog.to_string_lossy()))?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => crate::exit::ERROR,
    };
    Ok(Exit::Child(code))
}
