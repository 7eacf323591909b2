//! The check-in client: builds the signed request (every entry since the service's last
//! acknowledged seq, a fresh nonce), sends it (`POST {url}/v1/checkin` over HTTPS, or plain
//! HTTP on loopback) or writes it to a file for an air-gapped site, verifies the receipt
//! (pinned service key, nonce, instance, serial, freshness, the acknowledged head), stores
//! it and records the outcome in the ledger: a `checkin` entry citing the receipt by hash,
//! or a `checkin_failed` entry with a reason word from [`failure`].
//!
//! Entries are committed in the ledger before they are sent (they are read from it), so a
//! crash after sending can never look like a fork. The URL, the timeout and the pinned
//! keys are inputs ([`Service`], [`Options`]). [`sign_request`] is the one place a
//! check-in request is built and [`decode_reply`] the one place an answer is decoded: the
//! load generator and the tests use them too. When the service answers 409
//! `unknown_prev` or 403 `activation_code_required` (it lost what it knew), [`checkin`]
//! re-sends what it asks for within the same check-in (see `docs/formats/protocol.md`,
//! "Conventions both sides follow").
//!
//! Service key trust: a receipt verifies under the pinned key or a key announced under it
//! (in a receipt the pinned key signed); the request names these (`service_keys`) so the
//! service signs with one of them. The first receipt an announced key signs re-pins the
//! instance to it and drops the predecessor (`service_key_rotated`, see
//! [`Service::resolve`] and `follow_rotation`).
//!
//! Owns the `receipts` and `pending_requests` tables (ledger migration 2). Never prints;
//! never decides the license state (that is [`crate::license`]).

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use serde_json::{Map, Value, json};

use crate::config::ServiceSection;
use crate::identity::{AnnouncedServiceKey, IdentityError, Instance, ServiceSettings};
use crate::keys::{self, PUBLIC_KEY_LEN, SigningKey};
use crate::ledger::{Entry, Ledger, LedgerError};
use crate::license::observe::{self, LicenseError, kind};
use crate::license::{parse_date, trusted};
use crate::protocol::{
    self, CheckinBody, CheckinRequest, RECEIPT_FORMAT, Receipt, ServiceError, Status,
};
use crate::time::{self, Clock};

/// Path of the check-in endpoint under the service URL.
pub const CHECKIN_PATH: &str = "/v1/checkin";
/// `boot` never waits on the network longer than this.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default end-to-end timeout of `vmledger checkin`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest receipt or error body read from the service or a response file.
pub const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// Air-gapped requests kept pending (older ones are forgotten).
pub const MAX_PENDING: u32 = 16;

/// Reason words of `checkin_failed` entries.
pub mod failure {
    /// Connection refused, host not found, network unreachable.
    pub const CONNECT: &str = "connect";
    /// No complete answer within the timeout.
    pub const TIMEOUT: &str = "timeout";
    /// TLS handshake or certificate failure.
    pub const TLS: &str = "tls";
    /// Any other transport failure.
    pub const TRANSPORT: &str = "transport";
    /// The service answered non-2xx (`data.http_status`, and `data.service_error` when it
    /// sent a `vmledger-service-error/v1` body), other than for an unknown serial.
    pub const REFUSED: &str = "refused";
    /// The answer (or response file) is not a well-formed receipt.
    pub const MALFORMED: &str = "malformed";
    /// The receipt names a service key that is not pinned.
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// The receipt's signature does not verify with the pinned key (tampered or forged).
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const WRONG_INSTANCE: &str = "wrong_instance";
    pub const WRONG_SERIAL: &str = "wrong_serial";
    /// The receipt answers another request (its nonce is not this request's).
    pub const NONCE_MISMATCH: &str = "nonce_mismatch";
    /// A response file answering no pending request.
    pub const UNKNOWN_NONCE: &str = "unknown_nonce";
    /// A receipt that was already applied.
    pub const REPLAYED: &str = "replayed";
    /// The receipt's server time is older than the newest receipt held.
    pub const STALE: &str = "stale";
    /// The service's acknowledged head is not an entry of this ledger.
    pub const DIVERGED: &str = "diverged";
    /// The service does not know this serial: it answered 404 `unknown_serial` (or a
    /// valid receipt with status `unknown_serial`).
    pub const UNKNOWN_SERIAL: &str = "unknown_serial";
}

/// Check-in errors: the check-in could not even be attempted or recorded. (A check-in
/// that was attempted and failed is an [`Outcome::Failed`], recorded in the ledger.)
#[derive(Debug, thiserror::Error)]
pub enum CheckinError {
    #[error(
        "no licensing service URL is configured; run `vmledger init --service URL --service-key KEY` or set [service] url in the config file (air-gapped sites: `checkin --request-file`)"
    )]
    NoUrl,
    #[error(
        "no licensing service key is pinned; run `vmledger init --service-key KEY` or set [service] public_key in the config file"
    )]
    NoKey,
    #[error("this instance has no serial number; run `vmledger init --serial SERIAL` first")]
    NoSerial,
    #[error("service key from {origin}: {source}")]
    BadKey {
        origin: String,
        source: keys::KeyError,
    },
    #[error("service URL `{url}`: {message} (use https://, or http:// only on a loopback address)")]
    BadUrl { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot build the check-in request: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A service key the agent trusts: the pinned one, or one announced under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key_id: String,
    pub key: [u8; PUBLIC_KEY_LEN],
}

impl TrustedKey {
    pub fn new(key: [u8; PUBLIC_KEY_LEN]) -> TrustedKey {
        TrustedKey {
            key_id: protocol::key_id(&key),
            key,
        }
    }
}

/// Most announced keys `instance.json` keeps (the oldest are dropped).
pub const MAX_ANNOUNCED_KEYS: usize = 4;
/// Most superseded key ids `instance.json` keeps.
pub const MAX_SUPERSEDED_KEYS: usize = 16;

/// Where and how to check in, resolved from `instance.json` and the config's `[service]`.
#[derive(Clone, Debug, Default)]
pub struct Service {
    pub url: Option<String>,
    /// The pinned key first, then keys announced under it (in receipts it signed). A
    /// receipt signed by an announced key re-pins the instance to that key ([`accept`]).
    pub keys: Vec<TrustedKey>,
    pub activation_code: Option<String>,
}

/// Check a service URL: `https://host...`, or `http://` on a loopback host.
pub fn validate_url(url: &str) -> Result<(), CheckinError> {
    let bad = |m: &str| CheckinError::BadUrl {
        url: url.to_string(),
        message: m.to_string(),
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(bad("plain http is only allowed on loopback")),
        _ => Err(bad("unsupported scheme")),
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Service {
    /// Resolve: the config's `[service]` (`url`, `public_key`) overrides what `init` stored,
    /// except a config key this instance already rotated away from (`superseded_keys`):
    /// that one is followed to the current pin. The trusted keys are the pin, then the
    /// keys announced in receipts the pin signed.
    pub fn resolve(
        stored: Option<&ServiceSettings>,
        config: &ServiceSection,
    ) -> Result<Service, CheckinError> {
        let url = config
            .url
            .clone()
            .or_else(|| stored.and_then(|s| s.url.clone()));
        if let Some(u) = &url {
            validate_url(u)?;
        }
        // The pin: the config's `[service] public_key` (a manual pin, e.g. after a
        // compromise) overrides instance.json's, unless this instance already rotated away
        // from it through a rotation it announced itself.
        let stored_pin = stored.and_then(|s| s.public_key.as_ref());
        let superseded = stored.map(|s| s.superseded_keys.as_slice()).unwrap_or(&[]);
        let decode = |k: &str, origin: &str| {
            keys::decode_public_key(k, "service public key").map_err(|source| {
                CheckinError::BadKey {
                    origin: origin.to_string(),
                    source,
                }
            })
        };
        let from_config = match &config.public_key {
            Some(k) => {
                let key = decode(k, "the config file's [service] public_key")?;
                let followed = stored_pin.is_some() && superseded.contains(&protocol::key_id(&key));
                (!followed).then_some(key)
            }
            None => None,
        };
        let pinned = match (from_config, stored_pin) {
            (Some(k), _) => Some(k),
            (None, Some(k)) => Some(decode(k, "instance.json")?),
            (None, None) => None,
        };
        let mut keys = Vec::new();
        if let Some(key) = pinned {
            let pin = TrustedKey::new(key);
            let stored_pin_id = stored_pin
                .and_then(|k| keys::decode_public_key(k, "service public key").ok())
                .map(|k| protocol::key_id(&k));
            let announced: Vec<TrustedKey> = stored
                .map(|s| s.announced_keys.as_slice())
                .unwrap_or(&[])
                .iter()
                .filter(|a| match &a.announced_by {
                    Some(by) => *by == pin.key_id,
                    None => stored_pin_id.as_deref() == Some(pin.key_id.as_str()),
                })
                .filter_map(|a| {
                    let k = keys::decode_public_key(&a.public_key, "announced key").ok()?;
                    (protocol::key_id(&k) == a.key_id && a.key_id != pin.key_id)
                        .then(|| TrustedKey::new(k))
                })
                .collect();
            keys.push(pin);
            keys.extend(announced);
        }
        Ok(Service {
            url,
            keys,
            activation_code: stored.and_then(|s| s.activation_code.clone()),
        })
    }
}

/// Why a check-in failed, as recorded in its `checkin_failed` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// A word from [`failure`].
    pub reason: &'static str,
    /// One sentence for a human.
    pub detail: String,
    pub http_status: Option<u16>,
    pub service_error: Option<Box<ServiceError>>,
    /// The hash of the receipt involved, when there was a well-formed one.
    pub receipt: Option<String>,
}

impl Failure {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
            http_status: None,
            service_error: None,
            receipt: None,
        }
    }
}

/// How the request travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Network,
    File,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Network => "network",
            Via::File => "file",
        }
    }
}

/// A signed request and the range of entries it carries.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub request: CheckinRequest,
    /// `None` when it carries no entries.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// The service's acknowledged head as the newest `checkin` entry recorded it.
pub fn acknowledged(ledger: &Ledger) -> Result<Option<(u64, String)>, CheckinError> {
    let Some(e) = ledger.latest_of_kind(kind::CHECKIN)? else {
        return Ok(None);
    };
    let seq = e.body.data.get("acked_seq").and_then(Value::as_u64);
    let hash = e.body.data.get("acked_hash").and_then(Value::as_str);
    Ok(seq.zip(hash).map(|(s, h)| (s, h.to_string())))
}

/// Sign a check-in request: the one place a `vmledger-checkin-request/v1` is built (the
/// agent through [`prepare`], the load generator from its in-memory ledgers, and tests).
/// `entries` must be one chain in seq order; a fresh random nonce is drawn here.
/// `service_keys` names the service keys the sender trusts (`None`: the member is left
/// out, as agents older than it did).
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    serial: &str,
    key: &SigningKey,
    instance: &str,
    entries: Vec<Entry>,
    activation_code: Option<String>,
    hardware: Option<Value>,
    service_keys: Option<Vec<String>>,
    sent_at: DateTime<Utc>,
) -> Result<CheckinRequest, CheckinError> {
    let nonce = hex::encode(keys::random_bytes::<16>().map_err(IdentityError::from)?);
    let body = CheckinBody {
        serial: serial.to_string(),
        instance: instance.to_string(),
        public_key: key.public_key_b64(),
        nonce,
        sent_at: time::format_at(sent_at),
        activation_code,
        entries,
        hardware,
        service_keys,
    };
    Ok(CheckinRequest::sign(body, key)?)
}

/// Build and sign a request from an instance's state: every ledger entry with
/// `seq >= from`, sent at trusted time. The activation code goes along until the
/// instance's first successful check-in (the first `checkin` entry), never after.
pub fn prepare(
    inst: &Instance,
    ledger: &Ledger,
    service: &Service,
    from: u64,
    hardware: Option<Value>,
    clock: &dyn Clock,
) -> Result<Prepared, CheckinError> {
    prepare_with(inst, ledger, service, from, false, hardware, clock)
}

/// [`prepare`], sending the activation code also after the first successful check-in
/// when `force_code` (the service answered `activation_code_required`: it lost the
/// instance, e.g. its database was restored from a backup older than the activation).
fn prepare_with(
    inst: &Instance,
    ledger: &Ledger,
    service: &Service,
    from: u64,
    force_code: bool,
    hardware: Option<Value>,
    clock: &dyn Clock,
) -> Result<Prepared, CheckinError> {
    let serial = inst.settings.serial.clone().ok_or(CheckinError::NoSerial)?;
    let lf = observe::read_facts(inst, ledger)?;
    let now = trusted::trusted_now(&lf.time_inputs(clock));
    let entries = ledger.entries_from(from)?;
    let activation_code = if lf.facts.lease.is_none() || force_code {
        service.activation_code.clone()
    } else {
        None
    };
    let first_seq = entries.first().map(|e| e.body.seq);
    let last_seq = entries.last().map(|e| e.body.seq);
    let trusted: Vec<String> = service.keys.iter().map(|k| k.key_id.clone()).collect();
    let request = sign_request(
        &serial,
        &inst.key,
        &inst.settings.instance,
        entries,
        activation_code,
        hardware,
        (!trusted.is_empty()).then_some(trusted),
        now.now,
    )?;
    Ok(Prepared {
        request,
        first_seq,
        last_seq,
    })
}

/// What the service answered.
#[derive(Clone, Debug)]
pub enum Reply {
    /// HTTP 200 with a receipt (not yet verified).
    Receipt(Box<Receipt>),
    /// A non-2xx answer; `error` when its body is a `vmledger-service-error/v1`.
    Refused {
        status: u16,
        error: Option<ServiceError>,
    },
}

fn transport_failure(e: ureq::Error, timeout: Duration) -> Failure {
    use ureq::Error as E;
    match e {
        E::Timeout(t) => Failure::new(
            failure::TIMEOUT,
            format!(
                "no complete answer within {} s ({t})",
                timeout.as_secs_f32()
            ),
        ),
        E::HostNotFound => Failure::new(failure::CONNECT, "host not found"),
        E::ConnectionFailed => Failure::new(failure::CONNECT, "connection failed"),
        // A failed handshake (an unverifiable certificate, ...) reaches us as an I/O error
        // wrapping the rustls error.
        E::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>()) =>
        {
            Failure::new(failure::TLS, io.to_string())
        }
        E::Io(io) => match io.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::new(
                failure::TIMEOUT,
                format!(
                    "no complete answer within {} s ({io})",
                    timeout.as_secs_f32()
                ),
            ),
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::NotConnected
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable => {
                Failure::new(failure::CONNECT, io.to_string())
            }
            _ => Failure::new(failure::TRANSPORT, io.to_string()),
        },
        E::Tls(m) => Failure::new(failure::TLS, m),
        E::Rustls(r) => Failure::new(failure::TLS, r.to_string()),
        E::Pem(p) => Failure::new(failure::TLS, p.to_string()),
        E::BodyExceedsLimit(n) => Failure::new(
            failure::MALFORMED,
            format!("the answer is larger than {n} bytes"),
        ),
        other => Failure::new(failure::TRANSPORT, other.to_string()),
    }
}

/// POST `request` to `{url}/v1/checkin`, waiting at most `timeout` end to end (connect,
/// send, answer and body).
pub fn post(url: &str, request: &CheckinRequest, timeout: Duration) -> Result<Reply, Failure> {
    validate_url(url).map_err(|e| Failure::new(failure::TRANSPORT, e.to_string()))?;
    let endpoint = format!("{}{CHECKIN_PATH}", url.trim_end_matches('/'));
    let loopback = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(is_loopback))
        .unwrap_or(false);
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("vmledger/{}", env!("CARGO_PKG_VERSION")));
    if loopback {
        // A proxy from the environment must never see loopback traffic.
        config = config.proxy(None);
    }
    let agent: ureq::Agent = config.build().into();
    let body = serde_json::to_vec(request)
        .map_err(|e| Failure::new(failure::TRANSPORT, format!("cannot encode: {e}")))?;
    let response = agent
        .post(&endpoint)
        .header("content-type", "application/json")
        .send(&body[..])
        .map_err(|e| transport_failure(e, timeout))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| transport_failure(e, timeout))?;
    decode_reply(status, &bytes, &endpoint)
}

/// Decode the service's answer to a check-in: a 2xx body must be a receipt (not yet
/// verified), anything else is a refusal with its `vmledger-service-error/v1` body when
/// it has one. `from` names the endpoint in messages. (The agent and the load generator
/// both decode answers here.)
pub fn decode_reply(status: u16, body: &[u8], from: &str) -> Result<Reply, Failure> {
    if (200..300).contains(&status) {
        let receipt: Receipt = serde_json::from_slice(body).map_err(|e| {
            let mut f = Failure::new(
                failure::MALFORMED,
                format!("HTTP {status} from {from} is not a receipt: {e}"),
            );
            f.http_status = Some(status);
            f
        })?;
        Ok(Reply::Receipt(Box::new(receipt)))
    } else {
        Ok(Reply::Refused {
            status,
            error: serde_json::from_slice::<ServiceError>(body).ok(),
        })
    }
}

/// What a receipt must match.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub instance: &'a str,
    pub serial: &'a str,
    /// The request's nonce (`None`: checked by the caller against pending requests).
    pub nonce: Option<&'a str>,
    pub keys: &'a [TrustedKey],
    /// The newest server time among receipts already accepted.
    pub newest_server_time: Option<DateTime<Utc>>,
}

fn rejected(reason: &'static str, detail: impl Into<String>, hash: Option<&str>) -> Failure {
    let mut f = Failure::new(reason, detail);
    f.receipt = hash.map(str::to_string);
    f
}

/// Verify a receipt: format, version, signature by a trusted key, instance, serial, nonce,
/// field forms, freshness, and that the acknowledged head is an entry of `ledger`.
pub fn check_receipt(r: &Receipt, expect: &Expect<'_>, ledger: &Ledger) -> Result<(), Failure> {
    let hash = r.hash().ok();
    let h = hash.as_deref();
    let b = &r.body;
    if r.format != RECEIPT_FORMAT || b.v != 1 {
        return Err(rejected(
            failure::MALFORMED,
            format!(
                "not a {RECEIPT_FORMAT} receipt (format `{}`, v {})",
                r.format, b.v
            ),
            h,
        ));
    }
    let Some(key) = expect.keys.iter().find(|k| k.key_id == b.key_id) else {
        let trusted = match expect.keys {
            [] => "none".to_string(),
            [pin] => format!("{} (pinned)", pin.key_id),
            [pin, more @ ..] => format!(
                "{} (pinned), {} (announced)",
                pin.key_id,
                more.iter()
                    .map(|k| k.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(rejected(
            failure::UNKNOWN_KEY,
            format!(
                "signed by service key {}, which this appliance does not trust (it trusts {trusted}); if the vendor retired the pinned key, pin its current key by hand: `vmledger init --service-key KEY` or [service] public_key in the config file",
                b.key_id
            ),
            h,
        ));
    };
    if r.verify(&key.key).is_err() {
        return Err(rejected(
            failure::BAD_SIGNATURE,
            format!(
                "the signature does not verify with pinned service key {}: the receipt was altered or forged",
                key.key_id
            ),
            h,
        ));
    }
    if b.instance != expect.instance {
        return Err(rejected(
            failure::WRONG_INSTANCE,
            format!(
                "issued to instance {}, this is {}",
                b.instance, expect.instance
            ),
            h,
        ));
    }
    if b.serial != expect.serial {
        return Err(rejected(
            failure::WRONG_SERIAL,
            format!("issued for serial {}, this is {}", b.serial, expect.serial),
            h,
        ));
    }
    if let Some(n) = expect.nonce
        && b.nonce != n
    {
        return Err(rejected(
            failure::NONCE_MISMATCH,
            format!("answers nonce {}, the request's was {n}", b.nonce),
            h,
        ));
    }
    if let Some(a) = &b.announce_key {
        // A signed announcement that does not add up is the service's error: refuse the
        // receipt rather than silently trust (or ignore) the key.
        a.key()
            .map_err(|e| rejected(failure::MALFORMED, e.to_string(), h))?;
    }
    let server_time = time::parse_at(&b.server_time)
        .map_err(|e| rejected(failure::MALFORMED, format!("server_time: {e}"), h))?;
    time::parse_at(&b.next_checkin_before)
        .map_err(|e| rejected(failure::MALFORMED, format!("next_checkin_before: {e}"), h))?;
    if let Some(d) = &b.sla_ends
        && parse_date(d).is_none()
    {
        return Err(rejected(
            failure::MALFORMED,
            format!("sla_ends `{d}` is not a YYYY-MM-DD date"),
            h,
        ));
    }
    if let Some(newest) = expect.newest_server_time
        && server_time < newest
    {
        return Err(rejected(
            failure::STALE,
            format!(
                "server time {} is older than the newest receipt held ({})",
                b.server_time,
                time::format_at(newest)
            ),
            h,
        ));
    }
    let ours = ledger.entry(b.acked_seq).ok().flatten();
    if ours.as_ref().map(|e| e.hash.as_str()) != Some(b.acked_hash.as_str()) {
        return Err(rejected(
            failure::DIVERGED,
            format!(
                "the service acknowledges seq {} with hash {}, which is not in this ledger",
                b.acked_seq, b.acked_hash
            ),
            h,
        ));
    }
    Ok(())
}

fn sql(ledger: &Ledger) -> impl Fn(rusqlite::Error) -> CheckinError + '_ {
    move |source| CheckinError::Sqlite {
        path: ledger.path().display().to_string(),
        source,
    }
}

/// Store a receipt whole (idempotent).
pub fn store_receipt(ledger: &Ledger, r: &Receipt) -> Result<String, CheckinError> {
    let hash = r.hash()?;
    let text =
        serde_json::to_string(r).map_err(|e| protocol::ProtocolError::Canonical(e.to_string()))?;
    ledger
        .connection()
        .execute(
            "INSERT OR IGNORE INTO receipts (hash, server_time, receipt) VALUES (?1, ?2, ?3)",
            rusqlite::params![hash, r.body.server_time, text],
        )
        .map_err(sql(ledger))?;
    Ok(hash)
}

/// A stored receipt by hash.
pub fn stored_receipt(ledger: &Ledger, hash: &str) -> Result<Option<Receipt>, CheckinError> {
    let text: Option<String> = ledger
        .connection()
        .query_row(
            "SELECT receipt FROM receipts WHERE hash = ?1",
            [hash],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql(ledger))?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Outcome of a check-in attempt; both variants have been recorded in the ledger.
#[derive(Clone, Debug)]
pub enum Outcome {
    Accepted { receipt: Box<Receipt>, entry: Entry },
    Failed { failure: Failure, entry: Entry },
}

/// Record a failed check-in as `checkin_failed`.
pub fn record_failure(
    inst: &Instance,
    ledger: &Ledger,
    f: &Failure,
    via: Via,
    url: Option<&str>,
    clock: &dyn Clock,
) -> Result<Entry, CheckinError> {
    let mut d = Map::new();
    d.insert("reason".into(), json!(f.reason));
    d.insert("detail".into(), json!(f.detail));
    d.insert("via".into(), json!(via.as_str()));
    if let Some(u) = url {
        d.insert("url".into(), json!(u));
    }
    if let Some(s) = f.http_status {
        d.insert("http_status".into(), json!(s));
    }
    if let Some(e) = &f.service_error {
        d.insert("service_error".into(), json!(e.error));
        d.insert("service_message".into(), json!(e.message));
    }
    if let Some(h) = &f.receipt {
        d.insert("receipt".into(), json!(h));
    }
    let mut out = observe::append_trusted(inst, ledger, kind::CHECKIN_FAILED, d, clock)?;
    Ok(out.pop().expect("append_trusted returns the entry"))
}

fn newest_server_time(ledger: &Ledger) -> Result<Option<DateTime<Utc>>, CheckinError> {
    Ok(ledger
        .latest_of_kind(kind::CHECKIN)?
        .and_then(|e| {
            e.body
                .data
                .get("server_time")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .and_then(|s| time::parse_at(&s).ok()))
}

/// Record a verified receipt: store it, then a `checkin` entry citing it (or, when it says
/// `unknown_serial`, a `checkin_failed`); then follow the service's key rotation
/// ([`follow_rotation`]).
fn accept(
    inst: &mut Instance,
    ledger: &Ledger,
    service: &Service,
    r: Receipt,
    via: Via,
    url: Option<&str>,
    clock: &dyn Clock,
) -> Result<Outcome, CheckinError> {
    let hash = store_receipt(ledger, &r)?;
    let b = &r.body;
    if b.status == Status::UnknownSerial {
        let mut f = Failure::new(
            failure::UNKNOWN_SERIAL,
            format!(
                "the licensing service does not know serial {}; check the serial, or ask the vendor to register it",
                b.serial
            ),
        );
        f.receipt = Some(hash);
        let entry = record_failure(inst, ledger, &f, via, url, clock)?;
        return Ok(Outcome::Failed { failure: f, entry });
    }
    let d = checkin_data(b, &hash, via.as_str());
    let mut out = observe::append_trusted(inst, ledger, kind::CHECKIN, d, clock)?;
    let entry = out.pop().expect("append_trusted returns the entry");
    follow_rotation(inst, ledger, service, &r, &hash, clock)?;
    Ok(Outcome::Accepted {
        receipt: Box::new(r),
        entry,
    })
}

/// The `data` of a `checkin` entry citing the receipt whose body is `b` and hash `hash`.
fn checkin_data(b: &crate::protocol::ReceiptBody, hash: &str, via: &str) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("receipt".into(), json!(hash));
    d.insert("key_id".into(), json!(b.key_id));
    d.insert("server_time".into(), json!(b.server_time));
    d.insert(
        "status".into(),
        serde_json::to_value(b.status).unwrap_or(Value::Null),
    );
    d.insert("reason".into(), json!(b.reason));
    d.insert("verdict".into(), json!(b.verdict));
    d.insert("sla_ends".into(), json!(b.sla_ends));
    d.insert("next_checkin_before".into(), json!(b.next_checkin_before));
    d.insert("acked_seq".into(), json!(b.acked_seq));
    d.insert("acked_hash".into(), json!(b.acked_hash));
    d.insert("nonce".into(), json!(b.nonce));
    d.insert("via".into(), json!(via));
    d
}

/// Follow the service's key rotation after accepting receipt `r` (verified by
/// [`check_receipt`] under `service.keys`):
/// - signed by a key announced under the pinned one: the rotation happened. Re-pin that
///   key in `instance.json`, forget the predecessor and what was announced under it, and
///   record `service_key_rotated` (`from_key_id`, `to_key_id`, `public_key`, `receipt`);
///   receipts signed by the predecessor are `unknown_key` from now on;
/// - announcing a key (`announce_key`) under the (new) pinned key: keep it as trusted next
///   to the pin and record `service_key_announced` (`key_id`, `public_key`,
///   `announced_by`, `receipt`).
///
/// Ledger entries are appended before `instance.json` changes: a crash in between repeats
/// the step at the next receipt, it never changes trust unrecorded.
fn follow_rotation(
    inst: &mut Instance,
    ledger: &Ledger,
    service: &Service,
    r: &Receipt,
    hash: &str,
    clock: &dyn Clock,
) -> Result<(), CheckinError> {
    let b = &r.body;
    let Some(pinned) = service.keys.first() else {
        return Ok(());
    };
    let mut pin = pinned.clone();
    if b.key_id != pinned.key_id
        && let Some(signer) = service.keys.iter().find(|k| k.key_id == b.key_id)
    {
        let public_key = keys::b64_encode(&signer.key);
        let mut d = Map::new();
        d.insert("from_key_id".into(), json!(pinned.key_id));
        d.insert("to_key_id".into(), json!(signer.key_id));
        d.insert("public_key".into(), json!(public_key));
        d.insert("receipt".into(), json!(hash));
        observe::append_trusted(inst, ledger, kind::SERVICE_KEY_ROTATED, d, clock)?;
        let settings = inst.settings.service.get_or_insert_with(Default::default);
        settings.public_key = Some(public_key);
        settings.announced_keys.clear();
        settings.superseded_keys.retain(|k| *k != pinned.key_id);
        settings.superseded_keys.push(pinned.key_id.clone());
        let excess = settings
            .superseded_keys
            .len()
            .saturating_sub(MAX_SUPERSEDED_KEYS);
        settings.superseded_keys.drain(..excess);
        inst.save_settings()?;
        pin = signer.clone();
    }
    // Checked by `check_receipt`: the announced key matches its id.
    let Some(a) = &b.announce_key else {
        return Ok(());
    };
    if a.key_id == pin.key_id {
        return Ok(());
    }
    let settings = inst.settings.service.get_or_insert_with(Default::default);
    let known = settings
        .announced_keys
        .iter()
        .any(|x| x.key_id == a.key_id && x.announced_by.as_deref() == Some(&pin.key_id));
    if known {
        return Ok(());
    }
    let mut d = Map::new();
    d.insert("key_id".into(), json!(a.key_id));
    d.insert("public_key".into(), json!(a.public_key));
    d.insert("announced_by".into(), json!(pin.key_id));
    d.insert("receipt".into(), json!(hash));
    observe::append_trusted(inst, ledger, kind::SERVICE_KEY_ANNOUNCED, d, clock)?;
    let settings = inst.settings.service.get_or_insert_with(Default::default);
    settings.announced_keys.retain(|x| x.key_id != a.key_id);
    settings.announced_keys.push(AnnouncedServiceKey {
        key_id: a.key_id.clone(),
        public_key: a.public_key.clone(),
        announced_by: Some(pin.key_id.clone()),
    });
    let excess = settings
        .announced_keys
        .len()
        .saturating_sub(MAX_ANNOUNCED_KEYS);
    settings.announced_keys.drain(..excess);
    inst.save_settings()?;
    Ok(())
}

/// The newest stored receipt (by server time) that is not an `unknown_serial` answer.
fn newest_stored_lease_receipt(ledger: &Ledger) -> Result<Option<Receipt>, CheckinError> {
    let mut stmt = ledger
        .connection()
        .prepare("SELECT receipt FROM receipts ORDER BY server_time DESC, hash DESC")
        .map_err(sql(ledger))?;
    let mut rows = stmt.query([]).map_err(sql(ledger))?;
    while let Some(row) = rows.next().map_err(sql(ledger))? {
        let text: String = row.get(0).map_err(sql(ledger))?;
        if let Ok(r) = serde_json::from_str::<Receipt>(&text)
            && r.body.status != Status::UnknownSerial
        {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Make sure the newest receipt the service gave is what the license state rests on.
///
/// A stored receipt newer (by server time) than the one the newest `checkin` entry cites
/// means that entry is missing: a check-in was interrupted between storing the receipt
/// and recording it, or the ledger's newest entries were deleted (which `ledger verify`
/// reports). Either way the receipt still holds, so it is recorded again: a `checkin`
/// entry citing it with `recovered: true`. Deleting entries therefore never lifts what a
/// receipt imposed (a `disabled` verdict, an ended SLA). Only a receipt that verifies
/// under a trusted service key and names this instance counts: a row planted in the
/// `receipts` table is ignored (and `ledger verify` reports it as cited by no entry).
///
/// Returns the entries appended (none when nothing was missing). Never touches the network.
pub fn reconcile(
    inst: &Instance,
    ledger: &Ledger,
    service: &Service,
    clock: &dyn Clock,
) -> Result<Vec<Entry>, CheckinError> {
    let Some(r) = newest_stored_lease_receipt(ledger)? else {
        return Ok(Vec::new());
    };
    let Ok(server_time) = time::parse_at(&r.body.server_time) else {
        return Ok(Vec::new());
    };
    if newest_server_time(ledger)?.is_some_and(|t| t >= server_time) {
        return Ok(Vec::new());
    }
    let trusted = service
        .keys
        .iter()
        .find(|k| k.key_id == r.body.key_id)
        .is_some_and(|k| r.verify(&k.key).is_ok());
    if !trusted || r.body.instance != inst.settings.instance {
        return Ok(Vec::new());
    }
    let hash = r.hash()?;
    let mut d = checkin_data(&r.body, &hash, "recovered");
    d.insert("recovered".into(), json!(true));
    Ok(observe::append_trusted(
        inst,
        ledger,
        kind::CHECKIN,
        d,
        clock,
    )?)
}

/// Options of a network check-in.
#[derive(Clone, Debug)]
pub struct Options {
    /// End-to-end bound on the whole check-in: every request it makes (a re-sent one
    /// after 409 `unknown_prev` or 403 `activation_code_required` included) gets only the
    /// time left of it.
    pub timeout: Duration,
    /// The current hardware fingerprint summary, if known.
    pub hardware: Option<Value>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: DEFAULT_TIMEOUT,
            hardware: None,
        }
    }
}

/// Check in over the network and record the outcome.
///
/// Two answers make the agent try again at once (each at most once, so a check-in is at
/// most three requests):
/// - 409 `unknown_prev` (the service never received an entry's predecessor, e.g. its
///   database was restored from a backup): re-send from the service's acknowledged head
///   when that entry is in this ledger, else from genesis (the service stores what it
///   already holds idempotently and judges the rest);
/// - 403 `activation_code_required` after this instance's first successful check-in (the
///   service lost the instance): re-send with the stored activation code.
pub fn checkin(
    inst: &mut Instance,
    ledger: &Ledger,
    service: &Service,
    opts: &Options,
    clock: &dyn Clock,
) -> Result<Outcome, CheckinError> {
    let url = service.url.clone().ok_or(CheckinError::NoUrl)?;
    if service.keys.is_empty() {
        return Err(CheckinError::NoKey);
    }
    let serial = inst.settings.serial.clone().ok_or(CheckinError::NoSerial)?;
    // One deadline for the whole check-in, however many requests it takes.
    let deadline = std::time::Instant::now() + opts.timeout;
    let out_of_time = |detail: Option<String>| {
        Failure::new(
            failure::TIMEOUT,
            format!(
                "no complete answer within {} s{}",
                opts.timeout.as_secs_f32(),
                detail.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        )
    };
    let mut from = acknowledged(ledger)?.map_or(0, |(s, _)| s + 1);
    let mut resynced = false;
    let mut force_code = false;
    loop {
        let prepared = prepare_with(
            inst,
            ledger,
            service,
            from,
            force_code,
            opts.hardware.clone(),
            clock,
        )?;
        let fail = |f: Failure| -> Result<Outcome, CheckinError> {
            let entry = record_failure(inst, ledger, &f, Via::Network, Some(&url), clock)?;
            Ok(Outcome::Failed { failure: f, entry })
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return fail(out_of_time(None));
        }
        let reply = match post(&url, &prepared.request, left) {
            Ok(r) => r,
            // Name the check-in's bound, not the remainder this request was given.
            Err(f) if f.reason == failure::TIMEOUT => {
                return fail(out_of_time(Some(format!(
                    "{:.1} s left for this request",
                    left.as_secs_f32()
                ))));
            }
            Err(f) => return fail(f),
        };
        let (status, error) = match reply {
            Reply::Receipt(r) => {
                let expect = Expect {
                    instance: &inst.settings.instance,
                    serial: &serial,
                    nonce: Some(&prepared.request.body.nonce),
                    keys: &service.keys,
                    newest_server_time: newest_server_time(ledger)?,
                };
                if let Err(f) = check_receipt(&r, &expect, ledger) {
                    return fail(f);
                }
                return accept(inst, ledger, service, *r, Via::Network, Some(&url), clock);
            }
            Reply::Refused { status, error } => (status, error),
        };
        let code = error.as_ref().map(|e| e.error.as_str());
        if status == 409 && code == Some(protocol::error::UNKNOWN_PREV) && !resynced {
            resynced = true;
            let head = error
                .as_ref()
                .and_then(|e| e.acked_seq.zip(e.acked_hash.clone()));
            from = match head {
                Some((s, h)) if ledger.entry(s)?.is_some_and(|ours| ours.hash == h) => s + 1,
                // The service holds nothing of this instance, or its head is on another
                // branch (a copy that forked before it): everything from genesis.
                _ => 0,
            };
            continue;
        }
        if status == 403
            && code == Some(protocol::error::ACTIVATION_CODE_REQUIRED)
            && !force_code
            && prepared.request.body.activation_code.is_none()
            && service.activation_code.is_some()
        {
            force_code = true;
            continue;
        }
        let (reason, detail) = match (&error, code) {
            // The service's word for a serial it has no SLA record of: the same reason as
            // a receipt saying `unknown_serial`, so that `status` can say what to do.
            (Some(e), Some(protocol::error::UNKNOWN_SERIAL)) => (
                failure::UNKNOWN_SERIAL,
                format!(
                    "HTTP {status}: the licensing service does not know serial {serial}; check the serial, or ask the vendor to register it ({})",
                    e.message
                ),
            ),
            (Some(e), _) => (
                failure::REFUSED,
                format!("HTTP {status}: {} ({})", e.message, e.error),
            ),
            (None, _) => (failure::REFUSED, format!("HTTP {status} from {url}")),
        };
        let mut f = Failure::new(reason, detail);
        f.http_status = Some(status);
        f.service_error = error.map(Box::new);
        return fail(f);
    }
}

/// Air-gapped, step 1: sign a request carrying every entry the service has not
/// acknowledged, remember its nonce as pending, and write it to `out`.
pub fn write_request(
    inst: &Instance,
    ledger: &Ledger,
    service: &Service,
    hardware: Option<Value>,
    out: &Path,
    clock: &dyn Clock,
) -> Result<Prepared, CheckinError> {
    let from = acknowledged(ledger)?.map_or(0, |(s, _)| s + 1);
    let p = prepare(inst, ledger, service, from, hardware, clock)?;
    let c = ledger.connection();
    c.execute(
        "INSERT INTO pending_requests (nonce, created_at, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            p.request.body.nonce,
            p.request.body.sent_at,
            p.first_seq.map(|s| s as i64).unwrap_or(-1),
            p.last_seq.map(|s| s as i64).unwrap_or(-1)
        ],
    )
    .map_err(sql(ledger))?;
    c.execute(
        "DELETE FROM pending_requests WHERE nonce NOT IN (SELECT nonce FROM pending_requests ORDER BY created_at DESC, rowid DESC LIMIT ?1)",
        [MAX_PENDING],
    )
    .map_err(sql(ledger))?;
    let mut bytes = serde_json::to_vec_pretty(&p.request)
        .map_err(|e| protocol::ProtocolError::Canonical(e.to_string()))?;
    bytes.push(b'\n');
    crate::fsutil::write_output(out, &bytes).map_err(|source| CheckinError::Io {
        path: out.display().to_string(),
        source,
    })?;
    Ok(p)
}

/// Air-gapped, step 2: apply a receipt the admin brought back (the bytes of the response
/// file; `source` names it in messages). Malformed, forged, replayed, stale or foreign
/// receipts are recorded as `checkin_failed` and returned as [`Outcome::Failed`].
pub fn apply_response(
    inst: &mut Instance,
    ledger: &Ledger,
    service: &Service,
    bytes: &[u8],
    source: &str,
    clock: &dyn Clock,
) -> Result<Outcome, CheckinError> {
    if service.keys.is_empty() {
        return Err(CheckinError::NoKey);
    }
    let serial = inst.settings.serial.clone().ok_or(CheckinError::NoSerial)?;
    let fail = |inst: &Instance, f: Failure| -> Result<Outcome, CheckinError> {
        let entry = record_failure(inst, ledger, &f, Via::File, None, clock)?;
        Ok(Outcome::Failed { failure: f, entry })
    };
    if bytes.len() as u64 > MAX_RESPONSE_BYTES {
        return fail(
            inst,
            Failure::new(
                failure::MALFORMED,
                format!("{source} is larger than {MAX_RESPONSE_BYTES} bytes"),
            ),
        );
    }
    let r: Receipt = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                inst,
                Failure::new(
                    failure::MALFORMED,
                    format!("{source} is not a receipt: {e}"),
                ),
            );
        }
    };
    let expect = Expect {
        instance: &inst.settings.instance,
        serial: &serial,
        nonce: None,
        keys: &service.keys,
        newest_server_time: newest_server_time(ledger)?,
    };
    if let Err(f) = check_receipt(&r, &expect, ledger) {
        return fail(inst, f);
    }
    let hash = r.hash()?;
    let pending: Option<String> = ledger
        .connection()
        .query_row(
            "SELECT nonce FROM pending_requests WHERE nonce = ?1",
            [&r.body.nonce],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql(ledger))?;
    if pending.is_none() {
        let f = if stored_receipt(ledger, &hash)?.is_some() {
            rejected(
                failure::REPLAYED,
                format!("{source} was already applied (receipt {hash})"),
                Some(&hash),
            )
        } else {
            rejected(
                failure::UNKNOWN_NONCE,
                format!(
                    "{source} answers nonce {}, which no pending request of this instance has (write a new request with `vmledger checkin --request-file`)",
                    r.body.nonce
                ),
                Some(&hash),
            )
        };
        return fail(inst, f);
    }
    let outcome = accept(inst, ledger, service, r, Via::File, None, clock)?;
    ledger
        .connection()
        .execute("DELETE FROM pending_requests WHERE nonce = ?1", [&pending])
        .map_err(sql(ledger))?;
    Ok(outcome)
}
