//! Canonical JSON (RFC 8785, JCS) for everything vmledger signs or hashes, and the value
//! rules signed documents obey: no floating-point numbers, integers within the IEEE-754
//! exact range (|n| <= 2^53 - 1), so that every JCS implementation in every language
//! produces the same bytes.
//!
//! Canonical text is written directly from a checked value: with no floats, RFC 8785
//! reduces to integers in plain decimal, object members sorted by the UTF-16 code units
//! of their names, and JSON string escaping exactly as `serde_json` writes it (the
//! ECMAScript rules the RFC adopts). The maintained `serde_json_canonicalizer` crate is the
//! reference it is tested against (property test below); writing directly avoids its
//! per-object buffering, which dominated the cost of checking ledger entries.

use serde::Serialize;
use serde_json::{Map, Value};

/// Largest integer that every JSON implementation represents exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value that cannot appear in a signed document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonError {
    #[error("{path}: floating-point numbers are not allowed in signed documents")]
    Float { path: String },
    #[error("{path}: integer {value} is outside the exactly representable range (|n| <= 2^53-1)")]
    IntegerRange { path: String, value: String },
    #[error("cannot serialise: {0}")]
    Serialise(String),
}

/// RFC 8785 canonical bytes of `value`, after checking it obeys the value rules.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonError> {
    let v = serde_json::to_value(value).map_err(|e| CanonError::Serialise(e.to_string()))?;
    check(&v, "$")?;
    let mut out = Vec::with_capacity(256);
    write_checked(&v, &mut out)?;
    Ok(out)
}

/// Write the RFC 8785 text of a value that passed [`check`] (so: no floats).
fn write_checked(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => out.extend_from_slice(i.to_string().as_bytes()),
            (None, Some(u)) => out.extend_from_slice(u.to_string().as_bytes()),
            _ => {
                return Err(CanonError::Float {
                    path: "$".to_string(),
                });
            }
        },
        Value::String(s) => {
            serde_json::to_writer(&mut *out, s).map_err(|e| CanonError::Serialise(e.to_string()))?
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_checked(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out)?,
    }
    Ok(())
}

/// Write the RFC 8785 text of an object whose values passed [`check`].
fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), CanonError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    // Without serde_json's `preserve_order` feature the map iterates in code point
    // order, which equals UTF-16 order unless a name has characters beyond the BMP.
    // Sort whenever either assumption fails, so a feature enabled by some other
    // crate can never change the bytes.
    let in_order = members.windows(2).all(|w| w[0].0 < w[1].0);
    if !in_order
        || members
            .iter()
            .any(|(k, _)| k.chars().any(|c| c > '\u{ffff}'))
    {
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    out.push(b'{');
    for (i, (k, item)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).map_err(|e| CanonError::Serialise(e.to_string()))?;
        out.push(b':');
        write_checked(item, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// Writes the canonical text of one object member by member, for types whose member
/// names are fixed (the ledger entry body): no intermediate `Value` is built. Callers give
/// the members in RFC 8785 order (debug builds check it); values are checked as `to_vec`
/// checks them.
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    last: Option<&'static str>,
}

impl<'o> ObjectWriter<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, last: None }
    }

    fn name(&mut self, name: &'static str) -> Result<(), CanonError> {
        debug_assert!(
            self.last
                .is_none_or(|l| l.encode_utf16().cmp(name.encode_utf16()).is_lt()),
            "members out of RFC 8785 order: {name} after {:?}",
            self.last
        );
        if self.last.is_some() {
            self.out.push(b',');
        }
        self.last = Some(name);
        self.string(name)?;
        self.out.push(b':');
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), CanonError> {
        serde_json::to_writer(&mut *self.out, s).map_err(|e| CanonError::Serialise(e.to_string()))
    }

    /// A string member.
    pub fn str(&mut self, name: &'static str, value: &str) -> Result<(), CanonError> {
        self.name(name)?;
        self.string(value)
    }

    /// An integer member (refused beyond 2^53-1).
    pub fn uint(&mut self, name: &'static str, value: u64) -> Result<(), CanonError> {
        if value > MAX_SAFE_INTEGER {
            return Err(CanonError::IntegerRange {
                path: format!("$.{name}"),
                value: value.to_string(),
            });
        }
        self.name(name)?;
        self.out.extend_from_slice(value.to_string().as_bytes());
        Ok(())
    }

    /// An object member holding arbitrary JSON, checked first.
    pub fn map(
        &mut self,
        name: &'static str,
        value: &Map<String, Value>,
    ) -> Result<(), CanonError> {
        check_members(value, name)?;
        self.name(name)?;
        write_object(value, self.out)
    }

    /// Close the object.
    pub fn finish(self) {
        self.out.push(b'}');
    }
}

/// RFC 8785 canonical text of `value`, after checking it obeys the value rules.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, CanonError> {
    let bytes = to_vec(value)?;
    String::from_utf8(bytes).map_err(|e| CanonError::Serialise(e.to_string()))
}

/// Check that `value` holds no floats and no integers outside the safe range. `path` names
/// the value in errors (JSONPath-like, e.g. `$.data.size`).
pub fn check(value: &Value, path: &str) -> Result<(), CanonError> {
    // Fast path without building paths: almost every value is fine.
    if is_clean(value) {
        return Ok(());
    }
    check_paths(value, path)
}

/// [`check`] every member of an object; `path` names the object.
pub fn check_members(map: &Map<String, Value>, path: &str) -> Result<(), CanonError> {
    if map.values().all(is_clean) {
        return Ok(());
    }
    map.iter()
        .try_for_each(|(k, v)| check_paths(v, &format!("{path}.{k}")))
}

fn is_clean(value: &Value) -> bool {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
            (None, Some(u)) => u <= MAX_SAFE_INTEGER,
            _ => false,
        },
        Value::Array(items) => items.iter().all(is_clean),
        Value::Object(map) => map.values().all(is_clean),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

fn check_paths(value: &Value, path: &str) -> Result<(), CanonError> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(CanonError::IntegerRange {
                        path: path.to_string(),
                        value: i.to_string(),
                    });
                }
                Ok(())
            } else if let Some(u) = n.as_u64() {
                if u > MAX_SAFE_INTEGER {
                    return Err(CanonError::IntegerRange {
                        path: path.to_string(),
                        value: u.to_string(),
                    });
                }
                Ok(())
            } else {
                Err(CanonError::Float {
                    path: path.to_string(),
                })
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_paths(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_paths(v, &format!("{path}.{k}"))),
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // RFC 8785 section 3.2.3: keys sort by UTF-16 code units, so U+1F600 (a surrogate
        // pair starting 0xD83D) sorts before U+E000.
        let v = json!({"\u{e000}": 1, "\u{1f600}": 2, "a": 3, "B": 4});
        let s = to_string(&v).unwrap();
        assert_eq!(s, "{\"B\":4,\"a\":3,\"\u{1f600}\":2,\"\u{e000}\":1}");
    }

    #[test]
    fn escapes_like_the_rfc() {
        let v = json!({"s": "\u{0}\u{1f}\"\\/\u{7f}é"});
        assert_eq!(
            to_string(&v).unwrap(),
            "{\"s\":\"\\u0000\\u001f\\\"\\\\/\u{7f}é\"}"
        );
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=MAX_SAFE_INTEGER as i64).prop_map(|i| json!(i)),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f\u{e000}\u{1f600}é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "[a-zA-Z\u{e000}\u{1f600}\u{7f}é_]{0,4}|\\PC{0,3}",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The direct writer agrees byte for byte with the reference implementation.
        #[test]
        fn direct_writer_matches_the_reference(v in arb_value()) {
            let ours = to_vec(&v).unwrap();
            let reference = serde_json_canonicalizer::to_vec(&v).unwrap();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn refuses_floats_and_unsafe_integers() {
        assert!(matches!(
            to_vec(&json!({"a": [1, 2.5]})),
            Err(CanonError::Float { path }) if path == "$.a[1]"
        ));
        assert!(matches!(
            to_vec(&json!({"n": 1u64 << 60})),
            Err(CanonError::IntegerRange { .. })
        ));
        assert!(to_vec(&json!({"n": MAX_SAFE_INTEGER})).is_ok());
        assert!(to_vec(&json!({"n": -(MAX_SAFE_INTEGER as i64)})).is_ok());
    }
}
