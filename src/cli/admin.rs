//! `vmledger admin ...`: the vendor's operations on the service database (SLA records,
//! inspection, overrides, air-gapped receipts, alerts). They act on the database
//! directly and a running service sees them at once.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::Ctx;
use super::service::DbArg;
use crate::exit::Exit;
use crate::fsutil;
use crate::service::admin::{self, SlaInput};
use crate::service::alerts::{self, SmtpMailer};
use crate::service::{self, Settings, SqliteStore};
use crate::time::{Clock, SystemClock};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// SLA records
    #[command(subcommand)]
    Sla(SlaCommand),
    /// History, branches, verdicts (with evidence) and overrides of a serial, an instance or a verdict
    Show {
        /// A serial, an instance id (32 hex) or a verdict id (INSTANCE/N, SERIAL/sN)
        what: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Make the branch holding entry HASH the instance's primary branch
    Primary {
        instance: String,
        /// An entry hash on that branch (or a prefix of >= 8 digits of its first or tip entry)
        #[arg(long, value_name = "HASH")]
        branch: String,
        /// Why (recorded with the override)
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Lift an instance's disabled state, or approve an activation beyond the serial's limit
    Reinstate {
        instance: String,
        /// Why (recorded with the override)
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Declare an HA/DR pair or DR test: the instance may run as several copies until DATE
    AllowConcurrent {
        instance: String,
        /// Last day (UTC) of the window, YYYY-MM-DD
        #[arg(long, value_name = "DATE")]
        until: String,
        /// Why (recorded with the override)
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Answer an air-gapped site's check-in request file with a signed receipt file
    OfflineReceipt {
        /// The request file the appliance wrote (`vmledger checkin --request-file`)
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// Where to write the receipt
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Send the SLA expiry e-mails that are due (as the daily job in `serve` does)
    Alerts {
        /// Only list what would be sent
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SlaCommand {
    /// Create a serial (with a new activation code) or update its SLA end and contact
    Set {
        serial: String,
        /// Last day covered by the SLA (UTC), YYYY-MM-DD
        #[arg(long, value_name = "DATE")]
        ends: String,
        /// Who gets the SLA expiry e-mails
        #[arg(long, value_name = "EMAIL")]
        contact: Option<String>,
        /// Use this activation code instead of a generated one
        #[arg(long, value_name = "CODE")]
        activation_code: Option<String>,
        #[command(flatten)]
        db: DbArg,
    },
    /// Create or update many serials from a CSV file (header: serial,ends,contact[,activation_code])
    Import {
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
}

fn open(ctx: &Ctx, db: &DbArg) -> anyhow::Result<(SqliteStore, PathBuf, crate::config::Config)> {
    let (path, cfg) = db.resolve(ctx)?;
    Ok((SqliteStore::open(&path)?, path, cfg))
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    let clock = SystemClock;
    let now = clock.now();
    match cmd {
        Command::Sla(SlaCommand::Set {
            serial,
            ends,
            contact,
            activation_code,
            db,
        }) => {
            let (mut store, _, _) = open(ctx, &db)?;
            let input = SlaInput {
                serial,
                ends: admin::parse_date(&ends, "--ends")?,
                contact,
                activation_code,
            };
            let rec = admin::sla_set(&mut store, &input, now)?;
            let doc = json!({"format": "vmledger-admin-sla/v1", "serial": rec.serial,
                             "activation_code": rec.activation_code, "ends": rec.ends,
                             "contact": rec.contact});
            ctx.out.emit(&doc, || {
                format!(
                    "serial {}: SLA ends {}, activation code {}{}",
                    rec.serial,
                    rec.ends,
                    rec.activation_code,
                    rec.contact
                        .as_ref()
                        .map(|c| format!(", contact {c}"))
                        .unwrap_or_default()
                )
            })?;
        }
        Command::Sla(SlaCommand::Import { file, db }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let inputs = admin::parse_sla_csv(&text, &file.display().to_string())?;
            let (mut store, _, _) = open(ctx, &db)?;
            let recs = admin::sla_import(&mut store, &inputs, now)?;
            let rows: Vec<Value> = recs
                .iter()
                .map(|r| {
                    json!({"serial": r.serial, "activation_code": r.activation_code,
                                "ends": r.ends, "contact": r.contact})
                })
                .collect();
            let doc = json!({"format": "vmledger-admin-sla-import/v1", "serials": rows});
            ctx.out.emit(&doc, || {
                recs.iter()
                    .map(|r| format!("{},{},{}\n", r.serial, r.ends, r.activation_code))
                    .collect()
            })?;
        }
        Command::Show { what, db } => {
            let (mut store, _, _) = open(ctx, &db)?;
            let doc = admin::show(&mut store, &what, now)?;
            ctx.out.emit(&doc, || show_text(&doc))?;
        }
        Command::Primary {
            instance,
            branch,
            reason,
            db,
        } => {
            let (mut store, _, _) = open(ctx, &db)?;
            let doc = admin::primary(&mut store, &instance, &branch, &reason, now)?;
            ctx.out.emit(&doc, || {
                format!(
                    "instance {instance}: branch {} is now primary",
                    doc["branch"]
                )
            })?;
        }
        Command::Reinstate {
            instance,
            reason,
            db,
        } => {
            let (mut store, _, _) = open(ctx, &db)?;
            let doc = admin::reinstate(&mut store, &instance, &reason, now)?;
            ctx.out.emit(&doc, || {
                if doc["kind"] == "approve" {
                    format!("instance {instance}: activation approved")
                } else {
                    format!(
                        "instance {instance}: reinstated (branches {})",
                        doc["branches"]
                    )
                }
            })?;
        }
        Command::AllowConcurrent {
            instance,
            until,
            reason,
            db,
        } => {
            let (mut store, _, _) = open(ctx, &db)?;
            let until = admin::parse_date(&until, "--until")?;
            let w = admin::allow_concurrent(&mut store, &instance, until, &reason, now)?;
            let doc = json!({"format": "vmledger-admin-override/v1", "kind": "allow_concurrent",
                             "instance": w.instance, "from": crate::time::format_at(w.from),
                             "until": crate::time::format_at(w.until), "reason": w.reason});
            ctx.out.emit(&doc, || {
                format!(
                    "instance {}: concurrent copies allowed until {}",
                    w.instance,
                    crate::time::format_at(w.until)
                )
            })?;
        }
        Command::OfflineReceipt {
            request,
            output,
            db,
        } => {
            let bytes = std::fs::read(&request)
                .with_context(|| format!("cannot read request file {}", request.display()))?;
            let (mut store, path, cfg) = open(ctx, &db)?;
            let mut ring = service::keyring::KeyRing::new(&path);
            let settings = Settings::from_section(&cfg.server);
            let receipt = admin::offline_receipt(&mut store, &mut ring, &settings, &bytes, now)
                .with_context(|| format!("request file {}", request.display()))?;
            let mut text = serde_json::to_vec_pretty(&receipt)?;
            text.push(b'\n');
            fsutil::write_output(&output, &text)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let doc = json!({"format": "vmledger-admin-offline-receipt/v1",
                             "output": output, "status": receipt.body.status,
                             "acked_seq": receipt.body.acked_seq,
                             "next_checkin_before": receipt.body.next_checkin_before});
            ctx.out.emit(&doc, || {
                format!(
                    "receipt written to {} (status {:?}, acknowledged seq {})",
                    output.display(),
                    receipt.body.status,
                    receipt.body.acked_seq
                )
            })?;
        }
        Command::Alerts { dry_run, db } => {
            let (mut store, _, cfg) = open(ctx, &db)?;
            let settings = Settings::from_section(&cfg.server);
            let mailer = match (&settings.smtp, dry_run) {
                (_, true) => None,
                (Some(smtp), false) => Some(SmtpMailer::new(smtp, &settings.alert_from)?),
                (None, false) => anyhow::bail!(
                    "no SMTP server is configured: add a [server.smtp] table (host, port) to the config file, or use --dry-run"
                ),
            };
            let report = alerts::run(
                &mut store,
                &clock,
                &settings,
                mailer.as_ref().map(|m| m as &dyn alerts::Mailer),
            )?;
            let list = |v: &[alerts::Alert]| -> Vec<Value> {
                v.iter()
                    .map(|a| json!({"serial": a.serial, "to": a.to, "ends": a.ends, "stage": a.stage, "subject": a.subject}))
                    .collect()
            };
            let failed: Vec<Value> = report
                .failed
                .iter()
                .map(|(a, e)| json!({"serial": a.serial, "to": a.to, "stage": a.stage, "error": e}))
                .collect();
            if !report.failed.is_empty() {
                let detail: Vec<String> = report
                    .failed
                    .iter()
                    .map(|(a, e)| format!("{} -> {} ({}): {e}", a.serial, a.to, a.stage))
                    .collect();
                anyhow::bail!(
                    "{} of {} alert(s) could not be sent, they are retried on the next run ({} sent): {}",
                    report.failed.len(),
                    report.failed.len() + report.sent.len(),
                    report.sent.len(),
                    detail.join("; ")
                );
            }
            let doc = json!({"format": "vmledger-admin-alerts/v1", "dry_run": dry_run,
                             "due": list(&report.pending), "sent": list(&report.sent), "failed": failed});
            ctx.out.emit(&doc, || {
                let mut s = String::new();
                for a in &report.pending {
                    s.push_str(&format!("due   {} -> {}: {}\n", a.serial, a.to, a.subject));
                }
                for a in &report.sent {
                    s.push_str(&format!("sent  {} -> {}: {}\n", a.serial, a.to, a.subject));
                }
                if s.is_empty() {
                    s.push_str("no alerts due\n");
                }
                s
            })?;
        }
    }
    Ok(Exit::Ok)
}

fn show_text(doc: &Value) -> String {
    let mut s = String::new();
    if let Some(serial) = doc.get("serial") {
        s.push_str(&format!(
            "serial {}  SLA ends {}{}  contact {}  activation code {}\n",
            serial["serial"].as_str().unwrap_or(""),
            serial["ends"].as_str().unwrap_or(""),
            if serial["sla_ended"] == true {
                " (ended)"
            } else {
                ""
            },
            serial["contact"].as_str().unwrap_or("-"),
            serial["activation_code"].as_str().unwrap_or(""),
        ));
    }
    for i in doc["instances"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\ninstance {}  {}{}  {} entries  last check-in {}\n",
            i["instance"].as_str().unwrap_or(""),
            i["status"].as_str().unwrap_or(""),
            i["reason"]
                .as_str()
                .map(|r| format!(" ({r}, verdict {})", i["verdict"].as_str().unwrap_or("")))
                .unwrap_or_default(),
            i["entries"],
            i["last_checkin_at"].as_str().unwrap_or("never"),
        ));
        for b in i["branches"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  branch {:<3} {:<11} seq {}..{}  {} .. {}  tip {}\n",
                b["id"],
                b["state"]["state"].as_str().unwrap_or(""),
                b["first"]["seq"],
                b["tip"]["seq"],
                b["first"]["at"].as_str().unwrap_or(""),
                b["tip"]["at"].as_str().unwrap_or(""),
                b["tip"]["hash"]
                    .as_str()
                    .map(|h| &h[..h.len().min(16)])
                    .unwrap_or(""),
            ));
        }
    }
    for v in doc["verdicts"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\nverdict {}  {}  rule {}  {}{}\n  {}\n",
            v["id"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or(""),
            v["rule"].as_str().unwrap_or(""),
            v["decided_at"].as_str().unwrap_or(""),
            if v["review"] == true { "  REVIEW" } else { "" },
            v["evidence"]["explanation"].as_str().unwrap_or(""),
        ));
    }
    for o in doc["overrides"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "override #{} {} {} by {}: {} {}\n",
            o["id"],
            o["at"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
            o["operator"].as_str().unwrap_or(""),
            o["instance"].as_str().unwrap_or(""),
            o["reason"].as_str().unwrap_or(""),
        ));
    }
    s
}
