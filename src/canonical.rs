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
        Value::String(s) => write_str(out, s)?,
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

/// Write `s` as a JSON string escaped as RFC 8785 (and `serde_json`) escape. Strings with
/// nothing to escape, nearly all, are copied as they are (checked with a fold, not an
/// early exit, so that it vectorises).
fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), CanonError> {
    let b = s.as_bytes();
    if !b.iter().fold(false, |esc, &c| {
        esc | (c < 0x20) | (c == b'"') | (c == b'\\')
    }) {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(&mut *out, s).map_err(|e| CanonError::Serialise(e.to_string()))
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
        write_str(out, k)?;
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
        write_str(self.out, s)
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

/// Deepest nesting [`is_canonical`] accepts (`serde_json` refuses beyond 128 levels).
const MAX_DEPTH: usize = 100;

/// Whether `text` is exactly the RFC 8785 canonical text of a JSON value that obeys the
/// value rules (no floats, integers within ±(2^53-1)): the answer of parsing it and
/// comparing [`to_vec`] of the value with it, without building the value.
///
/// Verifiers of stored canonical text (the ledger's `body` column) use it to hash and
/// check the stored bytes as they are, instead of re-writing every body: it reads each
/// byte once and allocates nothing unless an object member name holds an escape. It may
/// refuse text the slow path accepts (nesting deeper than 100 levels), never the reverse
/// (property test below): callers fall back to the slow path, which names the problem.
pub fn is_canonical(text: &str) -> bool {
    let mut s = Scan {
        b: text.as_bytes(),
        i: 0,
    };
    s.value(0) && s.i == s.b.len()
}

/// A cursor over text that [`is_canonical`] checks.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

/// Where a string's contents lie (between the quotes) and whether it holds an escape.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, l: &[u8]) -> bool {
        let ok = self.b[self.i..].starts_with(l);
        if ok {
            self.i += l.len();
        }
        ok
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth + 1),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth + 1),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => false,
        }
    }

    /// `0` or `-?[1-9][0-9]*` within the safe range. What follows (`.`, `e`) is the
    /// caller's to refuse: only `,`, `]`, `}` or the end may follow a value.
    fn integer(&mut self) -> bool {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let d = &self.b[start..self.i];
        // 2^53-1 has 16 digits; "-0" and leading zeros are not canonical.
        if d.is_empty() || d.len() > 16 || (d[0] == b'0' && (d.len() > 1 || negative)) {
            return false;
        }
        d.iter().fold(0u64, |n, c| n * 10 + u64::from(c - b'0')) <= MAX_SAFE_INTEGER
    }

    /// A string escaped as RFC 8785 (and `serde_json`) escape: `\"`, `\\`, the five short
    /// forms, `\u00xx` (lowercase) for the other control characters, everything else raw.
    fn string(&mut self) -> Option<Span> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Skip plain bytes in bulk: up to the next quote or backslash, refusing raw
            // control characters on the way (a fold, not an early exit, so it vectorises).
            let rest = &self.b[self.i..];
            let plain = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[..plain].iter().fold(false, |c, &b| c | (b < 0x20)) {
                return None;
            }
            self.i += plain;
            if self.b[self.i] == b'"' {
                let end = self.i;
                self.i += 1;
                return Some(Span {
                    start,
                    end,
                    escaped,
                });
            }
            // A backslash.
            escaped = true;
            match *self.b.get(self.i + 1)? {
                b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                b'u' => {
                    let h = self.b.get(self.i + 2..self.i + 6)?;
                    let low = match h[3] {
                        c @ b'0'..=b'9' => c - b'0',
                        c @ b'a'..=b'f' => c - b'a' + 10,
                        _ => return None,
                    };
                    let code = match (h[0], h[1], h[2]) {
                        (b'0', b'0', b'0') => low,
                        (b'0', b'0', b'1') => 16 + low,
                        _ => return None,
                    };
                    // \b \t \n \f \r have short forms.
                    if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                        return None;
                    }
                    self.i += 6;
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return true;
        }
        let mut previous: Option<Span> = None;
        loop {
            if self.peek() != Some(b'"') {
                return false;
            }
            let Some(name) = self.string() else {
                return false;
            };
            if previous.is_some_and(|p| !self.sorts_before(p, name)) {
                return false;
            }
            previous = Some(name);
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            if !self.value(depth) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Whether member name `a` sorts strictly before `b` by UTF-16 code units.
    fn sorts_before(&self, a: Span, b: Span) -> bool {
        let (ra, rb) = (&self.b[a.start..a.end], &self.b[b.start..b.end]);
        if !a.escaped && !b.escaped {
            // Below U+10000 (no 4-byte sequence), UTF-8 byte order is UTF-16 order.
            if !ra.iter().chain(rb).any(|&c| c >= 0xf0) {
                return ra < rb;
            }
            if let (Ok(sa), Ok(sb)) = (std::str::from_utf8(ra), std::str::from_utf8(rb)) {
                return sa.encode_utf16().lt(sb.encode_utf16());
            }
            return false;
        }
        // Names with escapes (control characters): decode them, rarely needed.
        let decode = |s: Span| serde_json::from_slice::<String>(&self.b[s.start - 1..=s.end]).ok();
        match (decode(a), decode(b)) {
            (Some(sa), Some(sb)) => sa.encode_utf16().lt(sb.encode_utf16()),
            _ => false,
        }
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
    /// What [`is_canonical`] must answer: parse, re-write canonically, compare.
    fn canonical_by_parsing(text: &str) -> bool {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| to_vec(&v).ok())
            .is_some_and(|c| c == text.as_bytes())
    }

    #[test]
    fn is_canonical_examples() {
        for ok in [
            "{}",
            "[]",
            "0",
            "-1",
            "9007199254740991",
            "-9007199254740991",
            "{\"B\":4,\"a\":[true,false,null],\"\u{1f600}\":\"x\",\"\u{e000}\":1}",
            "{\"\\u0000\":1,\"\\u001f\":2,\"\\\"\":3}",
            "\"\\b\\t\\n\\f\\r\\u000b/\u{7f}\"",
        ] {
            assert!(is_canonical(ok), "{ok}");
            assert!(canonical_by_parsing(ok), "{ok}");
        }
        for bad in [
            "",
            " {}",
            "{} ",
            "{\"a\":1,\"a\":1}",
            "{\"b\":1,\"a\":1}",
            "{\"\u{e000}\":1,\"\u{1f600}\":2}",
            "{\"a\" :1}",
            "-0",
            "01",
            "1.0",
            "1e3",
            "9007199254740992",
            "-9007199254740992",
            "\"\\/\"",
            "\"\\u0008\"",
            "\"\\u001F\"",
            "\"\\u0020\"",
            "\"\\ud83d\\ude00\"",
            "\"\u{1}\"",
            "[1,]",
            "{\"a\":1,}",
            "[1 ]",
            "tru",
            "nulll",
        ] {
            assert!(!is_canonical(bad), "{bad}");
            assert!(!canonical_by_parsing(bad), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(!is_canonical(&deep));
    }

    /// Text near canonical: canonical text with one character inserted, removed or replaced
    /// (from the characters that matter to JSON syntax and escaping).
    fn arb_near_canonical() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let alphabet = prop_oneof![
            proptest::sample::select(
                "{}[]:,\"\\ -+.eE0123456789abfnrtuAF/\u{7f}\u{e000}\u{1f600}"
                    .chars()
                    .collect::<Vec<_>>()
            ),
            any::<char>(),
        ];
        (
            arb_value(),
            any::<proptest::sample::Index>(),
            0..3u8,
            alphabet,
        )
            .prop_map(|(v, at, op, c)| {
                let mut chars: Vec<char> = to_string(&v).unwrap().chars().collect();
                let i = at.index(chars.len() + 1);
                match op {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ if i < chars.len() => chars[i] = c,
                    _ => chars.push(c),
                }
                chars.into_iter().collect()
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Canonical text of every value is recognised as canonical.
        #[test]
        fn is_canonical_accepts_canonical_text(v in arb_value()) {
            proptest::prop_assert!(is_canonical(&to_string(&v).unwrap()));
        }

        /// On text one edit away from canonical, the scanner answers as parsing does.
        #[test]
        fn is_canonical_agrees_with_parsing(text in arb_near_canonical()) {
            proptest::prop_assert_eq!(is_canonical(&text), canonical_by_parsing(&text), "{:?}", text);
        }

        /// On arbitrary JSON-alphabet text too.
        #[test]
        fn is_canonical_agrees_with_parsing_on_noise(text in "[\\[\\]{}:,\"\\\\0-9a-fnrtu .e-]{0,24}") {
            proptest::prop_assert_eq!(is_canonical(&text), canonical_by_parsing(&text), "{:?}", text);
        }
    }
}
