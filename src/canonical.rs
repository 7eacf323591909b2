//! Canonical JSON (RFC 8785, JCS) for everything vmledger signs or hashes, and the value
//! rules signed documents obey: no floating-point numbers, integers within the IEEE-754
//! exact range (|n| <= 2^53 - 1), so that every JCS implementation in every language
//! produces the same bytes.
//!
//! Canonicalisation itself is done by the maintained `serde_json_canonicalizer` crate.

use serde::Serialize;
use serde_json::Value;

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
    serde_json_canonicalizer::to_vec(&v).map_err(|e| CanonError::Serialise(e.to_string()))
}

/// RFC 8785 canonical text of `value`, after checking it obeys the value rules.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, CanonError> {
    let bytes = to_vec(value)?;
    String::from_utf8(bytes).map_err(|e| CanonError::Serialise(e.to_string()))
}

/// Check that `value` holds no floats and no integers outside the safe range. `path` names
/// the value in errors (JSONPath-like, e.g. `$.data.size`).
pub fn check(value: &Value, path: &str) -> Result<(), CanonError> {
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
            .try_for_each(|(i, v)| check(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check(v, &format!("{path}.{k}"))),
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
