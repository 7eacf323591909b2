//! SLA expiry alerts: each serial's contact is e-mailed `alert_days` (default 30, 7, 1)
//! before its SLA ends and once when it has ended. Each alert is sent once per (serial,
//! SLA end, stage) and recorded only after the SMTP server accepted it, so a failed send
//! is retried on the next run and a restart never sends twice. Extending an SLA (a new
//! end date) starts the sequence afresh.
//!
//! Mail goes over SMTP with `lettre` (STARTTLS and authentication when configured).
//! The daily job runs inside `vmledger serve`; `vmledger admin alerts [--dry-run]` runs it
//! by hand.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use serde::Serialize;

use super::config::{Settings, SmtpSection};
use super::http::Metrics;
use super::store::{SerialRecord, Store};
use super::{ServiceError, SqliteStore};
use crate::license;
use crate::time::{self, Clock};

/// One alert that is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub serial: String,
    pub to: String,
    pub ends: String,
    /// `30`, `7`, `1` (days before the end) or `ended`.
    pub stage: String,
    pub subject: String,
    pub body: String,
}

/// Sends one e-mail.
pub trait Mailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String>;
}

/// A mailer over SMTP.
pub struct SmtpMailer {
    transport: SmtpTransport,
    from: Mailbox,
}

impl SmtpMailer {
    /// Build the transport for `[server.smtp]`.
    pub fn new(smtp: &SmtpSection, from: &str) -> Result<SmtpMailer, ServiceError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| ServiceError::Invalid(format!("[server] alert_from `{from}`: {e}")))?;
        let mut b = SmtpTransport::builder_dangerous(smtp.host.clone())
            .port(smtp.port.unwrap_or(if smtp.starttls { 587 } else { 25 }))
            .timeout(Some(Duration::from_secs(smtp.timeout_secs.unwrap_or(30))));
        if smtp.starttls {
            let mut tls = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.tls_ca {
                let pem = std::fs::read(ca).map_err(|source| ServiceError::Io {
                    what: format!("[server.smtp] tls_ca {}", ca.display()),
                    source,
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    ServiceError::Invalid(format!("[server.smtp] tls_ca {}: {e}", ca.display()))
                })?;
                tls = tls.add_root_certificate(cert);
            }
            let params = tls
                .build_rustls()
                .map_err(|e| ServiceError::Invalid(format!("[server.smtp] TLS: {e}")))?;
            b = b.tls(Tls::Required(params));
        }
        if let (Some(u), Some(p)) = (&smtp.username, &smtp.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(SmtpMailer {
            transport: b.build(),
            from,
        })
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("bad recipient `{to}`: {e}"))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| e.to_string())?;
        self.transport
            .send(&msg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Whole days left (rounded up) at `now` of an SLA whose last day is `ends`: counted to
/// 00:00:00Z of the next day, exactly as the appliance's banner counts them
/// ([`crate::license::days_until`]); `None` once it has ended.
pub fn days_left(ends: NaiveDate, now: DateTime<Utc>) -> Option<u64> {
    let end = license::end_of_date(ends)?;
    (now < end).then(|| license::days_until(now, end))
}

/// The alert stage due at `now` for an SLA whose last day is `ends`: `ended` once it has
/// ended, else the smallest of `alert_days` that is at least the days left. With the
/// default `alert_days` and `warn_days` (30), the 30-day e-mail and the appliance's
/// `sla_warning` banner start at the same instant.
pub fn stage(ends: NaiveDate, now: DateTime<Utc>, alert_days: &[u32]) -> Option<String> {
    let Some(left) = days_left(ends, now) else {
        return Some("ended".into());
    };
    alert_days
        .iter()
        .filter(|d| left <= u64::from(**d))
        .min()
        .map(|d| d.to_string())
}

fn alert_for(rec: &SerialRecord, to: &str, stage: &str, now: DateTime<Utc>) -> Alert {
    let (subject, body) = if stage == "ended" {
        (
            format!("SLA for serial {} has ended", rec.serial),
            format!(
                "The support contract (SLA) of appliance serial {} ended on {} (it covered that whole day, UTC).\n\n\
                 The appliance now counts down to being permanently disabled. Renew the SLA to keep it licensed; once renewed, its next daily check-in clears the countdown.\n",
                rec.serial, rec.ends
            ),
        )
    } else {
        let left = license::parse_date(&rec.ends)
            .and_then(|e| days_left(e, now))
            .unwrap_or(0);
        (
            format!(
                "SLA for serial {} ends on {} ({} day{} left)",
                rec.serial,
                rec.ends,
                left,
                if left == 1 { "" } else { "s" }
            ),
            format!(
                "The support contract (SLA) of appliance serial {} ends on {} (it covers that whole day, UTC), in {} day{}.\n\n\
                 When it ends, the appliance starts a countdown after which it is permanently disabled. Renew the SLA before {} to avoid any interruption.\n",
                rec.serial,
                rec.ends,
                left,
                if left == 1 { "" } else { "s" },
                rec.ends
            ),
        )
    };
    Alert {
        serial: rec.serial.clone(),
        to: to.to_string(),
        ends: rec.ends.clone(),
        stage: stage.to_string(),
        subject,
        body,
    }
}

/// The alerts due now and not yet sent.
pub fn due(
    store: &mut dyn Store,
    now: DateTime<Utc>,
    alert_days: &[u32],
) -> Result<Vec<Alert>, ServiceError> {
    let mut tx = store.read()?;
    let mut out = Vec::new();
    for rec in tx.serials()? {
        let Some(to) = rec.contact.clone() else {
            continue;
        };
        let Some(ends) = license::parse_date(&rec.ends) else {
            continue;
        };
        let Some(st) = stage(ends, now, alert_days) else {
            continue;
        };
        if !tx.alert_sent(&rec.serial, &rec.ends, &st)? {
            out.push(alert_for(&rec, &to, &st, now));
        }
    }
    Ok(out)
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub sent: Vec<Alert>,
    /// Alerts that failed, with the SMTP error; retried on the next run.
    pub failed: Vec<(Alert, String)>,
    /// Alerts that would be sent (dry run).
    pub pending: Vec<Alert>,
}

/// Send the alerts that are due (or, with no mailer, only list them).
pub fn run(
    store: &mut dyn Store,
    clock: &dyn Clock,
    settings: &Settings,
    mailer: Option<&dyn Mailer>,
) -> Result<Report, ServiceError> {
    let now = clock.now();
    let alerts = due(store, now, &settings.alert_days)?;
    let mut report = Report {
        dry_run: mailer.is_none(),
        ..Report::default()
    };
    let Some(mailer) = mailer else {
        report.pending = alerts;
        return Ok(report);
    };
    for a in alerts {
        match mailer.send(&a.to, &a.subject, &a.body) {
            Ok(()) => {
                // Record each alert as soon as it is accepted, in its own transaction.
                let mut tx = store.write()?;
                tx.record_alert(&a.serial, &a.ends, &a.stage, &a.to, &time::format_at(now))?;
                tx.commit()?;
                report.sent.push(a);
            }
            Err(e) => report.failed.push((a, e)),
        }
    }
    Ok(report)
}

/// The in-process daily job: prune old nonces, send the alerts that are due.
pub fn daily(
    db: &Path,
    clock: &dyn Clock,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Report, ServiceError> {
    let mut store = SqliteStore::open(db)?;
    {
        let mut tx = store.write()?;
        tx.prune_nonces(&time::format_at(clock.now() - settings.nonce_retention))?;
        tx.commit()?;
    }
    let Some(smtp) = &settings.smtp else {
        return Ok(Report::default());
    };
    let mailer = SmtpMailer::new(smtp, &settings.alert_from)?;
    let report = run(&mut store, clock, settings, Some(&mailer))?;
    metrics.alerts_sent.inc_by(report.sent.len() as u64);
    metrics.alerts_failed.inc_by(report.failed.len() as u64);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        time::parse_at(s).unwrap()
    }

    #[test]
    fn stages_count_days_to_the_end_of_the_last_day() {
        let days = [30, 7, 1];
        for (ends, now, want) in [
            ("2027-03-31", "2027-01-01T00:00:00.000Z", None),
            // An SLA ending on 2027-01-31 covers that day: 31 days are left on
            // 2027-01-01, 30 from 2027-01-02T00:00Z (when the appliance's banner warns).
            ("2027-01-31", "2027-01-01T23:59:59.999Z", None),
            ("2027-01-31", "2027-01-02T00:00:00.000Z", Some("30")),
            ("2027-01-07", "2027-01-01T00:00:00.000Z", Some("7")),
            ("2027-01-05", "2027-01-01T12:00:00.000Z", Some("7")),
            // The last day: 1 day left, all day long.
            ("2027-01-01", "2027-01-01T00:00:00.000Z", Some("1")),
            ("2027-01-01", "2027-01-01T23:59:59.999Z", Some("1")),
            // Ended from 00:00:00.000Z of the next day.
            ("2026-12-31", "2027-01-01T00:00:00.000Z", Some("ended")),
        ] {
            assert_eq!(
                stage(d(ends), t(now), &days).as_deref(),
                want,
                "{ends} at {now}"
            );
        }
        assert_eq!(
            days_left(d("2027-01-01"), t("2027-01-01T23:59:59.999Z")),
            Some(1)
        );
        assert_eq!(
            days_left(d("2026-12-31"), t("2027-01-01T00:00:00.000Z")),
            None
        );
    }

    #[test]
    fn service_and_agent_agree_on_the_end_instant() {
        let ends = d("2030-02-01");
        for (now, ended) in [
            ("2030-02-01T23:59:59.999Z", false),
            ("2030-02-02T00:00:00.000Z", true),
        ] {
            assert_eq!(
                super::super::checkin::sla_ended("2030-02-01", t(now)),
                ended
            );
            assert_eq!(
                stage(ends, t(now), &[30]).as_deref() == Some("ended"),
                ended
            );
            assert_eq!(
                license::end_of_date(ends).is_some_and(|e| t(now) >= e),
                ended
            );
        }
    }
}
