//! `vmledger crosscheck PATH...`: judge exported ledgers (files, or directories searched
//! recursively) with the service's detection rules and print the verdicts: a table, or
//! with `--json` one `vmledger-crosscheck/v1` document; `--html FILE` also writes the
//! timeline page. Exit 1 when a violation or an invalid ledger is found (even if some files
//! could not be read), else 2 when some file could not be read (the rest is still judged
//! and reported) or no export bundle was found at all, else 0.

use std::fs::File;
use std::io::{BufWriter, ErrorKind};
use std::path::PathBuf;

use anyhow::Context as _;

use super::Ctx;
use crate::crosscheck::html::HtmlSink;
use crate::crosscheck::report::{JsonSink, Tee, TextSink};
use crate::crosscheck::{self, CrosscheckError, Limits, Options, Sink, policy};
use crate::exit::{self, Exit};
use crate::rules::Policy;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Export bundles (vmledger-export/v1), or directories searched recursively for *.json
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also write a self-contained HTML timeline report (inline SVG, no scripts) to this file
    #[arg(long, value_name = "REPORT.html")]
    pub html: Option<PathBuf>,
    /// Policy file (vmledger-crosscheck-policy/v1): thresholds and declared HA/DR windows
    /// [default thresholds: the [server] settings of the config file]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Check every entry's signature (default: branch tips, fork entries and cited evidence)
    #[arg(long)]
    pub full: bool,
    /// List clean instances in the table too
    #[arg(long)]
    pub all: bool,
    /// Refuse bundle files larger than this many MiB (unread, reported)
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_bundle_mib: u64,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    let base = crate::service::Settings::from_section(&cfg.server).thresholds;
    let policy = match &a.policy {
        Some(p) => policy::load(p, base)?,
        None => Policy {
            thresholds: base,
            windows: Vec::new(),
        },
    };
    let opts = Options {
        policy,
        full: a.full,
        limits: Limits {
            max_bundle_bytes: a.max_bundle_mib.saturating_mul(1 << 20),
        },
        timelines: a.html.is_some(),
    };
    let mut html = match &a.html {
        Some(p) => Some(HtmlSink::new(BufWriter::new(
            File::create(p)
                .with_context(|| format!("cannot create the HTML report {}", p.display()))?,
        ))),
        None => None,
    };
    let out = BufWriter::new(std::io::stdout().lock());
    let mut main: Box<dyn Sink> = if ctx.out.json {
        Box::new(JsonSink::new(out))
    } else {
        Box::new(TextSink::new(out, a.all))
    };
    let mut sinks: Vec<&mut dyn Sink> = vec![main.as_mut()];
    if let Some(h) = html.as_mut() {
        sinks.push(h);
    }
    let summary = match crosscheck::run(&a.paths, &opts, &mut Tee(sinks)) {
        Ok(s) => s,
        // A closed pipe (`vmledger crosscheck DIR | head`) is not an error.
        Err(CrosscheckError::Write(e)) if e.kind() == ErrorKind::BrokenPipe => return Ok(Exit::Ok),
        Err(e) => return Err(e.into()),
    };
    if summary.nothing_found() {
        ctx.out.note(format!(
            "vmledger: no export bundles were found in {}",
            a.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    } else if summary.unreadable > 0 {
        ctx.out.note(format!(
            "vmledger: {} file(s) could not be read as export bundles (listed in the report); the rest was judged",
            summary.unreadable
        ));
    }
    Ok(match summary.exit_code {
        0 => Exit::Ok,
        1 => Exit::Negative,
        // The report is complete on stdout; only the status says "error".
        _ => Exit::Child(exit::ERROR),
    })
}
