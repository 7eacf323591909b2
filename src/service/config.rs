//! The service's settings: the `[server]` table of the config file (read by
//! `crate::config`) and the resolved [`Settings`] the check-in path uses.

use std::path::PathBuf;

use chrono::Duration;
use serde::Deserialize;

use crate::rules::Thresholds;

/// `[server]` in the config file. Every key is optional; defaults in [`Settings`].
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Service database (overridden by `VMLEDGER_DB` and `--db`).
    pub db: Option<PathBuf>,
    /// Listen address of `vmledger serve` (overridden by `--listen`).
    pub listen: Option<String>,
    /// Hours until the next check-in is due (receipts' `next_checkin_before`).
    pub checkin_interval_hours: Option<u32>,
    /// Largest accepted request body.
    pub max_body_bytes: Option<u64>,
    /// Bound on reading and answering one request.
    pub request_timeout_secs: Option<u64>,
    /// Per-instance rate limit: sustained requests per minute, and burst.
    pub rate_per_minute: Option<u32>,
    pub rate_burst: Option<u32>,
    /// New instances activated per serial within `activation_window_days` before an
    /// operator must approve.
    pub activation_limit: Option<u32>,
    pub activation_window_days: Option<u32>,
    /// Rules: clock tolerance, restores before review and their window.
    pub clock_tolerance_minutes: Option<u32>,
    pub restore_warn: Option<u32>,
    pub restore_window_days: Option<u32>,
    /// Days before an SLA's end that the contact is e-mailed (default 30, 7, 1).
    pub alert_days: Option<Vec<u32>>,
    /// Sender of alert e-mails.
    pub alert_from: Option<String>,
    /// Hours between runs of the in-process alert job (default 24).
    pub alert_interval_hours: Option<u32>,
    #[serde(default)]
    pub smtp: Option<SmtpSection>,
}

/// `[server.smtp]`: where SLA alerts are sent.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    pub port: Option<u16>,
    /// Upgrade the connection with STARTTLS (required when true).
    #[serde(default)]
    pub starttls: bool,
    /// Extra CA certificate (PEM) trusted for STARTTLS, e.g. a private relay's.
    pub tls_ca: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bound on one SMTP exchange, seconds (default 30).
    pub timeout_secs: Option<u64>,
}

/// Resolved check-in settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub thresholds: Thresholds,
    pub checkin_interval: Duration,
    pub activation_limit: u32,
    pub activation_window: Duration,
    pub max_body_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    pub alert_days: Vec<u32>,
    pub alert_from: String,
    pub alert_interval: std::time::Duration,
    pub smtp: Option<SmtpSection>,
    /// How long used nonces are remembered.
    pub nonce_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_section(&ServerSection::default())
    }
}

impl Settings {
    /// Apply defaults to what the config file says.
    pub fn from_section(s: &ServerSection) -> Settings {
        let d = Thresholds::default();
        let mut alert_days = s.alert_days.clone().unwrap_or_else(|| vec![30, 7, 1]);
        alert_days.sort_unstable_by(|a, b| b.cmp(a));
        alert_days.dedup();
        Settings {
            thresholds: Thresholds {
                clock_tolerance: s
                    .clock_tolerance_minutes
                    .map_or(d.clock_tolerance, |m| Duration::minutes(m.into())),
                restore_warn: s.restore_warn.unwrap_or(d.restore_warn),
                restore_window: s
                    .restore_window_days
                    .map_or(d.restore_window, |n| Duration::days(n.into())),
            },
            checkin_interval: Duration::hours(s.checkin_interval_hours.unwrap_or(24).into()),
            activation_limit: s.activation_limit.unwrap_or(2),
            activation_window: Duration::days(s.activation_window_days.unwrap_or(30).into()),
            max_body_bytes: s.max_body_bytes.unwrap_or(4 << 20).min(usize::MAX as u64) as usize,
            request_timeout: std::time::Duration::from_secs(
                s.request_timeout_secs.unwrap_or(10).max(1),
            ),
            rate_per_minute: s.rate_per_minute.unwrap_or(600).max(1),
            rate_burst: s.rate_burst.unwrap_or(20).max(1),
            alert_days,
            alert_from: s
                .alert_from
                .clone()
                .unwrap_or_else(|| "vmledger licensing <licensing@localhost>".into()),
            alert_interval: std::time::Duration::from_secs(
                u64::from(s.alert_interval_hours.unwrap_or(24).max(1)) * 3600,
            ),
            smtp: s.smtp.clone(),
            nonce_retention: Duration::days(90),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_table_parses_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[server]\nclock_tolerance_minutes = 15\nalert_days = [7, 30]\nrate_burst = 12\n[server.smtp]\nhost = \"mail\"\nstarttls = true\n",
        )
        .unwrap();
        let f = crate::config::read_file(&p).unwrap();
        let s = Settings::from_section(&f.server);
        assert_eq!(s.thresholds.clock_tolerance, Duration::minutes(15));
        assert_eq!(s.thresholds.restore_warn, 2);
        assert_eq!(s.alert_days, vec![30, 7]);
        assert_eq!(s.rate_burst, 12);
        assert_eq!(s.activation_limit, 2);
        assert!(s.smtp.as_ref().unwrap().starttls);
        std::fs::write(&p, "[server]\nrate_brust = 3\n").unwrap();
        let err = crate::config::read_file(&p).unwrap_err().to_string();
        assert!(err.contains("rate_brust"), "{err}");
    }
}
