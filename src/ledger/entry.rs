//! One ledger entry: its body, the canonical message that is hashed and signed, and the
//! checks every verifier (the agent, the service, the cross-check engine) applies.
//!
//! The format is a contract (see `docs/formats/ledger.md` and `schemas/entry.schema.json`):
//! - body: a JSON object with exactly `v`, `instance`, `seq`, `prev`, `kind`, `at`,
//!   `boot_id`, `uptime_ms`, `data`; no floats anywhere;
//! - message: UTF-8 `vmledger/entry/v1\n` followed by the RFC 8785 canonical body;
//! - `hash`: lowercase hex SHA-256 of the message; `sig`: standard base64 of the Ed25519
//!   signature of the message.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::keys::{self, PUBLIC_KEY_LEN, SigningKey};
use crate::time;

/// Domain-separation prefix of every entry message.
pub const ENTRY_PREFIX: &[u8] = b"vmledger/entry/v1\n";
/// The body format version.
pub const BODY_VERSION: u64 = 1;
/// `prev` of the genesis entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry body, exactly as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub v: u64,
    pub instance: String,
    pub seq: u64,
    pub prev: String,
    pub kind: String,
    pub at: String,
    pub boot_id: String,
    pub uptime_ms: u64,
    pub data: Map<String, Value>,
}

/// A sealed entry: body, hash and signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub body: Body,
    pub hash: String,
    pub sig: String,
}

/// What is wrong with one entry (the caller adds which seq or file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("entry does not parse: {0}")]
    Unparseable(String),
    #[error("invalid body: {0}")]
    InvalidBody(String),
    #[error("stored body is not in RFC 8785 canonical form")]
    NotCanonical,
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch { stored: String, computed: String },
    #[error("bad signature")]
    BadSignature,
    #[error("broken link: prev is {found}, but the previous entry's hash is {expected}")]
    BrokenLink { expected: String, found: String },
    #[error("gap: expected seq {expected}, found seq {found} (entries are missing)")]
    Gap { expected: u64, found: u64 },
    #[error("duplicate: seq {found} appears again where seq {expected} was expected")]
    Duplicate { expected: u64, found: u64 },
    #[error("stored under seq {stored} but its body says seq {body}")]
    SeqMismatch { stored: u64, body: u64 },
    #[error("stored {column} `{stored}` disagrees with the body's `{body}`")]
    ColumnMismatch {
        column: &'static str,
        stored: String,
        body: String,
    },
    #[error("belongs to instance {found}, not {expected}")]
    WrongInstance { expected: String, found: String },
    #[error("{0}")]
    Genesis(String),
    #[error("time runs backwards: at {at} is earlier than the previous entry's {previous}")]
    TimeBackwards { at: String, previous: String },
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A kind is a short lowercase identifier: `[a-z][a-z0-9_]{0,63}`.
pub fn is_valid_kind(kind: &str) -> bool {
    let b = kind.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// The members of a body that form and chain checks read, borrowed (from a [`Body`] or
/// from stored canonical text, [`BodyView`]).
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub v: u64,
    pub instance: &'a str,
    pub seq: u64,
    pub prev: &'a str,
    pub kind: &'a str,
    pub at: &'a str,
    pub uptime_ms: u64,
}

/// The members that link an entry to its predecessor.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub instance: &'a str,
    pub seq: u64,
    pub prev: &'a str,
    pub at: &'a str,
}

impl<'a> Head<'a> {
    pub fn link(&self) -> Link<'a> {
        Link {
            instance: self.instance,
            seq: self.seq,
            prev: self.prev,
            at: self.at,
        }
    }

    /// Check the form of every member but `data` (see [`Body::validate`]).
    pub fn validate(&self) -> Result<(), Problem> {
        let bad = |m: String| Err(Problem::InvalidBody(m));
        if self.v != BODY_VERSION {
            return bad(format!("unsupported body version v={}", self.v));
        }
        if !is_lower_hex(self.instance, 32) {
            return bad(format!(
                "instance `{}` is not 32 lowercase hex digits",
                self.instance
            ));
        }
        if !is_lower_hex(self.prev, 64) {
            return bad(format!(
                "prev `{}` is not 64 lowercase hex digits",
                self.prev
            ));
        }
        if !is_valid_kind(self.kind) {
            return bad(format!(
                "kind `{}` is not a lowercase identifier",
                self.kind
            ));
        }
        if let Err(e) = time::parse_at(self.at) {
            return bad(format!("at: {e}"));
        }
        if self.seq > canonical::MAX_SAFE_INTEGER || self.uptime_ms > canonical::MAX_SAFE_INTEGER {
            return bad("seq or uptime_ms beyond 2^53-1".into());
        }
        if (self.seq == 0) != (self.kind == "genesis") {
            return bad("seq 0 must be the genesis entry, and genesis must be seq 0".into());
        }
        if self.seq == 0 && self.prev != GENESIS_PREV {
            return bad("genesis prev must be 64 zeros".into());
        }
        Ok(())
    }
}

/// A stored body read in place from its canonical text: every member as [`Body`] has it,
/// strings borrowed, `data` left unparsed. Verifiers of the ledger's own rows use it with
/// [`canonical::is_canonical`] so that a body is hashed and checked as stored, without
/// being parsed into values and written out again. Strings with escapes do not borrow and
/// fail to parse here; callers then take the [`Body`] path, which names the problem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyView<'a> {
    pub v: u64,
    pub instance: &'a str,
    pub seq: u64,
    pub prev: &'a str,
    pub kind: &'a str,
    pub at: &'a str,
    #[serde(borrow)]
    pub boot_id: std::borrow::Cow<'a, str>,
    pub uptime_ms: u64,
    #[serde(borrow)]
    pub data: &'a serde_json::value::RawValue,
}

impl<'a> BodyView<'a> {
    pub fn head(&self) -> Head<'a> {
        Head {
            v: self.v,
            instance: self.instance,
            seq: self.seq,
            prev: self.prev,
            kind: self.kind,
            at: self.at,
            uptime_ms: self.uptime_ms,
        }
    }
}

impl Body {
    pub fn head(&self) -> Head<'_> {
        Head {
            v: self.v,
            instance: &self.instance,
            seq: self.seq,
            prev: &self.prev,
            kind: &self.kind,
            at: &self.at,
            uptime_ms: self.uptime_ms,
        }
    }

    /// Check every member's form (not the chain: that needs the neighbours).
    pub fn validate(&self) -> Result<(), Problem> {
        self.head().validate()?;
        canonical::check_members(&self.data, "data")
            .map_err(|e| Problem::InvalidBody(e.to_string()))
    }

    /// The RFC 8785 canonical body text.
    /// Written member by member (the same bytes as `canonical::to_string(self)`, tested
    /// below) because checking exported ledgers canonicalises millions of bodies.
    pub fn canonical(&self) -> Result<String, Problem> {
        let invalid = |e: canonical::CanonError| Problem::InvalidBody(e.to_string());
        let mut out = Vec::with_capacity(256 + 64 * self.data.len());
        let mut o = canonical::ObjectWriter::new(&mut out);
        o.str("at", &self.at).map_err(invalid)?;
        o.str("boot_id", &self.boot_id).map_err(invalid)?;
        o.map("data", &self.data).map_err(invalid)?;
        o.str("instance", &self.instance).map_err(invalid)?;
        o.str("kind", &self.kind).map_err(invalid)?;
        o.str("prev", &self.prev).map_err(invalid)?;
        o.uint("seq", self.seq).map_err(invalid)?;
        o.uint("uptime_ms", self.uptime_ms).map_err(invalid)?;
        o.uint("v", self.v).map_err(invalid)?;
        o.finish();
        String::from_utf8(out).map_err(|e| Problem::InvalidBody(e.to_string()))
    }

    /// The message that is hashed and signed: prefix + canonical body.
    pub fn message(&self) -> Result<Vec<u8>, Problem> {
        Ok(message_from_canonical(&self.canonical()?))
    }
}

/// Prefix + canonical body text.
pub fn message_from_canonical(canonical_body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENTRY_PREFIX.len() + canonical_body.len());
    m.extend_from_slice(ENTRY_PREFIX);
    m.extend_from_slice(canonical_body.as_bytes());
    m
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    // Into a fixed buffer (32 bytes always fill 64): `hex::encode`'s char iterator costs
    // more than the hash of a small body.
    let mut out = [0u8; 64];
    let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Entry {
    /// Validate, hash and sign `body` with `key`.
    pub fn seal(body: Body, key: &SigningKey) -> Result<Entry, Problem> {
        body.validate()?;
        let message = body.message()?;
        Ok(Entry {
            hash: sha256_hex(&message),
            sig: keys::b64_encode(&key.sign(&message)),
            body,
        })
    }

    /// Check the body's form, the hash, and (when `public_key` is given) the signature.
    /// Returns the canonical body text.
    pub fn check(&self, public_key: Option<&[u8; PUBLIC_KEY_LEN]>) -> Result<String, Problem> {
        // `canonical()` checks `data` as `validate()` does (same error): not twice.
        self.body.head().validate()?;
        let canonical = self.body.canonical()?;
        let message = message_from_canonical(&canonical);
        let computed = sha256_hex(&message);
        if computed != self.hash {
            return Err(Problem::HashMismatch {
                stored: self.hash.clone(),
                computed,
            });
        }
        if let Some(pk) = public_key {
            check_signature(pk, &message, &self.sig)?;
        }
        Ok(canonical)
    }

    /// The genesis entry's public key (`data.public_key`), decoded.
    pub fn genesis_public_key(&self) -> Result<[u8; PUBLIC_KEY_LEN], Problem> {
        if self.body.kind != "genesis" {
            return Err(Problem::Genesis(format!(
                "the first entry is `{}`, not `genesis`",
                self.body.kind
            )));
        }
        let pk = self
            .body
            .data
            .get("public_key")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::Genesis("genesis has no data.public_key".into()))?;
        keys::decode_public_key(pk, "genesis data.public_key")
            .map_err(|e| Problem::Genesis(e.to_string()))
    }
}

/// Verify a base64 signature over `message`.
pub fn check_signature(
    pk: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    sig_b64: &str,
) -> Result<(), Problem> {
    let sig = keys::b64_decode(sig_b64).ok_or(Problem::BadSignature)?;
    if keys::verify(pk, message, &sig) {
        Ok(())
    } else {
        Err(Problem::BadSignature)
    }
}

/// Check that `next` follows `prev` in one chain: seq +1, `prev` link, time not going back.
pub fn check_link(prev: &Body, prev_hash: &str, next: &Body) -> Result<(), Problem> {
    check_link_between(prev.head().link(), prev_hash, next.head().link())
}

/// [`check_link`] on borrowed members.
pub fn check_link_between(prev: Link<'_>, prev_hash: &str, next: Link<'_>) -> Result<(), Problem> {
    if next.instance != prev.instance {
        return Err(Problem::WrongInstance {
            expected: prev.instance.to_string(),
            found: next.instance.to_string(),
        });
    }
    let expected = prev.seq + 1;
    if next.seq > expected {
        return Err(Problem::Gap {
            expected,
            found: next.seq,
        });
    }
    if next.seq < expected {
        return Err(Problem::Duplicate {
            expected,
            found: next.seq,
        });
    }
    if next.prev != prev_hash {
        return Err(Problem::BrokenLink {
            expected: prev_hash.to_string(),
            found: next.prev.to_string(),
        });
    }
    // Both parse: validate() checked the format. The format sorts lexically like time.
    if next.at < prev.at {
        return Err(Problem::TimeBackwards {
            at: next.at.to_string(),
            previous: prev.at.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arb_data() -> impl Strategy<Value = Map<String, Value>> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0..=canonical::MAX_SAFE_INTEGER).prop_map(|i| json!(i)),
            any::<String>().prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("[a-z_\u{e9}\u{1f600}]{0,6}", value, 0..6)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// The member-by-member writer gives the bytes of the generic RFC 8785 path.
        #[test]
        fn body_canonical_matches_the_generic_path(
            at in "\\PC{0,24}", boot_id in "\\PC{0,8}", kind in "[a-z_]{1,12}",
            seq in 0..=canonical::MAX_SAFE_INTEGER, uptime_ms in 0..=canonical::MAX_SAFE_INTEGER,
            data in arb_data(),
        ) {
            let body = Body {
                v: 1, instance: "ab".repeat(16), seq, prev: "0".repeat(64), kind, at,
                boot_id, uptime_ms, data,
            };
            prop_assert_eq!(body.canonical().unwrap(), canonical::to_string(&body).unwrap());
        }
    }

    #[test]
    fn body_canonical_refuses_what_the_generic_path_refuses() {
        let mut data = Map::new();
        data.insert("f".into(), json!(1.5));
        let body = Body {
            v: 1,
            instance: "ab".repeat(16),
            seq: 1,
            prev: "0".repeat(64),
            kind: "boot".into(),
            at: "2026-12-04T15:37:06.123Z".into(),
            boot_id: String::new(),
            uptime_ms: 1,
            data,
        };
        assert!(body.canonical().is_err());
        assert!(canonical::to_string(&body).is_err());
        let big = Body {
            seq: canonical::MAX_SAFE_INTEGER + 1,
            data: Map::new(),
            ..body
        };
        assert!(big.canonical().is_err());
    }
}
