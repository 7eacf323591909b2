//! `vmledger checkin [--request-file OUT | --response-file IN]`: check in with the
//! licensing service over the network, or through files on an air-gapped site. The state
//! is observed (transitions recorded) before and after. Requests carry the hardware
//! summary `boot` records (`fingerprint::boot::current_hardware`).
//! Output: `vmledger-checkin/v1` (`schemas/checkin.schema.json`).
//!
//! Exit: 0 when a receipt was accepted (3 or 4 when the instance is still locked or is
//! disabled afterwards), 1 when the check-in failed (recorded as `checkin_failed` with its
//! reason), 2 when it could not be attempted or a response file is malformed.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::Ctx;
use super::status::{Agent, enforcement_exit};
use crate::checkin::{self, Outcome, failure};
use crate::exit::Exit;
use crate::license::report;
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Air-gapped sites: write the signed request to OUT instead of sending it
    #[arg(long, value_name = "OUT", conflicts_with = "response_file")]
    pub request_file: Option<PathBuf>,
    /// Air-gapped sites: apply the receipt the licensing service produced from a request file
    #[arg(long, value_name = "IN")]
    pub response_file: Option<PathBuf>,
    /// End-to-end network timeout in seconds
    #[arg(long, value_name = "SECS", default_value_t = checkin::DEFAULT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let mut agent = Agent::open(ctx)?;
    let service = agent.service()?;
    let clock = SystemClock;
    // Record the transitions due under the current receipt (a lock that began while
    // nothing ran, an SLA that ended) before the check-in changes the facts; a request
    // then carries them to the service. A request file is answered later, if at all: all
    // of them.
    if args.request_file.is_some() {
        agent.observe(&clock)?;
    } else {
        agent.observe_before_checkin(&clock)?;
    }
    // The request carries the hardware summary `boot` records (component digests only).
    let hardware = if args.response_file.is_some() {
        None
    } else {
        match crate::fingerprint::boot::current_hardware(&agent.cfg) {
            Ok(h) => h,
            Err(e) => {
                ctx.out.note(format!(
                    "vmledger: hardware fingerprint not sent with the check-in: {e}"
                ));
                None
            }
        }
    };

    if let Some(out) = &args.request_file {
        let p =
            checkin::write_request(&agent.inst, &agent.ledger, &service, hardware, out, &clock)?;
        let doc = json!({
            "format": "vmledger-checkin/v1",
            "via": "file",
            "request_file": out,
            "nonce": p.request.body.nonce,
            "first_seq": p.first_seq,
            "last_seq": p.last_seq,
            "entries": p.request.body.entries.len(),
        });
        ctx.out.emit(&doc, || {
            format!(
                "wrote check-in request to {} ({} entries); have the licensing service answer it, then run `vmledger checkin --response-file FILE`",
                out.display(),
                p.request.body.entries.len()
            )
        })?;
        return Ok(Exit::Ok);
    }

    let (outcome, source) = match &args.response_file {
        Some(path) => {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| {
                    f.take(checkin::MAX_RESPONSE_BYTES + 1)
                        .read_to_end(&mut bytes)
                })
                .with_context(|| format!("cannot read response file {}", path.display()))?;
            let name = path.display().to_string();
            let o = checkin::apply_response(
                &mut agent.inst,
                &agent.ledger,
                &service,
                &bytes,
                &name,
                &clock,
            )?;
            (o, Some(name))
        }
        None => {
            if service.url.is_none() {
                bail!(checkin::CheckinError::NoUrl);
            }
            let opts = checkin::Options {
                timeout: std::time::Duration::from_secs(args.timeout),
                hardware,
            };
            let o = checkin::checkin(&mut agent.inst, &agent.ledger, &service, &opts, &clock)?;
            (o, None)
        }
    };

    let obs = agent.observe(&clock)?;
    let state = obs.state();
    let message = report::message(&obs);
    let via = if source.is_some() { "file" } else { "network" };
    match outcome {
        Outcome::Accepted { receipt, entry } => {
            let b = &receipt.body;
            let doc = json!({
                "format": "vmledger-checkin/v1",
                "ok": true,
                "via": via,
                "seq": entry.body.seq,
                "receipt": entry.body.data.get("receipt").cloned().unwrap_or(Value::Null),
                "server_time": b.server_time,
                "status": b.status,
                "reason": b.reason,
                "verdict": b.verdict,
                "acked_seq": b.acked_seq,
                "acked_hash": b.acked_hash,
                "next_checkin_before": b.next_checkin_before,
                "sla_ends": b.sla_ends,
                "state": state.as_str(),
                "message": message,
            });
            ctx.out.emit(&doc, || {
                format!(
                    "checked in: receipt accepted (server time {}), next check-in due by {}\nlicense {state}: {message}",
                    b.server_time, b.next_checkin_before
                )
            })?;
            Ok(enforcement_exit(state))
        }
        Outcome::Failed { failure: f, entry } => {
            let detail = f.detail.clone();
            if f.reason == failure::MALFORMED
                && let Some(name) = source
            {
                bail!(
                    "response file {name} is not a usable receipt ({detail}); recorded as checkin_failed at seq {}",
                    entry.body.seq
                );
            }
            ctx.out.note(format!(
                "vmledger: check-in failed ({}): {detail}",
                f.reason
            ));
            let doc = json!({
                "format": "vmledger-checkin/v1",
                "ok": false,
                "via": via,
                "seq": entry.body.seq,
                "reason": f.reason,
                "detail": detail,
                "http_status": f.http_status,
                "service_error": f.service_error.as_ref().map(|e| e.error.clone()),
                "state": state.as_str(),
                "message": message,
            });
            ctx.out
                .emit(&doc, || format!("license {state}: {message}"))?;
            Ok(Exit::Negative)
        }
    }
}
