//! The export bundle (`vmledger-export/v1`): a self-contained copy of a ledger (or its
//! tail) that the vendor's cross-check engine and anyone else can verify offline.
//!
//! ```json
//! {"format":"vmledger-export/v1","serial":"SN","instance":"<32 hex>",
//!  "public_key":"<base64 of raw 32 bytes>","exported_at":"2026-...Z",
//!  "entries":[{"body":{...},"hash":"...","sig":"..."}]}
//! ```

use serde::{Deserialize, Serialize};

use super::entry::Entry;

/// The bundle's `format` value.
pub const EXPORT_FORMAT: &str = "vmledger-export/v1";

/// An export bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub serial: Option<String>,
    pub instance: String,
    pub public_key: String,
    pub exported_at: String,
    pub entries: Vec<Entry>,
}
