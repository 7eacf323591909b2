//! The service's signing keys: their files beside the database, their states in a rotation
//! (`vmledger service key rotate|activate|retire`), and which key signs a receipt.
//!
//! A rotation, as the operator runs it (ARCHITECTURE.md, "Key rotation"):
//! 1. [`rotate`] creates the successor, state `announced`: receipts signed by the active key
//!    carry it in `announce_key`; an appliance that accepts such a receipt trusts it next
//!    to its pinned key.
//! 2. [`activate`] makes it `active`: it signs receipts from now on; the predecessor becomes
//!    `previous` and still signs the receipts of appliances that trust no newer key (their
//!    request's `service_keys` does not name the active key), announcing the active key to
//!    them, so a copy that slept through the announcement catches up.
//! 3. [`retire`] ends the transition (or answers a compromise): the key never signs again.
//!
//! Private keys live beside the database, mode 0600: `<db>.key` for the key
//! `service init` created, `<db>.<key_id>.key` for later ones. The database pins each
//! key's public key; a file holding another key is refused ([`ServiceError::KeyMismatch`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::store::{KeyState, ServiceKeyRecord, Store};
use super::{ServiceError, SqliteStore, key_path};
use crate::keys::SigningKey;
use crate::protocol::{self, AnnouncedKey};
use crate::rules::Time;
use crate::time;

/// The file of a key created by `service key rotate`: `<db>.<key_id>.key`.
pub fn successor_path(db: &Path, key_id: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(format!(".{key_id}.key"));
    PathBuf::from(s)
}

/// The file holding key `key_id` of `db`: `<db>.<key_id>.key` when it exists, else the
/// `<db>.key` that `service init` wrote.
pub fn key_file(db: &Path, key_id: &str) -> PathBuf {
    let p = successor_path(db, key_id);
    if p.exists() { p } else { key_path(db) }
}

/// Load the private key of `rec` and check it is the one the database pins.
pub fn load(db: &Path, rec: &ServiceKeyRecord) -> Result<SigningKey, ServiceError> {
    let path = key_file(db, &rec.key_id);
    let key = SigningKey::load(&path)?;
    let found = protocol::key_id(&key.public_key());
    if found != rec.key_id {
        return Err(ServiceError::KeyMismatch {
            path: path.display().to_string(),
            db: db.display().to_string(),
            expected: rec.key_id.clone(),
            found,
        });
    }
    Ok(key)
}

/// Every key of `db`, oldest first.
pub fn list(db: &Path) -> Result<Vec<ServiceKeyRecord>, ServiceError> {
    let mut store = SqliteStore::open(db)?;
    let mut tx = store.read()?;
    Ok(tx.service_keys()?)
}

fn find<'a>(
    keys: &'a [ServiceKeyRecord],
    key_id: &str,
) -> Result<&'a ServiceKeyRecord, ServiceError> {
    keys.iter().find(|k| k.key_id == key_id).ok_or_else(|| {
        let known: Vec<String> = keys
            .iter()
            .map(|k| format!("{} ({})", k.key_id, k.state.as_str()))
            .collect();
        ServiceError::Invalid(format!(
            "no service key {key_id} in this database; its keys: {}",
            known.join(", ")
        ))
    })
}

/// `service key rotate`: create the successor of the active key (state `announced`) and
/// its file `<db>.<key_id>.key`. Refuses while another key is announced.
pub fn rotate(db: &Path, now: Time) -> Result<ServiceKeyRecord, ServiceError> {
    let mut store = SqliteStore::open(db)?;
    let mut tx = store.write()?;
    let keys = tx.service_keys()?;
    if let Some(a) = keys.iter().find(|k| k.state == KeyState::Announced) {
        return Err(ServiceError::Invalid(format!(
            "service key {} is already announced (created {}); activate it (`vmledger service key activate {}`) or retire it (`vmledger service key retire {}`) before rotating again",
            a.key_id, a.created_at, a.key_id, a.key_id
        )));
    }
    let key = SigningKey::generate()?;
    let key_id = protocol::key_id(&key.public_key());
    let path = successor_path(db, &key_id);
    key.save(&path)?;
    let rec = ServiceKeyRecord {
        key_id,
        public_key: key.public_key_b64(),
        state: KeyState::Announced,
        created_at: time::format_at(now),
        activated_at: None,
        retired_at: None,
    };
    let done = tx.put_service_key(&rec).and_then(|()| tx.commit());
    if let Err(e) = done {
        // Nothing refers to the file: do not leave a stray private key behind.
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(rec)
}

/// What [`activate`] changed.
#[derive(Debug, Clone)]
pub struct Activated {
    pub key: ServiceKeyRecord,
    /// The key it replaced (now `previous`); `None` when `key` was already active.
    pub predecessor: Option<ServiceKeyRecord>,
}

/// `service key activate KEYID`: the key (announced, or a previous one: a roll-back) signs
/// receipts from now on; the active key becomes `previous` and keeps signing for the
/// appliances that trust no newer key. Checks first that the key's file loads.
pub fn activate(db: &Path, key_id: &str, now: Time) -> Result<Activated, ServiceError> {
    let mut store = SqliteStore::open(db)?;
    let mut tx = store.write()?;
    let keys = tx.service_keys()?;
    let mut rec = find(&keys, key_id)?.clone();
    match rec.state {
        KeyState::Active => {
            return Ok(Activated {
                key: rec,
                predecessor: None,
            });
        }
        KeyState::Retired => {
            return Err(ServiceError::Invalid(format!(
                "service key {key_id} was retired{}; a retired key never signs again (create a new one with `vmledger service key rotate`)",
                rec.retired_at
                    .as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            )));
        }
        KeyState::Announced | KeyState::Previous => {}
    }
    load(db, &rec)?;
    let now_s = time::format_at(now);
    let predecessor = match keys.iter().find(|k| k.state == KeyState::Active) {
        Some(a) => {
            let mut a = a.clone();
            a.state = KeyState::Previous;
            tx.put_service_key(&a)?;
            Some(a)
        }
        None => None,
    };
    rec.state = KeyState::Active;
    rec.activated_at = Some(now_s);
    tx.put_service_key(&rec)?;
    tx.commit()?;
    Ok(Activated {
        key: rec,
        predecessor,
    })
}

/// `service key retire KEYID`: the key never signs again (and is no longer announced).
/// The active key cannot be retired: activate its successor first.
pub fn retire(db: &Path, key_id: &str, now: Time) -> Result<ServiceKeyRecord, ServiceError> {
    let mut store = SqliteStore::open(db)?;
    let mut tx = store.write()?;
    let keys = tx.service_keys()?;
    let mut rec = find(&keys, key_id)?.clone();
    match rec.state {
        KeyState::Active => {
            return Err(ServiceError::Invalid(format!(
                "service key {key_id} is the active key and would leave nothing to sign receipts; create and activate its successor first (`vmledger service key rotate`, then `vmledger service key activate NEWKEYID`)"
            )));
        }
        KeyState::Retired => return Ok(rec),
        KeyState::Announced | KeyState::Previous => {}
    }
    rec.state = KeyState::Retired;
    rec.retired_at = Some(time::format_at(now));
    tx.put_service_key(&rec)?;
    tx.commit()?;
    Ok(rec)
}

/// The key that signs one receipt, and the key that receipt announces.
#[derive(Debug, Clone)]
pub struct Choice {
    pub key_id: String,
    pub key: Arc<SigningKey>,
    pub announce: Option<AnnouncedKey>,
}

/// The keys that may sign now (loaded) and the one announced, as of one transaction.
#[derive(Debug, Clone)]
pub struct Signers {
    /// Keys that sign (`active`, `previous`), with their private keys.
    usable: Vec<(ServiceKeyRecord, Arc<SigningKey>)>,
    /// Index of the active key in `usable`.
    active: usize,
    announced: Option<ServiceKeyRecord>,
}

fn announcement(rec: &ServiceKeyRecord) -> AnnouncedKey {
    AnnouncedKey {
        key_id: rec.key_id.clone(),
        public_key: rec.public_key.clone(),
    }
}

impl Signers {
    /// Signers from key records and their loaded private keys (`load` is called for the
    /// keys that sign).
    pub fn new(
        records: &[ServiceKeyRecord],
        mut load: impl FnMut(&ServiceKeyRecord) -> Result<Arc<SigningKey>, ServiceError>,
    ) -> Result<Signers, ServiceError> {
        let mut usable = Vec::new();
        let mut active = None;
        let mut announced = None;
        for r in records {
            match r.state {
                KeyState::Active | KeyState::Previous => {
                    if r.state == KeyState::Active {
                        active = Some(usable.len());
                    }
                    usable.push((r.clone(), load(r)?));
                }
                KeyState::Announced => announced = Some(r.clone()),
                KeyState::Retired => {}
            }
        }
        let active = active.ok_or_else(|| {
            ServiceError::Invalid(
                "the service database has no active key; was it created by `vmledger service init`?"
                    .into(),
            )
        })?;
        Ok(Signers {
            usable,
            active,
            announced,
        })
    }

    /// The active key's id.
    pub fn active_id(&self) -> &str {
        &self.usable[self.active].0.key_id
    }

    /// Choose the key for a receipt answering a request whose `service_keys` is `trusted`
    /// (the key ids the appliance trusts):
    /// - the active key when the appliance trusts it (or trusts no key that still signs);
    /// - else the most recently active `previous` key it trusts, announcing the active key;
    /// - a request without `service_keys` (agents older than that member) gets the oldest
    ///   key that still signs: the one such agents were pinned to.
    ///
    /// A receipt signed by the active key announces the `announced` successor, if any.
    pub fn choose(&self, trusted: Option<&[String]>) -> Choice {
        let since = |r: &ServiceKeyRecord| {
            r.activated_at
                .clone()
                .unwrap_or_else(|| r.created_at.clone())
        };
        let pick = match trusted {
            None => (0..self.usable.len())
                .min_by_key(|&i| since(&self.usable[i].0))
                .unwrap_or(self.active),
            Some(ids) => {
                let named = |i: &usize| ids.contains(&self.usable[*i].0.key_id);
                if named(&self.active) {
                    self.active
                } else {
                    (0..self.usable.len())
                        .filter(named)
                        .max_by_key(|&i| since(&self.usable[i].0))
                        .unwrap_or(self.active)
                }
            }
        };
        let (rec, key) = &self.usable[pick];
        let announce = if pick == self.active {
            self.announced.as_ref().map(announcement)
        } else {
            Some(announcement(&self.usable[self.active].0))
        };
        Choice {
            key_id: rec.key_id.clone(),
            key: key.clone(),
            announce,
        }
    }
}

/// Private keys loaded from `db`'s key files, kept across transactions (a key file is
/// read once per process); the records come from each transaction, so a key an operator
/// activates or retires takes effect at the next check-in.
#[derive(Debug)]
pub struct KeyRing {
    db: PathBuf,
    loaded: HashMap<String, Arc<SigningKey>>,
}

impl KeyRing {
    pub fn new(db: &Path) -> KeyRing {
        KeyRing {
            db: db.to_path_buf(),
            loaded: HashMap::new(),
        }
    }

    /// The signers for `records` (read in the current transaction).
    pub fn signers(&mut self, records: &[ServiceKeyRecord]) -> Result<Signers, ServiceError> {
        let db = self.db.clone();
        let loaded = &mut self.loaded;
        Signers::new(records, |r| {
            if let Some(k) = loaded.get(&r.key_id) {
                return Ok(k.clone());
            }
            let k = Arc::new(load(&db, r)?);
            loaded.insert(r.key_id.clone(), k.clone());
            Ok(k)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key record for the key with seed `[seed; 32]`.
    fn rec(seed: u8, state: KeyState, activated: Option<&str>) -> ServiceKeyRecord {
        let k = SigningKey::from_seed(&[seed; 32]);
        ServiceKeyRecord {
            key_id: protocol::key_id(&k.public_key()),
            public_key: k.public_key_b64(),
            state,
            created_at: format!("2027-01-0{seed}T00:00:00.000Z"),
            activated_at: activated.map(str::to_string),
            retired_at: None,
        }
    }

    fn signers(recs: &[ServiceKeyRecord]) -> Signers {
        Signers::new(recs, |r| {
            let seed = r.created_at[9..10].parse().unwrap();
            Ok(Arc::new(SigningKey::from_seed(&[seed; 32])))
        })
        .unwrap()
    }

    #[test]
    fn choice_follows_the_rotation() {
        let a = rec(1, KeyState::Active, Some("2027-01-01T00:00:00.000Z"));
        let b = rec(2, KeyState::Announced, None);
        let (ida, idb) = (a.key_id.clone(), b.key_id.clone());
        // Announced: the active key signs and announces the successor, whatever is trusted.
        let s = signers(&[a.clone(), b.clone()]);
        for t in [
            None,
            Some(vec![ida.clone()]),
            Some(vec![ida.clone(), idb.clone()]),
        ] {
            let c = s.choose(t.as_deref());
            assert_eq!(c.key_id, ida);
            assert_eq!(c.announce.as_ref().unwrap().key_id, idb);
            assert_eq!(protocol::key_id(&c.key.public_key()), ida);
        }
        // Activated: an appliance that trusts B gets B; one that trusts only A gets A
        // announcing B; a request naming nothing gets the oldest key that signs (A).
        let a = ServiceKeyRecord {
            state: KeyState::Previous,
            ..a
        };
        let b = ServiceKeyRecord {
            state: KeyState::Active,
            activated_at: Some("2027-02-01T00:00:00.000Z".into()),
            ..b
        };
        let s = signers(&[a.clone(), b.clone()]);
        let c = s.choose(Some(&[ida.clone(), idb.clone()]));
        assert_eq!((c.key_id.as_str(), c.announce), (idb.as_str(), None));
        assert_eq!(protocol::key_id(&c.key.public_key()), idb);
        let c = s.choose(Some(std::slice::from_ref(&ida)));
        assert_eq!(c.key_id, ida);
        assert_eq!(c.announce.unwrap().key_id, idb);
        assert_eq!(s.choose(None).key_id, ida);
        // Naming only unknown keys: the active key.
        assert_eq!(s.choose(Some(&["00".repeat(8)])).key_id, idb);
        // Retired: A never signs again.
        let a = ServiceKeyRecord {
            state: KeyState::Retired,
            ..a
        };
        let s = signers(&[a, b]);
        assert_eq!(s.choose(Some(std::slice::from_ref(&ida))).key_id, idb);
        assert_eq!(s.choose(None).key_id, idb);
    }
}
