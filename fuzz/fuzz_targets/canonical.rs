//! Fuzz the canonical-text scanner against its definition: for any UTF-8 text,
//! `canonical::is_canonical` must answer what parsing the text and writing it again in
//! RFC 8785 form answers (the ledger verifier trusts a `true` to skip that rewrite). The
//! scanner may only refuse more deeply nested text (beyond its depth bound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmledger::canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let by_parsing = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| canonical::to_vec(&v).ok())
        .is_some_and(|c| c == text.as_bytes());
    let scanned = canonical::is_canonical(text);
    if scanned {
        assert!(by_parsing, "accepted non-canonical text {text:?}");
    } else if by_parsing {
        let depth = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
        assert!(depth > 100, "refused canonical text {text:?}");
    }
});
