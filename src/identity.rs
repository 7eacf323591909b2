//! The appliance instance's identity and settings, kept in its state directory so that
//! they travel with a copied image:
//!
//! | file | content |
//! |------|---------|
//! | `instance.key` | Ed25519 private key, PKCS#8 DER, mode 0600 |
//! | `instance.json` | `vmledger-instance/v1`: instance id, serial, public key, service settings |
//! | `ledger.sqlite` | the signed ledger (see [`crate::ledger`]); also holds stored receipts |
//! | `.license.lock` | `flock` held while license transitions are observed and recorded |
//! | `watch/` | copies of watched configuration taken when a lock began |
//!
//! `instance.json` is written last and atomically: it marks an initialised state, so a
//! crash during `init` leaves a state that the next `init` or `boot` simply redoes: it
//! keeps the `instance.key` already written and replaces a ledger that provably holds at
//! most its genesis entry. A state without `instance.json` whose ledger holds more, or
//! cannot be read at all, is refused as orphaned: nothing is removed or overwritten.
//! Initialisation holds an exclusive `flock` on `.init.lock`, so a boot hook and a timer
//! starting together on a fresh sealed image create one identity, not two.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use crate::fsutil;
use crate::keys::{self, KeyError, SigningKey};
use crate::ledger::{Ledger, LedgerError};
use crate::time::{self, Clock};

/// `format` of `instance.json`.
pub const INSTANCE_FORMAT: &str = "vmledger-instance/v1";

/// Errors about the instance's identity and state directory.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{dir} is already initialised (instance {instance}, serial {serial}); nothing was changed. To start over, move the state directory away first"
    )]
    AlreadyInitialised {
        dir: String,
        instance: String,
        serial: String,
    },
    #[error("{dir} is not initialised; run `vmledger init --serial SERIAL` or `vmledger boot`")]
    NotInitialised { dir: String },
    #[error(
        "{dir} has no instance.json but holds {ledger}; restore instance.json and instance.key from a backup, or move the state directory away to start a new identity (refusing to overwrite the ledger or the key)"
    )]
    Orphaned { dir: String, ledger: String },
    #[error(
        "ledger {ledger} is missing although this state directory holds instance {instance}: it was deleted or moved. Restore ledger.sqlite from a backup of the state directory (a new ledger cannot replace it: the licensing service holds this instance's history and refuses a second one); without a backup, contact the vendor's support"
    )]
    LedgerLost { ledger: String, instance: String },
    #[error("cannot use state directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("{path}: {message}")]
    BadSettings { path: String, message: String },
    #[error(
        "instance.key in {dir} does not match the public key in instance.json; restore both from the same backup"
    )]
    KeyMismatch { dir: String },
    #[error("serial `{0}` is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -")]
    BadSerial(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("instance.key")
    }
    pub fn settings_path(&self) -> PathBuf {
        self.root.join("instance.json")
    }
    pub fn ledger_path(&self) -> PathBuf {
        self.root.join("ledger.sqlite")
    }
    fn lock_path(&self) -> PathBuf {
        self.root.join(".init.lock")
    }
    /// Held while the license state is observed and transitions are recorded, and while a
    /// check-in reads the ledger or applies a receipt, so concurrent commands record each
    /// transition once.
    pub fn license_lock_path(&self) -> PathBuf {
        self.root.join(".license.lock")
    }
    /// Copies of watched configuration taken when a lock began (`vmledger watch`).
    pub fn watch_dir(&self) -> PathBuf {
        self.root.join("watch")
    }
    fn display(&self) -> String {
        self.root.display().to_string()
    }
    fn io(&self, source: std::io::Error) -> IdentityError {
        IdentityError::Io {
            dir: self.display(),
            source,
        }
    }
}

/// `instance.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub format: String,
    pub instance: String,
    pub serial: Option<String>,
    pub public_key: String,
    pub created_at: String,
    /// Where and how this instance checks in (`init --service`, `--service-key`,
    /// `--activation-code`). Absent in files written before check-ins existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSettings>,
}

/// The licensing service this instance checks in with, stored in `instance.json` so that
/// it travels with the image. The config file's `[service]` table overrides `url` and
/// `public_key`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Base URL; check-ins go to `{url}/v1/checkin`. `None` for air-gapped sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The pinned service key: standard base64 of the raw 32-byte Ed25519 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The serial's activation code, sent until the first successful check-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_code: Option<String>,
    /// Service keys announced for rotation in receipts signed by the pinned key (trusted
    /// next to it; the first receipt one of them signs re-pins it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced_keys: Vec<AnnouncedServiceKey>,
    /// Key ids this instance rotated away from (oldest first): a config file that still
    /// pins one of them is followed to `public_key` instead of overriding it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_keys: Vec<String>,
}

/// A service key announced in a receipt (`announce_key`), as `instance.json` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnouncedServiceKey {
    pub key_id: String,
    pub public_key: String,
    /// Key id of the key that signed the announcing receipt (absent in files written
    /// before rotation was followed: the pinned key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_by: Option<String>,
}

impl std::fmt::Debug for ServiceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSettings")
            .field("url", &self.url)
            .field("public_key", &self.public_key)
            .field(
                "activation_code",
                &self.activation_code.as_ref().map(|_| "<redacted>"),
            )
            .field("announced_keys", &self.announced_keys)
            .field("superseded_keys", &self.superseded_keys)
            .finish()
    }
}

/// An initialised instance: settings plus its signing key.
#[derive(Debug)]
pub struct Instance {
    pub dir: StateDir,
    pub settings: Settings,
    pub key: SigningKey,
}

/// Check a serial number's form.
pub fn validate_serial(serial: &str) -> Result<(), IdentityError> {
    let ok = !serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadSerial(serial.to_string()))
    }
}

impl Instance {
    /// Create a new identity in `dir`. Refuses when `dir` is already initialised.
    pub fn init(
        dir: &StateDir,
        serial: Option<&str>,
        clock: &dyn Clock,
    ) -> Result<Instance, IdentityError> {
        // An initialised state is refused as such whatever the serial looks like.
        if !dir.settings_path().exists()
            && let Some(s) = serial
        {
            validate_serial(s)?;
        }
        fsutil::ensure_private_dir(&dir.root).map_err(|e| dir.io(e))?;
        let _lock = lock(dir)?;
        if dir.settings_path().exists() {
            let existing = Instance::open(dir)?;
            return Err(IdentityError::AlreadyInitialised {
                dir: dir.display(),
                instance: existing.settings.instance,
                serial: existing.settings.serial.unwrap_or_else(|| "none".into()),
            });
        }
        if let Some(s) = serial {
            validate_serial(s)?;
        }
        create_locked(dir, serial, clock)
    }

    /// Open the identity in `dir`, or create one (the first boot of a sealed image).
    /// Returns the instance and whether it was just created.
    pub fn open_or_init(
        dir: &StateDir,
        serial: Option<&str>,
        clock: &dyn Clock,
    ) -> Result<(Instance, bool), IdentityError> {
        if dir.settings_path().exists() {
            return Ok((Instance::open(dir)?, false));
        }
        if let Some(s) = serial {
            validate_serial(s)?;
        }
        fsutil::ensure_private_dir(&dir.root).map_err(|e| dir.io(e))?;
        let _lock = lock(dir)?;
        if dir.settings_path().exists() {
            return Ok((Instance::open(dir)?, false));
        }
        Ok((create_locked(dir, serial, clock)?, true))
    }

    /// Open an initialised instance.
    pub fn open(dir: &StateDir) -> Result<Instance, IdentityError> {
        let path = dir.settings_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotInitialised { dir: dir.display() });
            }
            Err(e) => return Err(dir.io(e)),
        };
        let settings: Settings =
            serde_json::from_str(&text).map_err(|e| IdentityError::BadSettings {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        if settings.format != INSTANCE_FORMAT {
            return Err(IdentityError::BadSettings {
                path: path.display().to_string(),
                message: format!("unknown format `{}`", settings.format),
            });
        }
        let key = SigningKey::load(&dir.key_path())?;
        if key.public_key_b64() != settings.public_key {
            return Err(IdentityError::KeyMismatch { dir: dir.display() });
        }
        Ok(Instance {
            dir: dir.clone(),
            settings,
            key,
        })
    }

    /// Open this instance's ledger.
    pub fn ledger(&self) -> Result<Ledger, IdentityError> {
        match Ledger::open(&self.dir.ledger_path()) {
            Err(LedgerError::Missing { path }) => Err(IdentityError::LedgerLost {
                ledger: path,
                instance: self.settings.instance.clone(),
            }),
            r => Ok(r?),
        }
    }

    /// Save changed settings atomically.
    pub fn save_settings(&self) -> Result<(), IdentityError> {
        write_settings(&self.dir, &self.settings)
    }

    /// Set the serial of an instance created without one (a sealed image that booted
    /// before it was registered), recording a `registered` entry. Refuses to change a
    /// serial that is already set.
    pub fn register_serial(
        &mut self,
        serial: &str,
        clock: &dyn Clock,
    ) -> Result<(), IdentityError> {
        validate_serial(serial)?;
        if let Some(existing) = &self.settings.serial {
            return Err(IdentityError::AlreadyInitialised {
                dir: self.dir.display(),
                instance: self.settings.instance.clone(),
                serial: existing.clone(),
            });
        }
        let ledger = self.ledger()?;
        let mut data = Map::new();
        data.insert("serial".into(), json!(serial));
        ledger.append(&self.key, "registered", data, clock)?;
        self.settings.serial = Some(serial.to_string());
        self.save_settings()
    }
}

fn lock(dir: &StateDir) -> Result<Flock<std::fs::File>, IdentityError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.lock_path())
        .map_err(|e| dir.io(e))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| dir.io(errno.into()))
}

fn write_settings(dir: &StateDir, settings: &Settings) -> Result<(), IdentityError> {
    let mut text = serde_json::to_vec_pretty(settings).expect("settings serialise");
    text.push(b'\n');
    fsutil::write_private_atomic(&dir.settings_path(), &text).map_err(|e| dir.io(e))
}

/// Create key, ledger and settings (settings last). Caller holds the init lock and has
/// checked that `instance.json` does not exist.
fn create_locked(
    dir: &StateDir,
    serial: Option<&str>,
    clock: &dyn Clock,
) -> Result<Instance, IdentityError> {
    // Leftovers of an interrupted init: a ledger that provably holds only its genesis (or
    // nothing) is safe to discard. Anything else (more entries, a file that does not open,
    // a newer schema, a permission error) may be real history: refuse and touch nothing.
    let ledger_path = dir.ledger_path();
    let files = ledger_files(&ledger_path);
    if files.iter().any(|p| p.exists()) {
        let orphaned = |ledger: String| IdentityError::Orphaned {
            dir: dir.display(),
            ledger,
        };
        if ledger_path.exists() {
            let entries = Ledger::open(&ledger_path)
                .and_then(|l| l.count())
                .map_err(|e| orphaned(format!("a ledger that cannot be read ({e})")))?;
            if entries > 1 {
                return Err(orphaned(format!(
                    "a ledger with {entries} entries ({})",
                    ledger_path.display()
                )));
            }
        } else if let Some(log) = [&files[1], &files[3]].into_iter().find(|p| p.exists()) {
            // A write-ahead log or journal may hold the history of a deleted database.
            return Err(orphaned(format!(
                "{} without its database {}",
                log.display(),
                ledger_path.display()
            )));
        }
        for p in &files {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(dir.io(e)),
            }
        }
    }

    // A key left by an interrupted init is kept, never overwritten: it may be the only
    // copy of a key that signed something.
    let key = match SigningKey::load(&dir.key_path()) {
        Ok(key) => key,
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate()?;
            key.save(&dir.key_path())?;
            key
        }
        Err(e) => return Err(e.into()),
    };
    let instance = hex::encode(keys::random_bytes::<16>()?);
    let mut data = Map::new();
    data.insert("serial".into(), json!(serial));
    Ledger::create(&ledger_path, &instance, &key, data, clock)?;
    fsutil::sync_dir(&dir.root).map_err(|e| dir.io(e))?;
    let settings = Settings {
        format: INSTANCE_FORMAT.into(),
        instance,
        serial: serial.map(str::to_string),
        public_key: key.public_key_b64(),
        created_at: time::format_at(clock.now()),
        service: None,
    };
    write_settings(dir, &settings)?;
    Ok(Instance {
        dir: dir.clone(),
        settings,
        key,
    })
}

/// The ledger database and the files SQLite keeps beside it.
fn ledger_files(ledger: &Path) -> [PathBuf; 4] {
    ["", "-wal", "-shm", "-journal"].map(|suffix| {
        let mut p = ledger.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

/// True when `path` looks like a state directory (has `instance.json`).
pub fn is_initialised(path: &Path) -> bool {
    StateDir::new(path).settings_path().exists()
}
