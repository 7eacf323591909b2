//! Tampering with a stored ledger is caught by `ledger verify` (exit 1, naming the seq),
//! whatever is changed: one byte of any column, a deleted entry, two swapped entries.
//! The append-only triggers are dropped with the real `sqlite3` CLI, as an attacker would.

mod common;

use common::{Sandbox, require};
use std::process::Command;

fn sqlite(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sqlite_query(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A sandbox with an initialised instance and `boots` boot entries.
fn ledger_with(boots: usize) -> Sandbox {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-T"]).ok();
    for _ in 0..boots {
        sb.cmd(["boot"]).ok();
    }
    sb
}

/// Run `sql` with the append-only triggers dropped, then restore them.
fn tamper(db: &std::path::Path, sql: &str) {
    let upd = sqlite_query(
        db,
        "SELECT sql FROM sqlite_master WHERE name='entries_no_update'",
    );
    let del = sqlite_query(
        db,
        "SELECT sql FROM sqlite_master WHERE name='entries_no_delete'",
    );
    sqlite(
        db,
        &format!(
            "PRAGMA synchronous=OFF; DROP TRIGGER entries_no_update; DROP TRIGGER entries_no_delete; {sql}; {upd}; {del};"
        ),
    );
}

fn verify_fails_at(sb: &Sandbox, seq: u64) -> serde_json::Value {
    let r = sb.cmd(["ledger", "verify", "--json"]).expect(1);
    let doc = r.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["first_bad"]["seq"], seq, "{doc}");
    doc
}

#[test]
fn triggers_block_plain_edits() {
    require("sqlite3");
    let sb = ledger_with(2);
    let db = sb.state().join("ledger.sqlite");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE entries SET kind='x' WHERE seq=1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"));
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn every_single_byte_change_is_detected() {
    require("sqlite3");
    let sb = ledger_with(4);
    let db = sb.state().join("ledger.sqlite");
    let clean = sb.state().join("clean.sqlite");
    sqlite(&db, &format!("VACUUM INTO '{}'", clean.display()));
    let target = 2u64;
    for column in ["body", "hash", "sig", "prev", "kind"] {
        let value = sqlite_query(
            &db,
            &format!("SELECT {column} FROM entries WHERE seq={target}"),
        );
        assert!(value.is_ascii());
        for i in 0..value.len() {
            let old = value.as_bytes()[i];
            let new = if old == b'0' { '1' } else { '0' };
            std::fs::copy(&clean, &db).unwrap();
            let _ = std::fs::remove_file(sb.state().join("ledger.sqlite-wal"));
            let _ = std::fs::remove_file(sb.state().join("ledger.sqlite-shm"));
            let pos = i + 1;
            tamper(
                &db,
                &format!(
                    "UPDATE entries SET {column} = substr({column},1,{}) || '{new}' || substr({column},{}) WHERE seq={target}",
                    pos - 1,
                    pos + 1
                ),
            );
            let r = sb.cmd(["ledger", "verify", "--json"]).run();
            assert_eq!(
                r.code, 1,
                "changing byte {i} of {column} at seq {target} went unnoticed: {}",
                r.stdout
            );
            let doc = r.json();
            // A change to an entry's hash also breaks the next entry's link, but the
            // first bad seq is the changed one.
            assert_eq!(doc["first_bad"]["seq"], target, "{column}[{i}]: {doc}");
        }
    }
}

#[test]
fn deleting_an_entry_names_the_missing_seq() {
    require("sqlite3");
    let sb = ledger_with(4);
    let db = sb.state().join("ledger.sqlite");
    tamper(&db, "DELETE FROM entries WHERE seq=3");
    let doc = verify_fails_at(&sb, 3);
    assert!(
        doc["first_bad"]["problem"]
            .as_str()
            .unwrap()
            .contains("gap"),
        "{doc}"
    );
}

#[test]
fn deleting_the_head_is_detected_by_the_instance_state() {
    // Dropping the newest entry leaves a valid shorter chain; verify still passes (the
    // service, as witness, catches a rolled-back head). Make sure nothing panics and the
    // shorter chain is reported as what it is.
    require("sqlite3");
    let sb = ledger_with(3);
    let db = sb.state().join("ledger.sqlite");
    tamper(&db, "DELETE FROM entries WHERE seq=3");
    let doc = sb.cmd(["ledger", "verify", "--json"]).ok().json();
    assert_eq!(doc["head_seq"], 2);
}

#[test]
fn swapping_two_entries_is_detected() {
    require("sqlite3");
    let sb = ledger_with(4);
    let db = sb.state().join("ledger.sqlite");
    tamper(
        &db,
        "UPDATE entries SET seq = -1, hash = 'tmp-h', prev = 'tmp-p' WHERE seq = 2; \
         UPDATE entries SET seq = 2 WHERE seq = 3; \
         UPDATE entries SET seq = 3 WHERE seq = -1; \
         UPDATE entries SET hash = (SELECT json_extract(body,'$.prev') FROM entries e2 WHERE e2.seq=2) WHERE seq = 3; \
         UPDATE entries SET prev = json_extract(body,'$.prev') WHERE seq = 3",
    );
    verify_fails_at(&sb, 2);
}

#[test]
fn genesis_deleted_or_replaced_ledger_fails() {
    require("sqlite3");
    let sb = ledger_with(2);
    let db = sb.state().join("ledger.sqlite");
    tamper(&db, "DELETE FROM entries WHERE seq=0");
    verify_fails_at(&sb, 0);

    // A whole ledger from another instance dropped in place of this one's.
    let other = ledger_with(2);
    for f in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
        let _ = std::fs::remove_file(sb.state().join(f));
    }
    sqlite(
        &other.state().join("ledger.sqlite"),
        &format!("VACUUM INTO '{}'", db.display()),
    );
    let doc = verify_fails_at(&sb, 0);
    assert!(
        doc["first_bad"]["problem"]
            .as_str()
            .unwrap()
            .contains("instance.key"),
        "{doc}"
    );
}

/// The ledger file deleted from an initialised state: every command says it was lost and
/// to restore it from a backup, none advises `init` (which refuses an initialised state),
/// and none quietly starts a new ledger.
#[test]
fn a_deleted_ledger_file_is_reported_as_lost_not_as_never_created() {
    let sb = ledger_with(2);
    for f in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
        let _ = std::fs::remove_file(sb.state().join(f));
    }
    for cmd in [&["ledger", "verify"][..], &["status"], &["boot"]] {
        let r = sb.cmd(cmd).expect(2);
        assert!(
            r.stderr.contains("is missing although"),
            "{cmd:?}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("Restore ledger.sqlite from a backup"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("vmledger init"), "{}", r.stderr);
        assert!(
            !sb.state().join("ledger.sqlite").exists(),
            "{cmd:?} created a new ledger"
        );
    }
}

#[test]
fn unparseable_entry_is_exit_1_not_2() {
    require("sqlite3");
    let sb = ledger_with(2);
    let db = sb.state().join("ledger.sqlite");
    tamper(&db, "UPDATE entries SET body = '{not json' WHERE seq=1");
    let doc = verify_fails_at(&sb, 1);
    assert!(
        doc["first_bad"]["problem"]
            .as_str()
            .unwrap()
            .contains("parse"),
        "{doc}"
    );
    // Human output names the seq and says what to do.
    let r = sb.cmd(["ledger", "verify"]).expect(1);
    assert!(r.stdout.contains("seq 1"), "{}", r.stdout);
}

#[test]
fn non_utf8_bytes_are_exit_1_naming_the_seq() {
    // A 0xFF byte written into a stored column (genesis or head entry) is a stored entry
    // that no longer parses: exit 1 naming its seq, not an I/O error.
    require("sqlite3");
    let sb = ledger_with(3);
    let db = sb.state().join("ledger.sqlite");
    let clean = sb.state().join("clean.sqlite");
    sqlite(&db, &format!("VACUUM INTO '{}'", clean.display()));
    let head = 3u64;
    for target in [0, head] {
        for column in ["body", "sig", "hash", "prev", "kind"] {
            std::fs::copy(&clean, &db).unwrap();
            let _ = std::fs::remove_file(sb.state().join("ledger.sqlite-wal"));
            let _ = std::fs::remove_file(sb.state().join("ledger.sqlite-shm"));
            tamper(
                &db,
                &format!(
                    "UPDATE entries SET {column} = substr({column},1,2) || CAST(X'FF' AS TEXT) || substr({column},4) WHERE seq={target}"
                ),
            );
            let stored = sqlite_query(
                &db,
                &format!("SELECT hex({column}) FROM entries WHERE seq={target}"),
            );
            assert_eq!(&stored[4..6], "FF", "{column} at seq {target}: {stored}");
            let r = sb.cmd(["ledger", "verify", "--json"]).run();
            assert_eq!(
                r.code, 1,
                "0xFF in {column} at seq {target}: {}{}",
                r.stdout, r.stderr
            );
            let doc = r.json();
            assert_eq!(doc["first_bad"]["seq"], target, "{column}: {doc}");
            let problem = doc["first_bad"]["problem"].as_str().unwrap();
            assert!(problem.contains("UTF-8"), "{column}: {problem}");
            assert!(problem.contains(column), "{column}: {problem}");
        }
    }
    // Reading the damaged head on the boot path is an error that names the seq and says
    // what to do.
    let r = sb.cmd(["boot"]).expect(2);
    assert!(r.stderr.contains(&format!("seq {head}")), "{}", r.stderr);
    assert!(r.stderr.contains("vmledger ledger verify"), "{}", r.stderr);
    assert!(r.stderr.contains("keep a copy"), "{}", r.stderr);
}
