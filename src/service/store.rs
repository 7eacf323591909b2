//! The service's storage behind a trait, so that the check-in logic, the admin operations
//! and the alerts are written once and a second backend (PostgreSQL for replicas behind
//! a load balancer, see ARCHITECTURE.md "Growth") plugs in without touching them.
//!
//! A [`Store`] hands out transactions ([`Tx`]): every read and write of one check-in (or
//! of a whole group-commit batch, or of one admin command) happens in one transaction
//! that commits durably or not at all. Dropping a [`Tx`] without [`Tx::commit`] rolls it
//! back. Records are plain values; the rules' states travel as their own types.
//!
//! Invariants every backend keeps: entries, verdicts and overrides are append-only;
//! an entry is keyed by its hash; every entry row carries the server time it arrived;
//! service keys are never deleted, at most one is active and one announced, and a
//! retired key never changes again.

use serde::{Deserialize, Serialize};

use crate::rules::{InstanceState, SerialState, Window};

/// Storage failures. The check-in path answers them with 503 (retry later); nothing is
/// acknowledged that was not committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("service database {path}: {message}")]
    Backend { path: String, message: String },
    #[error("service database {path}: record {what} is corrupt: {message}")]
    Corrupt {
        path: String,
        what: String,
        message: String,
    },
    #[error(
        "service database {path} does not exist; create it with `vmledger service init --db {path}`"
    )]
    Missing { path: String },
    #[error(
        "service database {path} is already initialised (service key {key_id}); nothing was changed"
    )]
    AlreadyInitialised { path: String, key_id: String },
}

/// A serial's SLA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialRecord {
    pub serial: String,
    /// Issued with the SLA; required on each new instance's first check-in.
    pub activation_code: String,
    /// Last day covered by the SLA (`YYYY-MM-DD`, UTC).
    pub ends: String,
    pub contact: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Serial-level rules state (rule 4).
    pub state: SerialState,
}

/// Whether an instance may check in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Checking in normally.
    Active,
    /// Beyond the serial's activation limit: waits for `admin reinstate`.
    Pending,
}

impl Activation {
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Active => "active",
            Activation::Pending => "pending",
        }
    }
}

/// An instance the service knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    pub serial: String,
    /// Pinned at activation (standard base64 of the raw 32 bytes).
    pub public_key: String,
    pub activation: Activation,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub last_checkin_at: Option<String>,
    /// Instance-level rules state (rules 1-3, 5).
    pub state: InstanceState,
}

/// A stored entry: the signed entry plus where it sits and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub instance: String,
    pub hash: String,
    pub prev: String,
    pub seq: u64,
    pub kind: String,
    pub at: String,
    pub boot_id: String,
    /// The rules' branch number.
    pub branch: u32,
    /// Server time it arrived.
    pub arrived_at: String,
    /// RFC 8785 canonical body text (exactly what was signed, after the prefix).
    pub body: String,
    pub sig: String,
}

/// A verdict (or a restore) with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// `INSTANCE/N` (instance level) or `SERIAL/sN` (serial level).
    pub id: String,
    pub serial: String,
    /// The instance it concerns (the trigger's instance at serial level).
    pub instance: String,
    /// `restored`, `concurrent_duplicate`, `switching`.
    pub kind: String,
    /// Rule code, e.g. `2-overlap`.
    pub rule: String,
    pub decided_at: String,
    /// True when it was a restore beyond `restore_warn`: for review.
    pub review: bool,
    /// The evidence document (`vmledger-evidence/v1`), JSON text.
    pub evidence: String,
}

/// Where a service key is in a rotation (see `migrations/0002_key_rotation.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Created by `service key rotate`: announced in receipts, signs nothing yet.
    Announced,
    /// Signs receipts (exactly one key).
    Active,
    /// A former active key: still signs receipts for appliances that trust no newer key.
    Previous,
    /// Never signs again.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Announced => "announced",
            KeyState::Active => "active",
            KeyState::Previous => "previous",
            KeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        Some(match s {
            "announced" => KeyState::Announced,
            "active" => KeyState::Active,
            "previous" => KeyState::Previous,
            "retired" => KeyState::Retired,
            _ => return None,
        })
    }

    /// May sign receipts.
    pub fn signs(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Previous)
    }
}

/// One of the service's signing keys (the private key is in a file beside the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceKeyRecord {
    /// First 16 hex digits of SHA-256 of the raw public key.
    pub key_id: String,
    /// Standard base64 of the raw 32-byte public key.
    pub public_key: String,
    pub state: KeyState,
    pub created_at: String,
    /// When it last became active.
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
}

/// An operator's override, recorded before it takes effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRecord {
    /// Assigned by the store.
    pub id: i64,
    pub at: String,
    /// `sla_set`, `primary`, `reinstate`, `allow_concurrent`, `approve`.
    pub kind: String,
    pub serial: String,
    pub instance: Option<String>,
    /// Kind-specific JSON (e.g. `{"branch": 1, "hash": ...}` or a window).
    pub detail: String,
    pub reason: String,
    /// Who ran the command (`$USER`, else the effective user name, else `uid N`).
    pub operator: String,
}

/// A storage backend.
pub trait Store: Send {
    /// A write transaction (serialised with every other writer).
    fn write(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;
    /// A read transaction (a consistent snapshot).
    fn read(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;
}

/// One transaction's operations.
pub trait Tx {
    /// Make every write durable. Without it, dropping the transaction rolls it back.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// The service's active key id and public key.
    fn service_key(&mut self) -> Result<(String, String), StoreError>;
    /// Every service key, oldest first.
    fn service_keys(&mut self) -> Result<Vec<ServiceKeyRecord>, StoreError>;
    /// Insert a key, or update its state and times (a retired key never changes again).
    fn put_service_key(&mut self, rec: &ServiceKeyRecord) -> Result<(), StoreError>;

    fn serial(&mut self, serial: &str) -> Result<Option<SerialRecord>, StoreError>;
    fn put_serial(&mut self, rec: &SerialRecord) -> Result<(), StoreError>;
    fn serials(&mut self) -> Result<Vec<SerialRecord>, StoreError>;

    fn instance(&mut self, instance: &str) -> Result<Option<InstanceRecord>, StoreError>;
    fn put_instance(&mut self, rec: &InstanceRecord) -> Result<(), StoreError>;
    fn instances_of(&mut self, serial: &str) -> Result<Vec<InstanceRecord>, StoreError>;
    /// Instances of `serial` activated at or after `since`.
    fn activations_since(&mut self, serial: &str, since: &str) -> Result<u32, StoreError>;

    /// The entry of `instance` at `seq` with `hash`.
    fn entry(
        &mut self,
        instance: &str,
        seq: u64,
        hash: &str,
    ) -> Result<Option<StoredEntry>, StoreError>;
    /// The entry of `instance` with `hash`, whatever its seq (a scan: operators only).
    fn find_entry(&mut self, instance: &str, hash: &str)
    -> Result<Option<StoredEntry>, StoreError>;
    /// An existing entry of `instance` at `seq` whose `prev` is `prev` (any one).
    fn child_of(
        &mut self,
        instance: &str,
        seq: u64,
        prev: &str,
    ) -> Result<Option<StoredEntry>, StoreError>;
    fn insert_entry(&mut self, e: &StoredEntry) -> Result<(), StoreError>;
    /// Entries of `instance` on `branch` with seq > `after_seq`, in seq order, at most
    /// `limit` (the newest ones when there are more).
    fn branch_entries(
        &mut self,
        instance: &str,
        branch: u32,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError>;
    fn entry_count(&mut self, instance: &str) -> Result<u64, StoreError>;

    /// True when `nonce` was already used by `instance`.
    fn nonce_seen(&mut self, instance: &str, nonce: &str) -> Result<bool, StoreError>;
    fn put_nonce(&mut self, instance: &str, nonce: &str, at: &str) -> Result<(), StoreError>;
    /// Forget nonces older than `before`.
    fn prune_nonces(&mut self, before: &str) -> Result<u64, StoreError>;

    fn insert_verdict(&mut self, v: &VerdictRecord) -> Result<(), StoreError>;
    fn verdict(&mut self, id: &str) -> Result<Option<VerdictRecord>, StoreError>;
    /// Verdicts of a serial, oldest first.
    fn verdicts_of(&mut self, serial: &str) -> Result<Vec<VerdictRecord>, StoreError>;

    /// Record an override; returns its id.
    fn insert_override(&mut self, o: &OverrideRecord) -> Result<i64, StoreError>;
    fn overrides_of(&mut self, serial: &str) -> Result<Vec<OverrideRecord>, StoreError>;
    /// Declared concurrency windows of the serial's instances.
    fn windows(&mut self, serial: &str) -> Result<Vec<Window>, StoreError>;

    /// True when the SLA alert `stage` for (serial, ends) was sent.
    fn alert_sent(&mut self, serial: &str, ends: &str, stage: &str) -> Result<bool, StoreError>;
    fn record_alert(
        &mut self,
        serial: &str,
        ends: &str,
        stage: &str,
        to: &str,
        at: &str,
    ) -> Result<(), StoreError>;
}
