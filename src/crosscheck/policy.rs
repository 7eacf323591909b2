//! The cross-check's policy file (`vmledger-crosscheck-policy/v1`, schema
//! `schemas/crosscheck-policy.schema.json`): the rules' thresholds (defaults: the
//! service's `[server]` settings) and the operator's declared windows (HA/DR pairs, DR
//! tests), which the service keeps in its database.
//!
//! ```json
//! {"format": "vmledger-crosscheck-policy/v1", "clock_tolerance_minutes": 60,
//!  "restore_warn": 2, "restore_window_days": 30,
//!  "windows": [{"instance": "<32 hex>", "from": "2027-01-01T00:00:00.000Z",
//!               "until": "2027-02-01T00:00:00.000Z", "reason": "HA pair"}]}
//! ```
//! Every member but `format` is optional. Parsing only: no I/O beyond reading the file.

use std::path::Path;

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::report::PolicyEcho;
use crate::rules::{Policy, Thresholds, Window};
use crate::time;

/// The policy file's `format`.
pub const POLICY_FORMAT: &str = "vmledger-crosscheck-policy/v1";

/// A declared window as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDoc {
    pub instance: String,
    pub from: String,
    pub until: String,
    pub reason: String,
}

/// The policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_tolerance_minutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_warn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_window_days: Option<u32>,
    #[serde(default)]
    pub windows: Vec<WindowDoc>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl PolicyDoc {
    /// Apply the file over `base` thresholds.
    pub fn to_policy(&self, base: Thresholds, path: &str) -> Result<Policy, PolicyError> {
        let bad = |message: String| PolicyError::Invalid {
            path: path.to_string(),
            message,
        };
        if self.format != POLICY_FORMAT {
            return Err(bad(format!(
                "`format` is `{}`, expected `{POLICY_FORMAT}`",
                self.format
            )));
        }
        let mut windows = Vec::new();
        for (i, w) in self.windows.iter().enumerate() {
            let t = |field: &str, s: &str| {
                time::parse_rfc3339(s).ok_or_else(|| {
                    bad(format!(
                        "windows[{i}].{field}: `{s}` is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)"
                    ))
                })
            };
            if w.instance.len() != 32
                || !w
                    .instance
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad(format!(
                    "windows[{i}].instance: `{}` is not 32 lowercase hex digits",
                    w.instance
                )));
            }
            let (from, until) = (t("from", &w.from)?, t("until", &w.until)?);
            if until < from {
                return Err(bad(format!("windows[{i}]: `until` is before `from`")));
            }
            windows.push(Window {
                instance: w.instance.clone(),
                from: time::truncate_ms(from),
                until: time::truncate_ms(until),
                reason: w.reason.clone(),
            });
        }
        Ok(Policy {
            thresholds: Thresholds {
                clock_tolerance: self
                    .clock_tolerance_minutes
                    .map_or(base.clock_tolerance, |m| Duration::minutes(m.into())),
                restore_warn: self.restore_warn.unwrap_or(base.restore_warn),
                restore_window: self
                    .restore_window_days
                    .map_or(base.restore_window, |d| Duration::days(d.into())),
            },
            windows,
        })
    }
}

/// Read a policy file (at most 16 MiB) over `base` thresholds.
pub fn load(path: &Path, base: Thresholds) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| PolicyError::Read {
        path: name.clone(),
        source,
    })?;
    if meta.len() > 16 << 20 {
        return Err(PolicyError::Invalid {
            path: name,
            message: format!("the file is {} bytes; a policy file is small", meta.len()),
        });
    }
    let text = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: name.clone(),
        source,
    })?;
    let mut de = serde_json::Deserializer::from_slice(&text);
    let doc: PolicyDoc =
        serde_path_to_error::deserialize(&mut de).map_err(|e| PolicyError::Invalid {
            path: name.clone(),
            message: format!("at `{}`: {}", e.path(), e.inner()),
        })?;
    doc.to_policy(base, &name)
}

/// The policy as echoed in reports.
pub fn echo(p: &Policy) -> PolicyEcho {
    PolicyEcho {
        clock_tolerance_minutes: p.thresholds.clock_tolerance.num_minutes(),
        restore_warn: p.thresholds.restore_warn,
        restore_window_days: p.thresholds.restore_window.num_days(),
        windows: p.windows.clone(),
    }
}
