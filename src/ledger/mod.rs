//! The signed, hash-chained, append-only ledger in SQLite.
//!
//! Owns `ledger.sqlite` (the appliance's ledger, and the host hooks' per-domain ledgers,
//! which use the same format): appending entries, reading them back, verification and
//! export. Appends are `BEGIN IMMEDIATE` transactions that read the head and insert its
//! successor, so concurrent writers (a boot hook and a timer) serialise and can never
//! fork the chain; `prev` is also `UNIQUE` in the schema. The ledger's time never runs
//! backwards: an entry's `at` is the later of the clock and the head's `at`.
//!
//! Appending is O(1) in the ledger's length: it reads only the head row.

pub mod entry;
pub mod export;
pub mod verify;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use chrono::Duration;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value, json};

use crate::db::{self, DbError, Migration};
use crate::keys::SigningKey;
use crate::time::{self, Clock};
pub use entry::{Body, Entry, GENESIS_PREV, Problem};

/// The ledger schema's migrations, in order. Never edit a shipped one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/0001_entries.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/0002_agent.sql"),
    },
];

/// How far the system clock may lag the ledger's time before a `clock_anomaly` entry
/// records it.
pub const CLOCK_ANOMALY_THRESHOLD: Duration = Duration::minutes(5);

/// Ledger errors, naming the file and, where it applies, the seq.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("ledger {path} does not exist; run `vmledger init` (or `vmledger boot`) first")]
    Missing { path: String },
    #[error("ledger {path} is empty (no genesis entry)")]
    Empty { path: String },
    #[error(
        "ledger {path}, seq {seq}: {problem}; the ledger is damaged: run `vmledger ledger verify` to see the first bad entry, and keep a copy of the state directory for support"
    )]
    Corrupt {
        path: String,
        seq: u64,
        problem: Problem,
    },
    #[error("ledger {path}: cannot append `{kind}`: {problem}")]
    Refused {
        path: String,
        kind: String,
        problem: Problem,
    },
}

/// The newest entry's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub at: String,
}

/// An open ledger database.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

/// A raw stored row, before parsing.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: u64,
    pub hash: String,
    pub prev: String,
    pub kind: String,
    pub body: String,
    pub sig: String,
    /// Why a text column could not be read as stored (not UTF-8, not text): the columns
    /// above then hold a lossy rendering and [`Row::parse`] fails with this.
    pub unreadable: Option<String>,
}

impl Row {
    /// Parse the stored body into an [`Entry`] and check the denormalised columns agree.
    pub fn parse(&self) -> Result<Entry, Problem> {
        if let Some(why) = &self.unreadable {
            return Err(Problem::Unparseable(why.clone()));
        }
        let body: Body =
            serde_json::from_str(&self.body).map_err(|e| Problem::Unparseable(e.to_string()))?;
        if body.seq != self.seq {
            return Err(Problem::SeqMismatch {
                stored: self.seq,
                body: body.seq,
            });
        }
        if body.prev != self.prev {
            return Err(Problem::ColumnMismatch {
                column: "prev",
                stored: self.prev.clone(),
                body: body.prev,
            });
        }
        if body.kind != self.kind {
            return Err(Problem::ColumnMismatch {
                column: "kind",
                stored: self.kind.clone(),
                body: body.kind,
            });
        }
        Ok(Entry {
            body,
            hash: self.hash.clone(),
            sig: self.sig.clone(),
        })
    }
}

const ROW_COLUMNS: &str = "seq, hash, prev, kind, body, sig";

/// Read a row without trusting its bytes: a column that is not valid UTF-8 text makes the
/// row unparseable (a problem of that seq, reported by `ledger verify`), not an error.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let mut unreadable = None;
    let mut text = |idx: usize, name: &str| -> rusqlite::Result<String> {
        let (bytes, what) = match r.get_ref(idx)? {
            ValueRef::Text(b) => (b, "text"),
            ValueRef::Blob(b) => (b, "blob"),
            other => {
                unreadable.get_or_insert_with(|| {
                    format!("stored {name} is {:?}, not text", other.data_type())
                });
                return Ok(String::new());
            }
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => {
                let at = e.valid_up_to();
                unreadable.get_or_insert_with(|| {
                    format!(
                        "stored {name} is not valid UTF-8 {what} (byte {at} is 0x{:02x})",
                        bytes[at]
                    )
                });
                Ok(String::from_utf8_lossy(bytes).into_owned())
            }
        }
    };
    let hash = text(1, "hash")?;
    let prev = text(2, "prev")?;
    let kind = text(3, "kind")?;
    let body = text(4, "body")?;
    let sig = text(5, "sig")?;
    Ok(Row {
        seq: r.get::<_, i64>(0)? as u64,
        hash,
        prev,
        kind,
        body,
        sig,
        unreadable,
    })
}

impl Ledger {
    /// Open an existing ledger (bringing its schema up to date).
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing {
                path: path.display().to_string(),
            });
        }
        let conn = db::open(path, MIGRATIONS, false)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Create a new ledger whose genesis entry names `instance`, the signer's public key
    /// and whatever else the caller puts in `data` (e.g. `serial`).
    pub fn create(
        path: &Path,
        instance: &str,
        key: &SigningKey,
        mut data: Map<String, Value>,
        clock: &dyn Clock,
    ) -> Result<Ledger, LedgerError> {
        let conn = db::open(path, MIGRATIONS, true)?;
        let ledger = Ledger {
            conn,
            path: path.to_path_buf(),
        };
        data.insert("public_key".into(), json!(key.public_key_b64()));
        let kernel = clock.kernel();
        let body = Body {
            v: entry::BODY_VERSION,
            instance: instance.to_string(),
            seq: 0,
            prev: GENESIS_PREV.to_string(),
            kind: "genesis".into(),
            at: time::format_at(clock.now()),
            boot_id: kernel.boot_id,
            uptime_ms: kernel.uptime_ms,
            data,
        };
        let e = Entry::seal(body, key).map_err(|problem| ledger.refused("genesis", problem))?;
        let tx = ledger.begin()?;
        if tx
            .query_row("SELECT 1 FROM entries LIMIT 1", [], |_| Ok(()))
            .optional()
            .map_err(|e| ledger.sql(e))?
            .is_some()
        {
            return Err(ledger.refused(
                "genesis",
                Problem::Genesis("the ledger already has entries".into()),
            ));
        }
        insert(&tx, &e).map_err(|e| ledger.sql(e))?;
        tx.commit().map_err(|e| ledger.sql(e))?;
        Ok(ledger)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn refused(&self, kind: &str, problem: Problem) -> LedgerError {
        LedgerError::Refused {
            path: self.path.display().to_string(),
            kind: kind.to_string(),
            problem,
        }
    }

    fn corrupt(&self, seq: u64, problem: Problem) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.display().to_string(),
            seq,
            problem,
        }
    }

    fn begin(&self) -> Result<rusqlite::Transaction<'_>, LedgerError> {
        // `Transaction::new_unchecked` takes `&Connection`; appends need IMMEDIATE so the
        // head read and the insert happen under one write lock.
        rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))
    }

    /// Append one entry of `kind` with `data`, signed by `key`. Returns the new entry.
    ///
    /// When the clock lags the ledger's time by more than [`CLOCK_ANOMALY_THRESHOLD`], a
    /// `clock_anomaly` entry recording the clock's reading is appended first (once per
    /// episode: again after the clock has been seen sane, or after a reboot).
    pub fn append(
        &self,
        key: &SigningKey,
        kind: &str,
        data: Map<String, Value>,
        clock: &dyn Clock,
    ) -> Result<Entry, LedgerError> {
        let tx = self.begin()?;
        let head = head_row(&tx)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| LedgerError::Empty {
                path: self.path.display().to_string(),
            })?;
        let head_entry = head.parse().map_err(|p| self.corrupt(head.seq, p))?;
        let head_at = time::parse_at(&head_entry.body.at)
            .map_err(|e| self.corrupt(head.seq, Problem::InvalidBody(e.to_string())))?;
        let now = clock.now();
        let kernel = clock.kernel();
        let instance = head_entry.body.instance.clone();

        let mut prev_seq = head.seq;
        let mut prev_hash = head.hash.clone();
        let at = if now < head_at { head_at } else { now };
        let at_text = time::format_at(at);

        let lagging = now + CLOCK_ANOMALY_THRESHOLD < head_at;
        // The open episode's boot id: an episode ends when the clock is seen sane, or
        // with the boot it was recorded in (a reboot with the clock still behind is news).
        let open = meta_get(&tx, "clock_anomaly_open").map_err(|e| self.sql(e))?;
        let recorded_this_boot = open.as_deref() == Some(kernel.boot_id.as_str());
        if lagging && !recorded_this_boot && kind != "clock_anomaly" {
            let mut d = Map::new();
            d.insert("system_clock".into(), json!(time::format_at(now)));
            d.insert("ledger_time".into(), json!(at_text));
            d.insert(
                "behind_ms".into(),
                json!((head_at - now).num_milliseconds().max(0)),
            );
            let body = Body {
                v: entry::BODY_VERSION,
                instance: instance.clone(),
                seq: prev_seq + 1,
                prev: prev_hash.clone(),
                kind: "clock_anomaly".into(),
                at: at_text.clone(),
                boot_id: kernel.boot_id.clone(),
                uptime_ms: kernel.uptime_ms,
                data: d,
            };
            let e = Entry::seal(body, key).map_err(|p| self.refused("clock_anomaly", p))?;
            insert(&tx, &e).map_err(|e| self.sql(e))?;
            meta_set(&tx, "clock_anomaly_open", &kernel.boot_id).map_err(|e| self.sql(e))?;
            prev_seq = e.body.seq;
            prev_hash = e.hash;
        } else if !lagging && open.is_some() {
            tx.execute("DELETE FROM meta WHERE key = 'clock_anomaly_open'", [])
                .map_err(|e| self.sql(e))?;
        }

        let body = Body {
            v: entry::BODY_VERSION,
            instance,
            seq: prev_seq + 1,
            prev: prev_hash,
            kind: kind.to_string(),
            at: at_text,
            boot_id: kernel.boot_id,
            uptime_ms: kernel.uptime_ms,
            data,
        };
        let e = Entry::seal(body, key).map_err(|p| self.refused(kind, p))?;
        insert(&tx, &e).map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(e)
    }

    /// The newest entry's seq, hash and time; `None` for an empty database.
    pub fn head(&self) -> Result<Option<Head>, LedgerError> {
        let Some(row) = head_row(&self.conn).map_err(|e| self.sql(e))? else {
            return Ok(None);
        };
        let e = row.parse().map_err(|p| self.corrupt(row.seq, p))?;
        Ok(Some(Head {
            seq: row.seq,
            hash: row.hash,
            at: e.body.at,
        }))
    }

    /// Number of stored entries (seqs are contiguous from 0, so the head's seq + 1: a
    /// lookup rather than a scan of the whole ledger).
    pub fn count(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT coalesce(max(seq) + 1, 0) FROM entries", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| self.sql(e))
    }

    /// The genesis entry.
    pub fn genesis(&self) -> Result<Entry, LedgerError> {
        self.entry(0)?.ok_or_else(|| LedgerError::Empty {
            path: self.path.display().to_string(),
        })
    }

    /// The entry at `seq`, if stored.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, LedgerError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM entries WHERE seq = ?1"),
                [seq as i64],
                read_row,
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        row.map(|r| r.parse().map_err(|p| self.corrupt(r.seq, p)))
            .transpose()
    }

    /// The newest entry of `kind`, if any.
    pub fn latest_of_kind(&self, kind: &str) -> Result<Option<Entry>, LedgerError> {
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM entries WHERE kind = ?1 ORDER BY seq DESC LIMIT 1"
                ),
                [kind],
                read_row,
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        row.map(|r| r.parse().map_err(|p| self.corrupt(r.seq, p)))
            .transpose()
    }

    /// Entries with `seq >= from`, in order, parsed (fails on the first unparseable one).
    pub fn entries_from(&self, from: u64) -> Result<Vec<Entry>, LedgerError> {
        let mut out = Vec::new();
        self.for_each_row(from, 1024, |rows| {
            for r in &rows {
                out.push(r.parse().map_err(|p| self.corrupt(r.seq, p))?);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// The last `n` entries, in order.
    pub fn tail(&self, n: u64) -> Result<Vec<Entry>, LedgerError> {
        let from = match self.head()? {
            Some(h) => (h.seq + 1).saturating_sub(n),
            None => return Ok(Vec::new()),
        };
        self.entries_from(from)
    }

    /// Stream raw rows with `seq >= from` in seq order, `batch` at a time, until `f`
    /// breaks. Memory stays bounded by the batch whatever the ledger's length.
    pub fn for_each_row(
        &self,
        from: u64,
        batch: usize,
        mut f: impl FnMut(Vec<Row>) -> Result<ControlFlow<()>, LedgerError>,
    ) -> Result<(), LedgerError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM entries WHERE seq >= ?1 ORDER BY seq"
            ))
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([from as i64]).map_err(|e| self.sql(e))?;
        let mut buf = Vec::with_capacity(batch);
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            buf.push(read_row(r).map_err(|e| self.sql(e))?);
            if buf.len() == batch
                && f(std::mem::replace(&mut buf, Vec::with_capacity(batch)))?.is_break()
            {
                return Ok(());
            }
        }
        if !buf.is_empty() {
            let _: ControlFlow<()> = f(buf)?;
        }
        Ok(())
    }

    /// Direct access for modules that add their own tables to this database through a
    /// migration (`checkin` and `license`: migration 2). Never use it to write `entries`.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn head_row(conn: &Connection) -> rusqlite::Result<Option<Row>> {
    conn.query_row(
        &format!("SELECT {ROW_COLUMNS} FROM entries ORDER BY seq DESC LIMIT 1"),
        [],
        read_row,
    )
    .optional()
}

fn insert(conn: &Connection, e: &Entry) -> rusqlite::Result<()> {
    let canonical = e
        .body
        .canonical()
        .map_err(|p| rusqlite::Error::ToSqlConversionFailure(Box::new(p)))?;
    conn.execute(
        "INSERT INTO entries (seq, hash, prev, kind, body, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            e.body.seq as i64,
            e.hash,
            e.body.prev,
            e.body.kind,
            canonical,
            e.sig
        ],
    )?;
    Ok(())
}

fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::FixedClock;

    fn new_ledger(dir: &Path, clock: &FixedClock) -> (Ledger, SigningKey) {
        let key = SigningKey::from_seed(&[1u8; 32]);
        let mut data = Map::new();
        data.insert("serial".into(), json!("SN-1"));
        let l = Ledger::create(
            &dir.join("ledger.sqlite"),
            "00112233445566778899aabbccddeeff",
            &key,
            data,
            clock,
        )
        .unwrap();
        (l, key)
    }

    #[test]
    fn append_links_and_time_never_runs_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let mut clock = FixedClock::at("2026-12-04T10:00:00.000Z");
        let (l, key) = new_ledger(dir.path(), &clock);
        let g = l.genesis().unwrap();
        let b = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(b.body.seq, 1);
        assert_eq!(b.body.prev, g.hash);

        // The clock steps back 2 minutes: no anomaly, time held at the ledger's.
        clock.now -= Duration::minutes(2);
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.at, "2026-12-04T10:00:00.000Z");
        assert_eq!(l.count().unwrap(), 3);

        // Back by an hour: one clock_anomaly, then the entry, both at ledger time.
        clock.now -= Duration::hours(1);
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.seq, 4);
        let a = l.entry(3).unwrap().unwrap();
        assert_eq!(a.body.kind, "clock_anomaly");
        assert_eq!(
            a.body.data["system_clock"],
            json!("2026-12-04T08:58:00.000Z")
        );
        // Same episode: no second anomaly.
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.seq, 5);
        // A reboot with the clock still behind: a new anomaly, once for that boot.
        clock.kernel.boot_id = "another-boot".into();
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.seq, 7);
        let a = l.entry(6).unwrap().unwrap();
        assert_eq!(a.body.kind, "clock_anomaly");
        assert_eq!(a.body.boot_id, "another-boot");
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.seq, 8);
        // Clock recovers, then lags again: a new episode is recorded.
        clock.now += Duration::hours(2);
        l.append(&key, "boot", Map::new(), &clock).unwrap();
        clock.now -= Duration::hours(3);
        let e = l.append(&key, "boot", Map::new(), &clock).unwrap();
        assert_eq!(e.body.seq, 11);
        assert_eq!(l.entry(10).unwrap().unwrap().body.kind, "clock_anomaly");
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::at("2026-12-04T10:00:00.000Z");
        let (l, _key) = new_ledger(dir.path(), &clock);
        let c = l.connection();
        assert!(c.execute("UPDATE entries SET kind = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM entries", []).is_err());
        assert_eq!(l.count().unwrap(), 1);
    }

    /// Bodies whose stored text the fast path cannot read in place (escapes, names beyond
    /// the BMP) verify like any other; a body signed as stored but not canonical fails.
    #[test]
    fn verify_reads_stored_bodies_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::at("2026-12-04T10:00:00.000Z");
        let (l, key) = new_ledger(dir.path(), &clock);
        let mut data = Map::new();
        data.insert(
            "\u{1}\u{1f600}".into(),
            json!("tab\there \u{e000} \"q\" \\"),
        );
        data.insert("\u{e000}".into(), json!([1, -9007199254740991_i64, null]));
        l.append(&key, "boot", data, &clock).unwrap();
        let r = verify::verify(&l, Some(&key.public_key())).unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.entries, 2);

        // A third entry, hashed and signed over a non-canonical text (members in
        // declaration order): every check but the canonical form passes.
        let head = l.head().unwrap().unwrap();
        let body = Body {
            v: 1,
            instance: "00112233445566778899aabbccddeeff".into(),
            seq: 2,
            prev: head.hash.clone(),
            kind: "boot".into(),
            at: "2026-12-04T10:00:00.000Z".into(),
            boot_id: "b".into(),
            uptime_ms: 5,
            data: Map::new(),
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_ne!(text, body.canonical().unwrap());
        let message = entry::message_from_canonical(&text);
        l.connection()
            .execute(
                "INSERT INTO entries (seq, hash, prev, kind, body, sig) VALUES (2, ?1, ?2, 'boot', ?3, ?4)",
                params![
                    entry::sha256_hex(&message),
                    head.hash,
                    text,
                    crate::keys::b64_encode(&key.sign(&message))
                ],
            )
            .unwrap();
        let r = verify::verify(&l, Some(&key.public_key())).unwrap();
        let bad = r.first_bad.expect("a non-canonical body is refused");
        assert_eq!(bad.seq, 2);
        assert_eq!(bad.problem, Problem::NotCanonical.to_string());
    }

    #[test]
    fn shipped_migrations_are_never_edited() {
        // Pin each shipped migration. Changing the schema means adding a migration.
        let pinned = [
            "fdbb10420dd120333e69890a4a8f3a1499b1da39461c47cc9bb843d925364c6a",
            "0360341cae038fa3e5290cd8e8aa4fa11e94bed9667c22593cadfad7cbf9af0e",
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
}
