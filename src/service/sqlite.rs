//! The SQLite backend of [`Store`]: one database file in WAL mode with
//! `synchronous=FULL` (every commit is durable), its own numbered migrations (applied by
//! [`crate::db`]), and append-only triggers on entries, verdicts and overrides.
//!
//! Throughput comes from group commit, not from weaker durability: the service's writer
//! runs a whole batch of check-ins in one transaction, so one fsync covers them all.
//! Admin commands open the same file from another process; WAL lets them read while the
//! service writes, and the busy timeout serialises writers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::de::DeserializeOwned;

use super::store::{
    Activation, InstanceRecord, KeyState, OverrideRecord, SerialRecord, ServiceKeyRecord, Store,
    StoreError, StoredEntry, Tx, VerdictRecord,
};
use crate::db::{self, Migration};
use crate::rules::Window;

/// The service schema's migrations, in order. Never edit a shipped one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/0001_service.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/0002_key_rotation.sql"),
    },
];

/// A service database.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    cache: Cache,
}

/// Records read recently by this connection, valid only while no *other* connection has
/// committed: `PRAGMA data_version` changes whenever another connection (an admin command)
/// commits, and the whole cache is dropped then, so a cached record never hides an
/// operator's change. A rolled-back transaction drops it too.
#[derive(Default)]
struct Cache {
    data_version: i64,
    serials: HashMap<String, SerialRecord>,
    instances: HashMap<String, InstanceRecord>,
    windows: HashMap<String, Vec<Window>>,
    /// The service keys (read by every check-in batch to choose the signing key).
    keys: Option<Vec<ServiceKeyRecord>>,
}

/// Cached records beyond this are dropped (memory stays bounded on large fleets).
const CACHE_LIMIT: usize = 50_000;

impl Cache {
    fn clear(&mut self) {
        self.serials.clear();
        self.instances.clear();
        self.windows.clear();
        self.keys = None;
    }

    fn bound(&mut self) {
        if self.instances.len() > CACHE_LIMIT || self.serials.len() > CACHE_LIMIT {
            self.clear();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl SqliteStore {
    /// Open an existing service database (bringing its schema up to date).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        let conn = db::open(path, MIGRATIONS, false).map_err(|e| backend(path, e))?;
        tune(&conn).map_err(|e| backend(path, e))?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            cache: Cache::default(),
        })
    }

    /// Create a new service database whose active key is `public_key` (`key_id`).
    /// Refuses when the file already holds a service key.
    pub fn create(
        path: &Path,
        key_id: &str,
        public_key: &str,
        now: &str,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = db::open(path, MIGRATIONS, true).map_err(|e| backend(path, e))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(path, e))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT key_id FROM service_keys WHERE state = 'active'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| backend(path, e))?;
        if let Some(key_id) = existing {
            return Err(StoreError::AlreadyInitialised {
                path: path.display().to_string(),
                key_id,
            });
        }
        tx.execute(
            "INSERT INTO service_keys (key_id, public_key, created_at, active, state, activated_at) VALUES (?1, ?2, ?3, 1, 'active', ?3)",
            params![key_id, public_key, now],
        )
        .map_err(|e| backend(path, e))?;
        tx.commit().map_err(|e| backend(path, e))?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            cache: Cache::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Connection settings for a busy service: a page cache large enough that the working set
/// of a batch never goes back to the OS (durability settings stay as `db` sets them).
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // Read the database file through the page cache mapping instead of copies, and
    // checkpoint the WAL less often: hot pages are written to the database file once per
    // checkpoint instead of once per 1000 pages of log.
    conn.query_row("PRAGMA mmap_size = 268435456", [], |_| Ok(()))?;
    conn.query_row("PRAGMA wal_autocheckpoint = 16384", [], |_| Ok(()))?;
    Ok(())
}

impl SqliteStore {
    fn begin(&mut self, behavior: TransactionBehavior) -> Result<Box<dyn Tx + '_>, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(behavior)
            .map_err(|e| backend(&path, e))?;
        // Inside the transaction: the snapshot this transaction sees.
        let version: i64 = tx
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| backend(&path, e))?;
        if version != self.cache.data_version {
            self.cache.clear();
            self.cache.data_version = version;
        }
        self.cache.bound();
        Ok(Box::new(SqliteTx {
            tx: Some(tx),
            path,
            cache: &mut self.cache,
        }))
    }
}

impl Store for SqliteStore {
    fn write(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        self.begin(TransactionBehavior::Immediate)
    }

    fn read(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        self.begin(TransactionBehavior::Deferred)
    }
}

struct SqliteTx<'c> {
    /// `None` once committed.
    tx: Option<rusqlite::Transaction<'c>>,
    path: PathBuf,
    cache: &'c mut Cache,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Rolled back: what the cache learned in it may never have happened.
            self.cache.clear();
        }
    }
}

impl<'c> SqliteTx<'c> {
    /// The open transaction (present until `commit` consumes this value).
    fn t(&self) -> &rusqlite::Transaction<'c> {
        self.tx
            .as_ref()
            .expect("a transaction is open until commit consumes it")
    }
}

impl SqliteTx<'_> {
    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        backend(&self.path, e)
    }

    fn json<T: DeserializeOwned>(&self, what: &str, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    fn to_json<T: serde::Serialize>(&self, v: &T) -> Result<String, StoreError> {
        serde_json::to_string(v).map_err(|e| self.err(e))
    }
}

const SERIAL_COLS: &str = "serial, activation_code, ends, contact, created_at, updated_at, state";
const INSTANCE_COLS: &str =
    "instance, serial, public_key, activation, created_at, activated_at, last_checkin_at, state";
const ENTRY_COLS: &str =
    "instance, hash, prev, seq, kind, at, boot_id, branch, arrived_at, body, sig";
const VERDICT_COLS: &str = "id, serial, instance, kind, rule, decided_at, review, evidence";

type SerialRow = (
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);
type InstanceRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

fn serial_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SerialRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn instance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        instance: r.get(0)?,
        hash: r.get(1)?,
        prev: r.get(2)?,
        seq: r.get::<_, i64>(3)? as u64,
        kind: r.get(4)?,
        at: r.get(5)?,
        boot_id: r.get(6)?,
        branch: r.get::<_, i64>(7)? as u32,
        arrived_at: r.get(8)?,
        body: r.get(9)?,
        sig: r.get(10)?,
    })
}

fn verdict_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VerdictRecord> {
    Ok(VerdictRecord {
        id: r.get(0)?,
        serial: r.get(1)?,
        instance: r.get(2)?,
        kind: r.get(3)?,
        rule: r.get(4)?,
        decided_at: r.get(5)?,
        review: r.get::<_, i64>(6)? != 0,
        evidence: r.get(7)?,
    })
}

fn override_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OverrideRecord> {
    Ok(OverrideRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        serial: r.get(3)?,
        instance: r.get(4)?,
        detail: r.get(5)?,
        reason: r.get(6)?,
        operator: r.get(7)?,
    })
}

impl SqliteTx<'_> {
    fn serial_from(&self, row: SerialRow) -> Result<SerialRecord, StoreError> {
        let state = self.json(&format!("serial {} state", row.0), &row.6)?;
        Ok(SerialRecord {
            serial: row.0,
            activation_code: row.1,
            ends: row.2,
            contact: row.3,
            created_at: row.4,
            updated_at: row.5,
            state,
        })
    }

    fn instance_from(&self, row: InstanceRow) -> Result<InstanceRecord, StoreError> {
        let state = self.json(&format!("instance {} state", row.0), &row.7)?;
        let activation = match row.3.as_str() {
            "active" => Activation::Active,
            "pending" => Activation::Pending,
            other => {
                return Err(StoreError::Corrupt {
                    path: self.path.display().to_string(),
                    what: format!("instance {} activation", row.0),
                    message: format!("unknown value `{other}`"),
                });
            }
        };
        Ok(InstanceRecord {
            instance: row.0,
            serial: row.1,
            public_key: row.2,
            activation,
            created_at: row.4,
            activated_at: row.5,
            last_checkin_at: row.6,
            state,
        })
    }
}

impl Tx for SqliteTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let path = self.path.clone();
        match self.tx.take() {
            Some(tx) => tx.commit().map_err(|e| {
                self.cache.clear();
                backend(&path, e)
            }),
            None => Ok(()),
        }
    }

    fn service_key(&mut self) -> Result<(String, String), StoreError> {
        self.t()
            .query_row(
                "SELECT key_id, public_key FROM service_keys WHERE state = 'active'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.display().to_string(),
                what: "service_keys".into(),
                message:
                    "no active service key; was the database created by `vmledger service init`?"
                        .into(),
            })
    }

    fn service_keys(&mut self) -> Result<Vec<ServiceKeyRecord>, StoreError> {
        if let Some(k) = &self.cache.keys {
            return Ok(k.clone());
        }
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = {
            let mut st = self
                .t()
                .prepare_cached(
                    "SELECT key_id, public_key, state, created_at, activated_at, retired_at FROM service_keys ORDER BY created_at, rowid",
                )
                .map_err(|e| self.err(e))?;
            st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|it| it.collect())
            .map_err(|e| self.err(e))?
        };
        let mut keys = Vec::with_capacity(rows.len());
        for (key_id, public_key, state, created_at, activated_at, retired_at) in rows {
            let state = KeyState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.display().to_string(),
                what: format!("service key {key_id} state"),
                message: format!("unknown value `{state}`"),
            })?;
            keys.push(ServiceKeyRecord {
                key_id,
                public_key,
                state,
                created_at,
                activated_at,
                retired_at,
            });
        }
        self.cache.keys = Some(keys.clone());
        Ok(keys)
    }

    fn put_service_key(&mut self, rec: &ServiceKeyRecord) -> Result<(), StoreError> {
        self.cache.keys = None;
        let active = i64::from(rec.state == KeyState::Active);
        self.t()
            .execute(
                "INSERT INTO service_keys (key_id, public_key, created_at, active, state, activated_at, retired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (key_id) DO UPDATE SET active = excluded.active, state = excluded.state,
                     activated_at = excluded.activated_at, retired_at = excluded.retired_at",
                params![
                    rec.key_id,
                    rec.public_key,
                    rec.created_at,
                    active,
                    rec.state.as_str(),
                    rec.activated_at,
                    rec.retired_at
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn serial(&mut self, serial: &str) -> Result<Option<SerialRecord>, StoreError> {
        if let Some(r) = self.cache.serials.get(serial) {
            return Ok(Some(r.clone()));
        }
        let row = self
            .t()
            .prepare_cached(&format!(
                "SELECT {SERIAL_COLS} FROM serials WHERE serial = ?1"
            ))
            .and_then(|mut s| s.query_row([serial], serial_row).optional())
            .map_err(|e| self.err(e))?;
        let rec = row.map(|r| self.serial_from(r)).transpose()?;
        if let Some(r) = &rec {
            self.cache.serials.insert(r.serial.clone(), r.clone());
        }
        Ok(rec)
    }

    fn put_serial(&mut self, rec: &SerialRecord) -> Result<(), StoreError> {
        let state = self.to_json(&rec.state)?;
        self.t()
            .prepare_cached(&format!(
                "INSERT INTO serials ({SERIAL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(serial) DO UPDATE SET activation_code = excluded.activation_code,
                 ends = excluded.ends, contact = excluded.contact,
                 updated_at = excluded.updated_at, state = excluded.state"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    rec.serial,
                    rec.activation_code,
                    rec.ends,
                    rec.contact,
                    rec.created_at,
                    rec.updated_at,
                    state
                ])
            })
            .map_err(|e| self.err(e))?;
        self.cache.serials.insert(rec.serial.clone(), rec.clone());
        Ok(())
    }

    fn serials(&mut self) -> Result<Vec<SerialRecord>, StoreError> {
        let rows: Vec<SerialRow> = self
            .t()
            .prepare_cached(&format!(
                "SELECT {SERIAL_COLS} FROM serials ORDER BY serial"
            ))
            .and_then(|mut s| s.query_map([], serial_row)?.collect())
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(|r| self.serial_from(r)).collect()
    }

    fn instance(&mut self, instance: &str) -> Result<Option<InstanceRecord>, StoreError> {
        if let Some(r) = self.cache.instances.get(instance) {
            return Ok(Some(r.clone()));
        }
        let row = self
            .t()
            .prepare_cached(&format!(
                "SELECT {INSTANCE_COLS} FROM instances WHERE instance = ?1"
            ))
            .and_then(|mut s| s.query_row([instance], instance_row).optional())
            .map_err(|e| self.err(e))?;
        let rec = row.map(|r| self.instance_from(r)).transpose()?;
        if let Some(r) = &rec {
            self.cache.instances.insert(r.instance.clone(), r.clone());
        }
        Ok(rec)
    }

    fn put_instance(&mut self, rec: &InstanceRecord) -> Result<(), StoreError> {
        let state = self.to_json(&rec.state)?;
        self.t()
            .prepare_cached(&format!(
                "INSERT INTO instances ({INSTANCE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(instance) DO UPDATE SET activation = excluded.activation,
                 activated_at = excluded.activated_at, last_checkin_at = excluded.last_checkin_at,
                 state = excluded.state"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    rec.instance,
                    rec.serial,
                    rec.public_key,
                    rec.activation.as_str(),
                    rec.created_at,
                    rec.activated_at,
                    rec.last_checkin_at,
                    state
                ])
            })
            .map_err(|e| self.err(e))?;
        self.cache
            .instances
            .insert(rec.instance.clone(), rec.clone());
        Ok(())
    }

    fn instances_of(&mut self, serial: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows: Vec<InstanceRow> = self
            .t()
            .prepare_cached(&format!(
                "SELECT {INSTANCE_COLS} FROM instances WHERE serial = ?1 ORDER BY created_at, instance"
            ))
            .and_then(|mut s| s.query_map([serial], instance_row)?.collect())
            .map_err(|e| self.err(e))?;
        rows.into_iter().map(|r| self.instance_from(r)).collect()
    }

    fn activations_since(&mut self, serial: &str, since: &str) -> Result<u32, StoreError> {
        self.t()
            .prepare_cached(
                "SELECT count(*) FROM instances WHERE serial = ?1 AND activated_at >= ?2",
            )
            .and_then(|mut s| s.query_row(params![serial, since], |r| r.get::<_, i64>(0)))
            .map(|n| n as u32)
            .map_err(|e| self.err(e))
    }

    fn entry(
        &mut self,
        instance: &str,
        seq: u64,
        hash: &str,
    ) -> Result<Option<StoredEntry>, StoreError> {
        self.t()
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE instance = ?1 AND seq = ?2 AND hash = ?3"
            ))
            .and_then(|mut s| {
                s.query_row(params![instance, seq as i64, hash], entry_row)
                    .optional()
            })
            .map_err(|e| self.err(e))
    }

    fn find_entry(
        &mut self,
        instance: &str,
        hash: &str,
    ) -> Result<Option<StoredEntry>, StoreError> {
        self.t()
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE instance = ?1 AND hash = ?2"
            ))
            .and_then(|mut s| s.query_row([instance, hash], entry_row).optional())
            .map_err(|e| self.err(e))
    }

    fn child_of(
        &mut self,
        instance: &str,
        seq: u64,
        prev: &str,
    ) -> Result<Option<StoredEntry>, StoreError> {
        self.t()
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE instance = ?1 AND seq = ?2 AND prev = ?3 LIMIT 1"
            ))
            .and_then(|mut s| {
                s.query_row(params![instance, seq as i64, prev], entry_row)
                    .optional()
            })
            .map_err(|e| self.err(e))
    }

    fn insert_entry(&mut self, e: &StoredEntry) -> Result<(), StoreError> {
        self.t()
            .prepare_cached(&format!(
                "INSERT INTO entries ({ENTRY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    e.instance,
                    e.hash,
                    e.prev,
                    e.seq as i64,
                    e.kind,
                    e.at,
                    e.boot_id,
                    e.branch as i64,
                    e.arrived_at,
                    e.body,
                    e.sig
                ])
            })
            .map_err(|x| self.err(x))?;
        Ok(())
    }

    fn branch_entries(
        &mut self,
        instance: &str,
        branch: u32,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let mut rows: Vec<StoredEntry> = self
            .t()
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE instance = ?1 AND seq > ?3 AND branch = ?2
                 ORDER BY seq DESC LIMIT ?4"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![instance, branch as i64, after_seq as i64, limit as i64],
                    entry_row,
                )?
                .collect()
            })
            .map_err(|e| self.err(e))?;
        rows.reverse();
        Ok(rows)
    }

    fn entry_count(&mut self, instance: &str) -> Result<u64, StoreError> {
        self.t()
            .prepare_cached("SELECT count(*) FROM entries WHERE instance = ?1")
            .and_then(|mut s| s.query_row([instance], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn nonce_seen(&mut self, instance: &str, nonce: &str) -> Result<bool, StoreError> {
        self.t()
            .prepare_cached("SELECT 1 FROM nonces WHERE instance = ?1 AND nonce = ?2")
            .and_then(|mut s| s.exists([instance, nonce]))
            .map_err(|e| self.err(e))
    }

    fn put_nonce(&mut self, instance: &str, nonce: &str, at: &str) -> Result<(), StoreError> {
        self.t()
            .prepare_cached("INSERT INTO nonces (instance, nonce, seen_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute([instance, nonce, at]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn prune_nonces(&mut self, before: &str) -> Result<u64, StoreError> {
        self.t()
            .execute("DELETE FROM nonces WHERE seen_at < ?1", [before])
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    fn insert_verdict(&mut self, v: &VerdictRecord) -> Result<(), StoreError> {
        self.t()
            .prepare_cached(&format!(
                "INSERT INTO verdicts ({VERDICT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    v.id,
                    v.serial,
                    v.instance,
                    v.kind,
                    v.rule,
                    v.decided_at,
                    v.review as i64,
                    v.evidence
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn verdict(&mut self, id: &str) -> Result<Option<VerdictRecord>, StoreError> {
        self.t()
            .prepare_cached(&format!(
                "SELECT {VERDICT_COLS} FROM verdicts WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row([id], verdict_row).optional())
            .map_err(|e| self.err(e))
    }

    fn verdicts_of(&mut self, serial: &str) -> Result<Vec<VerdictRecord>, StoreError> {
        self.t()
            .prepare_cached(&format!(
                "SELECT {VERDICT_COLS} FROM verdicts WHERE serial = ?1 ORDER BY decided_at, rowid"
            ))
            .and_then(|mut s| s.query_map([serial], verdict_row)?.collect())
            .map_err(|e| self.err(e))
    }

    fn insert_override(&mut self, o: &OverrideRecord) -> Result<i64, StoreError> {
        self.cache.windows.remove(&o.serial);
        self.t()
            .execute(
                "INSERT INTO overrides (at, kind, serial, instance, detail, reason, operator)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    o.at, o.kind, o.serial, o.instance, o.detail, o.reason, o.operator
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.t().last_insert_rowid())
    }

    fn overrides_of(&mut self, serial: &str) -> Result<Vec<OverrideRecord>, StoreError> {
        self.t()
            .prepare_cached(
                "SELECT id, at, kind, serial, instance, detail, reason, operator FROM overrides
                 WHERE serial = ?1 ORDER BY id",
            )
            .and_then(|mut s| s.query_map([serial], override_row)?.collect())
            .map_err(|e| self.err(e))
    }

    fn windows(&mut self, serial: &str) -> Result<Vec<Window>, StoreError> {
        if let Some(w) = self.cache.windows.get(serial) {
            return Ok(w.clone());
        }
        let details: Vec<String> = self
            .t()
            .prepare_cached(
                "SELECT detail FROM overrides WHERE serial = ?1 AND kind = 'allow_concurrent' ORDER BY id",
            )
            .and_then(|mut s| s.query_map([serial], |r| r.get(0))?.collect())
            .map_err(|e| self.err(e))?;
        let windows: Vec<Window> = details
            .iter()
            .map(|d| self.json("allow_concurrent override", d))
            .collect::<Result<_, _>>()?;
        self.cache
            .windows
            .insert(serial.to_string(), windows.clone());
        Ok(windows)
    }

    fn alert_sent(&mut self, serial: &str, ends: &str, stage: &str) -> Result<bool, StoreError> {
        self.t()
            .prepare_cached("SELECT 1 FROM alerts WHERE serial = ?1 AND ends = ?2 AND stage = ?3")
            .and_then(|mut s| s.exists([serial, ends, stage]))
            .map_err(|e| self.err(e))
    }

    fn record_alert(
        &mut self,
        serial: &str,
        ends: &str,
        stage: &str,
        to: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        self.t()
            .execute(
                "INSERT OR IGNORE INTO alerts (serial, ends, stage, sent_to, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                [serial, ends, stage, to, at],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_migrations_are_never_edited() {
        let pinned = [
            "e57b826295cf05e4ff72975b45e2e68c3d9e830c528759a5ef73435181930026",
            "567573cb1043baf98f80dad59ca22c14781e09b86948380402b3905e388f2362",
        ];
        assert_eq!(
            MIGRATIONS.len(),
            pinned.len(),
            "pin every shipped migration"
        );
        for (m, want) in MIGRATIONS.iter().zip(pinned) {
            assert_eq!(
                db::migration_digest(m),
                want,
                "migration {} was edited",
                m.version
            );
        }
    }

    #[test]
    fn migration_2_keeps_the_key_of_a_shipped_database_active() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sqlite");
        // A database as the first release left it.
        let conn = db::open(&p, &MIGRATIONS[..1], true).unwrap();
        conn.execute(
            "INSERT INTO service_keys (key_id, public_key, created_at, active) VALUES ('k1', 'pk1', '2027-01-01T00:00:00.000Z', 1)",
            [],
        )
        .unwrap();
        drop(conn);
        let mut s = SqliteStore::open(&p).unwrap();
        let mut tx = s.write().unwrap();
        let keys = tx.service_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].state, KeyState::Active);
        assert_eq!(
            keys[0].activated_at.as_deref(),
            Some("2027-01-01T00:00:00.000Z")
        );
        assert_eq!(tx.service_key().unwrap().0, "k1");
        // One active key at most; a retired key never changes; keys are never deleted.
        let mut k2 = keys[0].clone();
        k2.key_id = "k2".into();
        assert!(tx.put_service_key(&k2).is_err());
        k2.state = KeyState::Retired;
        tx.put_service_key(&k2).unwrap();
        k2.state = KeyState::Active;
        assert!(tx.put_service_key(&k2).is_err());
        tx.commit().unwrap();
        assert!(s.conn.execute("DELETE FROM service_keys", []).is_err());
    }

    #[test]
    fn create_refuses_twice_and_entries_are_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sqlite");
        drop(SqliteStore::create(&p, "k1", "pk", "2027-01-01T00:00:00.000Z").unwrap());
        let err = SqliteStore::create(&p, "k2", "pk2", "2027-01-01T00:00:00.000Z").unwrap_err();
        assert!(err.to_string().contains("already initialised"), "{err}");
        let mut s = SqliteStore::open(&p).unwrap();
        let mut tx = s.write().unwrap();
        assert_eq!(tx.service_key().unwrap().0, "k1");
        let e = StoredEntry {
            instance: "i".into(),
            hash: "h".into(),
            prev: "p".into(),
            seq: 1,
            kind: "boot".into(),
            at: "a".into(),
            boot_id: "b".into(),
            branch: 0,
            arrived_at: "t".into(),
            body: "{}".into(),
            sig: "s".into(),
        };
        tx.insert_entry(&e).unwrap();
        assert!(tx.insert_entry(&e).is_err());
        tx.commit().unwrap();
        assert!(s.conn.execute("UPDATE entries SET kind = 'x'", []).is_err());
        assert!(s.conn.execute("DELETE FROM entries", []).is_err());
    }
}
