//! The licensing service (the vendor's cloud side): SLA records, check-ins answered with
//! signed receipts, the detection rules applied online, operator overrides, SLA expiry
//! e-mail, and the HTTP server around them.
//!
//! | file | owns |
//! |------|------|
//! | `store.rs` | the [`Store`] trait every backend implements |
//! | `sqlite.rs` | the SQLite backend (WAL, `synchronous=FULL`, its own migrations) |
//! | `keyring.rs` | the service's signing keys: files, rotation states, which key signs |
//! | `checkin.rs` | verifying a request, applying it, the receipt body |
//! | `evidence.rs` | evidence documents and their offline verification |
//! | `writer.rs` | the single writer thread: group commit of check-in batches |
//! | `http.rs` | the HTTP API (axum over hyper), limits, TLS, metrics, shutdown |
//! | `admin.rs` | `vmledger admin ...` operations on the database |
//! | `alerts.rs` | SLA expiry alerts over SMTP (lettre) |
//! | `client.rs` | the load generator's keep-alive HTTP/1.1 connections (no request building) |
//! | `loadgen.rs` | the check-in load generator (`vmledger bench checkin`) |
//!
//! Only this module speaks HTTP or SMTP. It never prints and never exits; time comes from
//! an injected [`Clock`], so tests move it instead of sleeping. Nothing is acknowledged to
//! a client before it is committed durably.

pub mod admin;
pub mod alerts;
pub mod checkin;
pub mod client;
pub mod config;
pub mod evidence;
mod http;
pub mod keyring;
pub mod loadgen;
pub mod sqlite;
pub mod store;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{ServerSection, Settings, SmtpSection};
pub use http::Metrics;
pub use sqlite::SqliteStore;
pub use store::{Store, StoreError, Tx};

use crate::keys::{KeyError, SigningKey};
use crate::protocol;
use crate::time::{self, Clock};

/// Service-level failures (the CLI adds context).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "service key file {path} holds public key {found}, but the database {db} expects key id {expected}; use the key file created with this database"
    )]
    KeyMismatch {
        path: String,
        db: String,
        expected: String,
        found: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where the key `service init` created for database `db` lives: `<db>.key` (keys created
/// by `service key rotate` live in [`keyring::successor_path`]).
pub fn key_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(".key");
    PathBuf::from(s)
}

/// Create a service database and its key (`vmledger service init`). Returns the key.
pub fn init(db: &Path, clock: &dyn Clock) -> Result<SigningKey, ServiceError> {
    let kp = key_path(db);
    if db.exists() {
        // Refuses with the existing key id when already initialised.
        let mut s = SqliteStore::open(db)?;
        let mut tx = s.read()?;
        let (key_id, _) = tx.service_key()?;
        return Err(StoreError::AlreadyInitialised {
            path: db.display().to_string(),
            key_id,
        }
        .into());
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::ensure_private_dir(dir).map_err(|source| ServiceError::Io {
            what: format!("cannot create {}", dir.display()),
            source,
        })?;
    }
    let key = SigningKey::generate()?;
    key.save(&kp)?;
    let id = protocol::key_id(&key.public_key());
    SqliteStore::create(
        db,
        &id,
        &key.public_key_b64(),
        &time::format_at(clock.now()),
    )?;
    Ok(key)
}

/// Load the active service key of `db` and check it is the one the database pins.
pub fn load_key(db: &Path) -> Result<(SigningKey, String), ServiceError> {
    let keys = keyring::list(db)?;
    let active = keys
        .iter()
        .find(|k| k.state == store::KeyState::Active)
        .ok_or_else(|| {
            ServiceError::Invalid(format!(
                "service database {} has no active key; was it created by `vmledger service init`?",
                db.display()
            ))
        })?;
    let key = keyring::load(db, active)?;
    Ok((key, active.key_id.clone()))
}

/// Load every key of `db` that signs receipts (the active key and the previous ones), so
/// that a missing or wrong key file is found before anything is answered.
pub fn load_signers(db: &Path) -> Result<keyring::Signers, ServiceError> {
    keyring::KeyRing::new(db).signers(&keyring::list(db)?)
}

/// TLS material for `serve --tls-cert/--tls-key` (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a running service needs.
pub struct ServiceConfig {
    pub db: PathBuf,
    pub settings: Settings,
    /// The service's clock (the system clock in production; injected in tests).
    pub clock: Arc<dyn Clock>,
    pub tls: Option<TlsFiles>,
    /// Run the SLA alert job in-process (at start, then every `alert_interval`).
    pub alerts: bool,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("alerts", &self.alerts)
            .finish()
    }
}

/// Serve the HTTP API on `listener` until `shutdown` resolves, then stop accepting, let
/// requests in flight finish (their commits included) and return. Tests bind
/// `127.0.0.1:0` and call this from their own runtime.
pub async fn launch(
    listener: tokio::net::TcpListener,
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    http::run(listener, config, shutdown).await
}
