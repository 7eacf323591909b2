//! The check-in protocol between an appliance and the licensing service: the signed
//! request, the signed receipt, and the error body. Both sides (`checkin` in the appliance,
//! `service` in the vendor's cloud) and the air-gapped file exchange use these types, so
//! the wire format is defined once, here (spec: `docs/formats/protocol.md`).
//!
//! Signing follows the ledger's rule: message = ASCII prefix + RFC 8785 canonical `body`;
//! signature = Ed25519 over the message, standard base64 with padding.
//! - request: prefix `vmledger/checkin/v1\n`, signed by the *instance* key;
//! - receipt: prefix `vmledger/receipt/v1\n`, signed by the *service* key; the receipt's
//!   `hash` (lowercase hex SHA-256 of its message) is what a `checkin` ledger entry cites.
//!
//! Service key rotation travels in both: a request names the service keys the appliance
//! trusts (`service_keys`), a receipt names the key that signed it (`key_id`) and may
//! announce the key the appliance should move to (`announce_key`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;
use crate::keys::{self, PUBLIC_KEY_LEN, SigningKey};
use crate::ledger::entry::{self, Entry};

pub const CHECKIN_PREFIX: &[u8] = b"vmledger/checkin/v1\n";
pub const RECEIPT_PREFIX: &[u8] = b"vmledger/receipt/v1\n";
pub const CHECKIN_FORMAT: &str = "vmledger-checkin-request/v1";
pub const RECEIPT_FORMAT: &str = "vmledger-receipt/v1";
pub const SERVICE_ERROR_FORMAT: &str = "vmledger-service-error/v1";
/// Most key ids a request's `service_keys` may name.
pub const MAX_SERVICE_KEYS: usize = 8;

/// Protocol-level problems (the caller adds which file or peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected format `{found}` (expected `{expected}`)")]
    Format {
        expected: &'static str,
        found: String,
    },
    #[error("invalid {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("bad signature")]
    BadSignature,
    #[error("cannot canonicalise: {0}")]
    Canonical(String),
}

fn canonical_message<T: Serialize>(prefix: &[u8], body: &T) -> Result<Vec<u8>, ProtocolError> {
    let text = canonical::to_vec(body).map_err(|e| ProtocolError::Canonical(e.to_string()))?;
    let mut m = Vec::with_capacity(prefix.len() + text.len());
    m.extend_from_slice(prefix);
    m.extend_from_slice(&text);
    Ok(m)
}

/// What the appliance sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinBody {
    pub serial: String,
    /// 32 lowercase hex.
    pub instance: String,
    /// The instance's public key (standard base64 of the raw 32 bytes).
    pub public_key: String,
    /// Fresh random nonce, 32 lowercase hex; echoed in the receipt.
    pub nonce: String,
    /// The appliance's ledger time when it sent this (informational).
    pub sent_at: String,
    /// The serial's activation code: required on an instance's first check-in.
    pub activation_code: Option<String>,
    /// Every ledger entry after the last one the service acknowledged, in seq order.
    pub entries: Vec<Entry>,
    /// Summary of the current hardware fingerprint (component digests), if known.
    pub hardware: Option<Value>,
    /// Key ids of the service keys the appliance trusts: its pinned key first, then keys
    /// announced under it. The service signs the receipt with one of them while it still
    /// signs. Absent (not `null`) in requests of agents older than this member, so that
    /// their signatures still verify; the service then uses the oldest key that signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_keys: Option<Vec<String>>,
}

/// A signed check-in request (`vmledger-checkin-request/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    pub format: String,
    pub body: CheckinBody,
    pub sig: String,
}

impl CheckinRequest {
    /// Sign `body` with the instance key.
    pub fn sign(body: CheckinBody, key: &SigningKey) -> Result<CheckinRequest, ProtocolError> {
        let m = canonical_message(CHECKIN_PREFIX, &body)?;
        Ok(CheckinRequest {
            format: CHECKIN_FORMAT.into(),
            sig: keys::b64_encode(&key.sign(&m)),
            body,
        })
    }

    /// Check the format, the fields' forms and the signature by the key the request
    /// names. Returns that key. (Whether the key belongs to the instance is the service's
    /// business: it pins the key at activation.)
    pub fn verify(&self) -> Result<[u8; PUBLIC_KEY_LEN], ProtocolError> {
        if self.format != CHECKIN_FORMAT {
            return Err(ProtocolError::Format {
                expected: CHECKIN_FORMAT,
                found: self.format.clone(),
            });
        }
        let b = &self.body;
        field_hex("instance", &b.instance, 32)?;
        field_hex("nonce", &b.nonce, 32)?;
        crate::identity::validate_serial(&b.serial).map_err(|e| ProtocolError::Field {
            field: "serial",
            message: e.to_string(),
        })?;
        crate::time::parse_at(&b.sent_at).map_err(|e| ProtocolError::Field {
            field: "sent_at",
            message: e.to_string(),
        })?;
        if let Some(ids) = &b.service_keys {
            if ids.len() > MAX_SERVICE_KEYS {
                return Err(ProtocolError::Field {
                    field: "service_keys",
                    message: format!("at most {MAX_SERVICE_KEYS} key ids"),
                });
            }
            for id in ids {
                field_hex("service_keys", id, 16)?;
            }
        }
        let pk = keys::decode_public_key(&b.public_key, "public_key").map_err(|e| {
            ProtocolError::Field {
                field: "public_key",
                message: e.to_string(),
            }
        })?;
        let m = canonical_message(CHECKIN_PREFIX, b)?;
        entry::check_signature(&pk, &m, &self.sig).map_err(|_| ProtocolError::BadSignature)?;
        Ok(pk)
    }
}

/// The service's answer about a serial/instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    SlaExpired,
    Disabled,
    UnknownSerial,
}

/// Verdict and reason words shared by receipts, `admin show`, the cross-check engine and
/// the appliance's status.
pub mod reason {
    pub const RESTORED: &str = "restored";
    pub const CONCURRENT_DUPLICATE: &str = "concurrent_duplicate";
    pub const SWITCHING: &str = "switching";
    pub const SLA_EXPIRED: &str = "sla_expired";
}

/// `error` codes of `vmledger-service-error/v1` bodies that the agent acts on (the full
/// list is in `docs/formats/protocol.md`).
pub mod error {
    /// HTTP 404: the serial has no SLA record. The agent records `checkin_failed` with
    /// reason `unknown_serial`.
    pub const UNKNOWN_SERIAL: &str = "unknown_serial";
    /// HTTP 409: an entry's `prev` was never received; the body's `acked_seq`/`acked_hash`
    /// name the service's head for the instance, from which the agent re-sends.
    pub const UNKNOWN_PREV: &str = "unknown_prev";
    /// HTTP 403: the instance is new to the service and the request carries no
    /// activation code. An agent that checked in before (the service lost it) re-sends
    /// with its stored code.
    pub const ACTIVATION_CODE_REQUIRED: &str = "activation_code_required";
}

/// What the service signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Receipt body version (1).
    pub v: u64,
    /// Which service key signed: first 16 hex digits of SHA-256 of the raw public key.
    pub key_id: String,
    pub serial: String,
    pub instance: String,
    /// The request's nonce, echoed.
    pub nonce: String,
    /// The service's clock when it answered.
    pub server_time: String,
    /// The newest entry of this instance the service has stored (its acknowledged head).
    pub acked_seq: u64,
    pub acked_hash: String,
    pub status: Status,
    /// Why, when not plainly active: `restored`, `concurrent_duplicate`, `switching`,
    /// `sla_expired`, ...
    pub reason: Option<String>,
    /// Reference of the verdict whose evidence support can look up (`admin show`).
    pub verdict: Option<String>,
    /// SLA end date (`YYYY-MM-DD`), if the serial has one.
    pub sla_ends: Option<String>,
    /// When the next check-in is due (normally 24 h after `server_time`).
    pub next_checkin_before: String,
    /// A new service key announced under the current one (key rotation), if any.
    pub announce_key: Option<AnnouncedKey>,
}

/// A service key announced for rotation: the key the appliance should move to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnouncedKey {
    pub key_id: String,
    pub public_key: String,
}

impl AnnouncedKey {
    /// The announced raw key, checked against its `key_id`.
    pub fn key(&self) -> Result<[u8; PUBLIC_KEY_LEN], ProtocolError> {
        let k =
            keys::decode_public_key(&self.public_key, "announce_key.public_key").map_err(|e| {
                ProtocolError::Field {
                    field: "announce_key.public_key",
                    message: e.to_string(),
                }
            })?;
        let id = key_id(&k);
        if id != self.key_id {
            return Err(ProtocolError::Field {
                field: "announce_key.key_id",
                message: format!(
                    "`{}` is not the key id of the announced public key (that is {id})",
                    self.key_id
                ),
            });
        }
        Ok(k)
    }
}

/// A signed receipt (`vmledger-receipt/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub format: String,
    pub body: ReceiptBody,
    pub sig: String,
}

/// The key id of a raw service public key: first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    entry::sha256_hex(public_key)[..16].to_string()
}

impl Receipt {
    /// Sign `body` with the service key.
    pub fn sign(body: ReceiptBody, key: &SigningKey) -> Result<Receipt, ProtocolError> {
        let m = canonical_message(RECEIPT_PREFIX, &body)?;
        Ok(Receipt {
            format: RECEIPT_FORMAT.into(),
            sig: keys::b64_encode(&key.sign(&m)),
            body,
        })
    }

    /// Check the format and the signature by the pinned service key.
    pub fn verify(&self, service_key: &[u8; PUBLIC_KEY_LEN]) -> Result<(), ProtocolError> {
        if self.format != RECEIPT_FORMAT {
            return Err(ProtocolError::Format {
                expected: RECEIPT_FORMAT,
                found: self.format.clone(),
            });
        }
        let m = canonical_message(RECEIPT_PREFIX, &self.body)?;
        entry::check_signature(service_key, &m, &self.sig).map_err(|_| ProtocolError::BadSignature)
    }

    /// Lowercase hex SHA-256 of the signed message: how ledger entries cite a receipt.
    pub fn hash(&self) -> Result<String, ProtocolError> {
        Ok(entry::sha256_hex(&canonical_message(
            RECEIPT_PREFIX,
            &self.body,
        )?))
    }
}

/// The JSON body of every non-2xx service response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceError {
    pub format: String,
    /// Stable machine-readable code, e.g. `bad_signature`, `unknown_prev`.
    pub error: String,
    /// One sentence for a human: what was wrong and what to do.
    pub message: String,
    /// With `unknown_prev` (HTTP 409): the service's acknowledged head for the instance,
    /// from which the agent re-sends (`null` when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_hash: Option<String>,
}

fn field_hex(field: &'static str, s: &str, len: usize) -> Result<(), ProtocolError> {
    if s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ProtocolError::Field {
            field,
            message: format!("expected {len} lowercase hex digits"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> CheckinBody {
        CheckinBody {
            serial: "SN-1".into(),
            instance: "00112233445566778899aabbccddeeff".into(),
            public_key: SigningKey::from_seed(&[3; 32]).public_key_b64(),
            nonce: "ffeeddccbbaa99887766554433221100".into(),
            sent_at: "2026-12-04T10:00:00.000Z".into(),
            activation_code: Some("CODE".into()),
            entries: vec![],
            hardware: None,
            service_keys: None,
        }
    }

    #[test]
    fn request_sign_verify_and_tamper() {
        let k = SigningKey::from_seed(&[3; 32]);
        let r = CheckinRequest::sign(body(), &k).unwrap();
        assert_eq!(r.verify().unwrap(), k.public_key());
        let mut t = r.clone();
        t.body.nonce = "ffeeddccbbaa99887766554433221101".into();
        assert_eq!(t.verify(), Err(ProtocolError::BadSignature));
        let mut t = r.clone();
        t.body.instance = "XYZ".into();
        assert!(matches!(
            t.verify(),
            Err(ProtocolError::Field {
                field: "instance",
                ..
            })
        ));
        // `service_keys`: absent stays absent in the signed body (older agents' signatures
        // verify); present, its ids are checked.
        assert!(
            !serde_json::to_string(&r.body)
                .unwrap()
                .contains("service_keys")
        );
        let mut b = body();
        b.service_keys = Some(vec!["0123456789abcdef".into()]);
        let signed = CheckinRequest::sign(b.clone(), &k).unwrap();
        let text = serde_json::to_string(&signed).unwrap();
        let back: CheckinRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verify().unwrap(), k.public_key());
        for bad in [vec!["0123".to_string()], vec!["0123456789abcdef".into(); 9]] {
            b.service_keys = Some(bad);
            let t = CheckinRequest::sign(b.clone(), &k).unwrap();
            assert!(matches!(
                t.verify(),
                Err(ProtocolError::Field {
                    field: "service_keys",
                    ..
                })
            ));
        }
    }

    #[test]
    fn announced_key_must_match_its_id() {
        let k = SigningKey::from_seed(&[5; 32]);
        let mut a = AnnouncedKey {
            key_id: key_id(&k.public_key()),
            public_key: k.public_key_b64(),
        };
        assert_eq!(a.key().unwrap(), k.public_key());
        a.key_id = "0000000000000000".into();
        assert!(matches!(
            a.key(),
            Err(ProtocolError::Field {
                field: "announce_key.key_id",
                ..
            })
        ));
        a.public_key = "nope".into();
        assert!(a.key().is_err());
    }

    #[test]
    fn receipt_sign_verify_hash() {
        let k = SigningKey::from_seed(&[9; 32]);
        let body = ReceiptBody {
            v: 1,
            key_id: key_id(&k.public_key()),
            serial: "SN-1".into(),
            instance: "00112233445566778899aabbccddeeff".into(),
            nonce: "ffeeddccbbaa99887766554433221100".into(),
            server_time: "2026-12-04T10:00:00.000Z".into(),
            acked_seq: 3,
            acked_hash: "ab".repeat(32),
            status: Status::Active,
            reason: None,
            verdict: None,
            sla_ends: Some("2027-12-31".into()),
            next_checkin_before: "2026-12-05T10:00:00.000Z".into(),
            announce_key: None,
        };
        let r = Receipt::sign(body, &k).unwrap();
        r.verify(&k.public_key()).unwrap();
        let other = SigningKey::from_seed(&[8; 32]);
        assert_eq!(
            r.verify(&other.public_key()),
            Err(ProtocolError::BadSignature)
        );
        assert_eq!(r.hash().unwrap().len(), 64);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"status\":\"active\""));
    }
}
