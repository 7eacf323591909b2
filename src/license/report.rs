//! What an observation means to people: the one-line banner `message` for the appliance's
//! web interface and the license members of the `vmledger-status/v1` document
//! (`docs/formats/status.md`). Pure: built from an [`Observation`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::observe::Observation;
use super::{CountdownKind, State, why};
use crate::protocol::reason;
use crate::time;

/// `2026-12-12 10:00 UTC`: how deadlines read in messages.
pub fn human_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn days(n: Option<u64>) -> String {
    match n {
        Some(1) => "1 day left".into(),
        Some(n) => format!("{n} days left"),
        None => "no time left".into(),
    }
}

/// One line for the appliance's banner: what holds, since when or until when, what to do.
pub fn message(obs: &Observation) -> String {
    let e = &obs.evaluation;
    let serial = obs.facts.facts.serial.as_deref().unwrap_or("(none)");
    let sla_date = e
        .sla_ends
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "an earlier date".into());
    let r = e.reason.as_deref().unwrap_or("");
    let last_checkin = obs
        .facts
        .facts
        .lease
        .as_ref()
        .map(|l| human_time(l.checked_in_at));
    match e.state {
        State::Active => match e.sla_ends {
            Some(d) => format!(
                "License active (serial {serial}, support contract until {}). Next check-in due by {}.",
                d.format("%Y-%m-%d"),
                human_time(e.checkin_due_at)
            ),
            None => format!(
                "License active (serial {serial}). Next check-in due by {}.",
                human_time(e.checkin_due_at)
            ),
        },
        State::SlaWarning => format!(
            "The support contract (SLA) for serial {serial} ends on {sla_date} ({}). Renew it to keep this appliance licensed.",
            days(e.days_left)
        ),
        State::Unregistered if r == why::NO_SERIAL => format!(
            "This appliance has no serial number yet: register it with `vmledger init --serial SERIAL` and check in by {}.",
            human_time(e.checkin_due_at)
        ),
        State::Unregistered if r == why::UNKNOWN_SERIAL => format!(
            "The licensing service does not know serial {serial}: check the serial or ask the vendor to register it before {}.",
            human_time(e.checkin_due_at)
        ),
        State::Unregistered => format!(
            "Not yet activated: the first license check-in is due by {}.",
            human_time(e.checkin_due_at)
        ),
        State::CheckinOverdue => {
            let what = match r {
                why::NO_SERIAL => {
                    "This appliance has no serial number and has never checked in".to_string()
                }
                why::NEVER_CHECKED_IN | why::UNKNOWN_SERIAL => {
                    "This appliance has never completed a license check-in".to_string()
                }
                _ => format!(
                    "License check-in overdue since {}",
                    human_time(e.checkin_due_at)
                ),
            };
            format!(
                "{what}: configuration will be locked on {} ({}) unless a check-in succeeds. Check the connection to the licensing service, or use `vmledger checkin --request-file` on an air-gapped site.",
                human_time(e.lock_at),
                days(e.days_left)
            )
        }
        State::Locked => {
            let since = last_checkin
                .map(|t| format!("no successful license check-in since {t}"))
                .unwrap_or_else(|| "this appliance has never completed a license check-in".into());
            let mut m = format!(
                "Configuration is locked: {since} (it was due by {}). The appliance keeps running. Restore the connection to the licensing service and run `vmledger checkin` to unlock.",
                human_time(e.checkin_due_at)
            );
            if let Some(c) = e.countdown.filter(|c| c.kind == CountdownKind::Sla) {
                m.push_str(&format!(
                    " The support contract ended on {sla_date}: the appliance will be permanently disabled on {} unless it is renewed.",
                    human_time(c.ends_at)
                ));
            }
            m
        }
        State::SlaExpired => format!(
            "The support contract (SLA) for serial {serial} ended on {sla_date}: this appliance will be permanently disabled on {} ({}) unless the SLA is renewed.",
            e.disable_at.map(human_time).unwrap_or_default(),
            days(e.days_left)
        ),
        State::Disabled => {
            let reference = e
                .verdict
                .as_deref()
                .map(|v| format!(" (evidence reference {v})"))
                .unwrap_or_default();
            match r {
                reason::SLA_EXPIRED => format!(
                    "This appliance is permanently disabled: its support contract (SLA) ended on {sla_date}. Contact the vendor about serial {serial}."
                ),
                reason::CONCURRENT_DUPLICATE => format!(
                    "This appliance is disabled: the licensing service found another copy of it running at the same time{reference}. Contact vendor support with serial {serial} and this reference."
                ),
                reason::SWITCHING => format!(
                    "This appliance is disabled: the licensing service found it switching back and forth between copies of its image{reference}. Contact vendor support with serial {serial} and this reference."
                ),
                other => format!(
                    "This appliance is disabled by the licensing service ({other}){reference}. Contact vendor support with serial {serial}."
                ),
            }
        }
    }
}

fn at(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| json!(time::format_at(t))).unwrap_or(Value::Null)
}

/// The license members of `vmledger-status/v1`.
pub fn status_members(obs: &Observation) -> Map<String, Value> {
    let e = &obs.evaluation;
    let f = &obs.facts;
    let lease = f.facts.lease.as_ref();
    let failure = f.failure.as_ref().map(|x| {
        json!({
            "at": x.body.at,
            "reason": x.body.data.get("reason").cloned().unwrap_or(Value::Null),
            "detail": x.body.data.get("detail").cloned().unwrap_or(Value::Null),
        })
    });
    let mut m = Map::new();
    m.insert("state".into(), json!(e.state.as_str()));
    m.insert("reason".into(), json!(e.reason));
    m.insert("message".into(), json!(message(obs)));
    m.insert(
        "countdown".into(),
        json!(e.countdown.map(|c| c.kind.as_str())),
    );
    m.insert(
        "countdown_started_at".into(),
        at(e.countdown.map(|c| c.started_at)),
    );
    m.insert(
        "countdown_ends_at".into(),
        at(e.countdown.map(|c| c.ends_at)),
    );
    m.insert("days_left".into(), json!(e.days_left));
    m.insert("checkin_due_at".into(), at(Some(e.checkin_due_at)));
    m.insert("lock_at".into(), at(Some(e.lock_at)));
    m.insert(
        "sla_ends".into(),
        json!(e.sla_ends.map(|d| d.format("%Y-%m-%d").to_string())),
    );
    m.insert("sla_ends_at".into(), at(e.sla_end_at));
    m.insert("disable_at".into(), at(e.disable_at));
    m.insert("last_checkin_at".into(), at(lease.map(|l| l.checked_in_at)));
    m.insert(
        "last_receipt".into(),
        json!(lease.map(|l| l.receipt.clone())),
    );
    m.insert("verdict".into(), json!(e.verdict));
    m.insert(
        "last_checkin_failure".into(),
        failure.unwrap_or(Value::Null),
    );
    m.insert("blocked_since".into(), json!(obs.blocked_since));
    m.insert(
        "trusted_time".into(),
        json!({
            "now": time::format_at(obs.time.now),
            "source": obs.time.source.as_str(),
            "system_clock": time::format_at(obs.time.system),
        }),
    );
    m
}
