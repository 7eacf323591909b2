//! SQLite plumbing shared by every database vmledger owns (the appliance ledger, the host
//! ledgers, the service database): durable settings (WAL, `synchronous=FULL`, a busy
//! timeout) and numbered, embedded migrations tracked in `PRAGMA user_version`.
//!
//! Migrations are append-only: once a migration has shipped its SQL is never edited (a
//! unit test pins each one's SHA-256); schema changes are new migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// One schema step. `version` starts at 1 and increases by one per migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub sql: &'static str,
}

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Database errors, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this vmledger understands ({known}); upgrade vmledger"
    )]
    TooNew {
        path: String,
        found: u32,
        known: u32,
    },
}

/// Open (creating if `create`) a database with vmledger's durability settings and bring
/// its schema up to date.
pub fn open(path: &Path, migrations: &[Migration], create: bool) -> Result<Connection, DbError> {
    let p = path.display().to_string();
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(|source| DbError::Open {
        path: p.clone(),
        source,
    })?;
    configure(&conn).map_err(|source| DbError::Sqlite {
        path: p.clone(),
        source,
    })?;
    migrate(&mut conn, migrations, &p)?;
    bound_wal(&conn, path);
    Ok(conn)
}

/// WAL size beyond which opening a database checkpoints and truncates it.
const WAL_TRUNCATE_BYTES: u64 = 1 << 20;

/// Short-lived processes that close without checkpointing (`NO_CKPT_ON_CLOSE`) were
/// measured never to get the WAL restarted: it grew without bound and, once past the
/// auto-checkpoint threshold, every commit copied it into the database again (550 page
/// writes per `boot`). So a process that opens a database with a large WAL checkpoints it
/// fully and truncates it, once per megabyte of writes, without waiting: when another
/// process is busy with the database it costs nothing and the next open tries again.
fn bound_wal(conn: &Connection, path: &Path) {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES);
    if big {
        // Never wait for another process here: a busy database is tried again next time.
        let _ = conn.busy_timeout(Duration::ZERO);
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
    }
}

/// An in-memory database with the given schema, for unit tests.
pub fn open_in_memory(migrations: &[Migration]) -> Result<Connection, DbError> {
    let mut conn = Connection::open_in_memory().map_err(|source| DbError::Open {
        path: ":memory:".into(),
        source,
    })?;
    migrate(&mut conn, migrations, ":memory:")?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_mode returns a row; WAL is persistent in the file once set.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    debug_assert!(mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory"));
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Short-lived processes (every `vmledger boot`) would otherwise checkpoint the WAL on
    // close, costing extra fsyncs on the boot path; the WAL is durable as it is and is
    // checkpointed automatically as it grows.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(())
}

fn migrate(conn: &mut Connection, migrations: &[Migration], path: &str) -> Result<(), DbError> {
    let err = |source| DbError::Sqlite {
        path: path.to_string(),
        source,
    };
    let known = migrations.last().map_or(0, |m| m.version);
    let current: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if current > known {
        return Err(DbError::TooNew {
            path: path.to_string(),
            found: current,
            known,
        });
    }
    if current == known {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Re-read inside the write lock: another process may have migrated meanwhile.
    let current: u32 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    for m in migrations.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(err)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(err)?;
    }
    tx.commit().map_err(err)
}

/// SHA-256 of a migration's SQL, for the tests that pin shipped migrations.
pub fn migration_digest(m: &Migration) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(m.sql.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[Migration] = &[Migration {
        version: 1,
        sql: "CREATE TABLE t (b BLOB NOT NULL) STRICT;",
    }];

    /// A database left with a large WAL by a process that did not checkpoint is
    /// checkpointed and truncated by the next open: the WAL cannot grow without bound.
    #[test]
    fn opening_bounds_a_large_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sqlite");
        let wal = dir.path().join("x.sqlite-wal");
        {
            let conn = open(&path, SCHEMA, true).unwrap();
            for _ in 0..200 {
                conn.execute("INSERT INTO t (b) VALUES (zeroblob(8192))", [])
                    .unwrap();
            }
        }
        let before = std::fs::metadata(&wal).unwrap().len();
        assert!(before > WAL_TRUNCATE_BYTES, "WAL only {before} bytes");
        let conn = open(&path, SCHEMA, false).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 200, "nothing written is lost");
    }
}
