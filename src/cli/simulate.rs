//! `vmledger simulate --instances N --days D --seed S --out DIR`: write a simulated
//! fleet's signed exports, the declared windows (`policy.json`) and the ground truth
//! (`labels.json`). `vmledger simulate score --labels L REPORT`: compare a cross-check
//! report with the labels and print the confusion matrices (exit 1 on any disagreement).

use std::path::PathBuf;

use anyhow::Context as _;

use super::Ctx;
use crate::exit::Exit;
use crate::simulate;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// Appliances to simulate (each with its own serial; reinstalls add instances)
    #[arg(long, value_name = "N")]
    pub instances: Option<u32>,
    /// Days of operation (at least 14)
    #[arg(long, value_name = "D")]
    pub days: Option<u32>,
    /// Seed: the same seed gives the same fleet, keys and files
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Output directory (must be new or empty)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// First day of the simulation (RFC 3339)
    #[arg(long, value_name = "TIME", default_value = "2027-01-04T00:00:00Z")]
    pub start: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Compare a cross-check report (`crosscheck --json`) with the simulator's labels
    Score {
        /// The label file written by `simulate` (DIR/labels.json)
        #[arg(long, value_name = "FILE")]
        labels: PathBuf,
        /// The cross-check report (vmledger-crosscheck/v1)
        report: PathBuf,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<Exit> {
    if let Some(Sub::Score { labels, report }) = a.command {
        let s = simulate::score(&labels, &report)?;
        ctx.out.emit(&s, || {
            let mut t = String::new();
            for (name, c) in [("instances", &s.instances), ("serials", &s.serials)] {
                t.push_str(&format!(
                    "{name}: {} violations, {} caught with the right verdict, {} false positives, {} disagreements, {} missing\n{}\n",
                    c.violations, c.violations_caught, c.false_positives, c.mismatches, c.missing, c.table()
                ));
            }
            for (scope, id, scenario, truth, got) in &s.disagreements {
                t.push_str(&format!(
                    "disagreement: {scope} {id} ({scenario}): truth {truth}, verdict {}\n",
                    got.map_or("missing".to_string(), |v| v.to_string())
                ));
            }
            t
        })?;
        return Ok(Exit::from_bool(s.perfect()));
    }
    let (Some(n), Some(days), Some(out)) = (a.instances, a.days, a.out) else {
        anyhow::bail!(
            "simulate needs --instances N, --days D and --out DIR (or the `score` subcommand)"
        );
    };
    let start = crate::time::parse_rfc3339(&a.start)
        .map(crate::time::truncate_ms)
        .with_context(|| format!("--start `{}` is not an RFC 3339 time", a.start))?;
    let opts = simulate::Options {
        appliances: n,
        days,
        seed: a.seed,
        start,
        out: out.clone(),
    };
    let labels = simulate::run(&opts)?;
    let flagged = labels
        .instances
        .iter()
        .filter(|i| i.expected.flagged())
        .count();
    let doc = serde_json::json!({
        "format": "vmledger-simulate/v1",
        "out": out.display().to_string(),
        "labels": out.join("labels.json").display().to_string(),
        "policy": out.join("policy.json").display().to_string(),
        "appliances": labels.appliances,
        "instances": labels.instances.len(),
        "files": labels.files,
        "entries": labels.entries,
        "scenarios": labels.scenarios,
        "violations": flagged,
    });
    ctx.out.emit(&doc, || {
        format!(
            "simulated {} appliances ({} instances) over {} days: {} files, {} entries, {} instances with a violation\nexports: {}\nlabels:  {}\npolicy:  {}\ncheck:   vmledger crosscheck {} --policy {} --json > report.json && vmledger simulate score --labels {} report.json",
            labels.appliances,
            labels.instances.len(),
            labels.days,
            labels.files,
            labels.entries,
            flagged,
            out.join("exports").display(),
            out.join("labels.json").display(),
            out.join("policy.json").display(),
            out.join("exports").display(),
            out.join("policy.json").display(),
            out.join("labels.json").display(),
        )
    })?;
    Ok(Exit::Ok)
}
