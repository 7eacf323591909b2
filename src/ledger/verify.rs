//! Full verification of a stored ledger: every hash, signature, link and sequence number,
//! then the receipts stored beside it.
//!
//! Rows are streamed in batches; within a batch the expensive per-entry work (parsing,
//! canonical form, SHA-256, Ed25519) runs on every core with rayon, then links and
//! sequence numbers are checked in order, so the first bad seq is the one reported.
//!
//! A chain that verifies can still have lost its newest entries (deleted with the
//! append-only triggers dropped): the service's receipts tell. Every receipt stored in the
//! `receipts` table (the check-in client's, ledger migration 2) must acknowledge an entry
//! of this chain (its `acked_seq` with its `acked_hash`) and be cited by an entry: a
//! `checkin` (or, for a receipt saying `unknown_serial`, a `checkin_failed`) whose
//! `data.receipt` is its hash. Otherwise the ledger was truncated after the acknowledged
//! seq (or, for an uncited receipt, a check-in was interrupted between storing its receipt
//! and recording it; the next observation records it, see `checkin::reconcile`).
//! Signatures of receipts are not checked here (the service key is configuration, not
//! ledger): a forged receipt row is reported as uncited, and never counts.

use std::collections::HashSet;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::entry::{self, Entry, Problem};
use super::{Ledger, LedgerError, Row};
use crate::keys::PUBLIC_KEY_LEN;

/// Rows verified per parallel batch.
const BATCH: usize = 4096;

/// The outcome of verifying a ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Entries checked (up to and including the first bad one).
    pub entries: u64,
    /// Head of the verified prefix.
    pub head_seq: Option<u64>,
    pub head_hash: Option<String>,
    /// The first problem, if any.
    pub first_bad: Option<BadEntry>,
}

/// Where and what the first problem is.
#[derive(Debug, Clone, Serialize)]
pub struct BadEntry {
    pub seq: u64,
    pub problem: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Verify `ledger` end to end. `expected_key`, when known (the instance's own key file),
/// must equal the genesis entry's public key: a ledger rebuilt under another key fails.
pub fn verify(
    ledger: &Ledger,
    expected_key: Option<&[u8; PUBLIC_KEY_LEN]>,
) -> Result<Report, LedgerError> {
    let mut report = Report {
        entries: 0,
        head_seq: None,
        head_hash: None,
        first_bad: None,
    };
    let mut public_key: Option<[u8; PUBLIC_KEY_LEN]> = None;
    let mut prev: Option<Entry> = None;
    let mut expected_seq = 0u64;
    // Receipt hashes cited by `checkin` entries (and `unknown_serial` failures).
    let mut cited: HashSet<String> = HashSet::new();

    let stop = ledger.for_each_row(0, BATCH, |rows| {
        if report.first_bad.is_some() {
            return Ok(());
        }
        // The genesis row carries the key every other row is checked against.
        if public_key.is_none() {
            let first = &rows[0];
            match genesis_key(first, expected_key) {
                Ok(pk) => public_key = Some(pk),
                Err(problem) => {
                    report.first_bad = Some(BadEntry {
                        seq: first.seq.min(expected_seq),
                        problem: problem.to_string(),
                    });
                    return Ok(());
                }
            }
        }
        let pk = public_key.expect("set above");
        let checked: Vec<Result<Entry, Problem>> =
            rows.par_iter().map(|row| check_row(row, &pk)).collect();
        for (row, result) in rows.iter().zip(checked) {
            let outcome = result.and_then(|e| {
                if row.seq != expected_seq {
                    return Err(if row.seq > expected_seq {
                        Problem::Gap {
                            expected: expected_seq,
                            found: row.seq,
                        }
                    } else {
                        Problem::Duplicate {
                            expected: expected_seq,
                            found: row.seq,
                        }
                    });
                }
                if let Some(p) = &prev {
                    entry::check_link(&p.body, &p.hash, &e.body)?;
                }
                Ok(e)
            });
            match outcome {
                Ok(e) => {
                    report.entries += 1;
                    report.head_seq = Some(e.body.seq);
                    report.head_hash = Some(e.hash.clone());
                    expected_seq = e.body.seq + 1;
                    if let Some(h) = cited_receipt(&e) {
                        cited.insert(h.to_string());
                    }
                    prev = Some(e);
                }
                Err(problem) => {
                    report.entries += 1;
                    report.first_bad = Some(BadEntry {
                        seq: row.seq.min(expected_seq),
                        problem: problem.to_string(),
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    stop?;
    if report.entries == 0 && report.first_bad.is_none() {
        report.first_bad = Some(BadEntry {
            seq: 0,
            problem: "the ledger is empty: the genesis entry is missing".into(),
        });
    }
    if report.first_bad.is_none() {
        report.first_bad = check_receipts(ledger, &cited)?;
    }
    Ok(report)
}

/// The receipt hash an entry cites: `data.receipt` of a `checkin`, or of a
/// `checkin_failed` recording an `unknown_serial` receipt (the only failure whose receipt
/// is stored).
fn cited_receipt(e: &Entry) -> Option<&str> {
    use crate::license::observe::kind;
    let d = &e.body.data;
    let receipt = d.get("receipt").and_then(Value::as_str);
    match e.body.kind.as_str() {
        kind::CHECKIN => receipt,
        kind::CHECKIN_FAILED
            if d.get("reason").and_then(Value::as_str)
                == Some(crate::checkin::failure::UNKNOWN_SERIAL) =>
        {
            receipt
        }
        _ => None,
    }
}

/// Check every stored receipt against the verified chain (see the module docs). Returns
/// the first problem, in the receipts' server-time order.
fn check_receipts(
    ledger: &Ledger,
    cited: &HashSet<String>,
) -> Result<Option<BadEntry>, LedgerError> {
    let sql = |source| LedgerError::Sqlite {
        path: ledger.path().display().to_string(),
        source,
    };
    let rows: Vec<(String, String, String)> = {
        let mut stmt = ledger
            .connection()
            .prepare("SELECT hash, server_time, receipt FROM receipts ORDER BY server_time, hash")
            .map_err(sql)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?
    };
    let head = ledger.head()?.map_or(0, |h| h.seq);
    for (hash, server_time, text) in rows {
        let short = &hash[..hash.len().min(16)];
        let r: crate::protocol::Receipt = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Some(BadEntry {
                    seq: head,
                    problem: format!("stored receipt {short} is unreadable: {e}"),
                }));
            }
        };
        if r.hash().ok().as_deref() != Some(hash.as_str()) {
            return Ok(Some(BadEntry {
                seq: head,
                problem: format!(
                    "stored receipt {short} does not hash to its name: it was altered"
                ),
            }));
        }
        let n = r.body.acked_seq;
        let truncated =
            format!("the ledger was truncated after seq {n} was acknowledged by the service");
        match ledger.entry(n)? {
            None => {
                return Ok(Some(BadEntry {
                    seq: n.min(head + 1),
                    problem: format!(
                        "receipt {short} (server time {server_time}) acknowledges seq {n}, which this ledger does not have (head seq {head}): {truncated}"
                    ),
                }));
            }
            Some(e) if e.hash != r.body.acked_hash => {
                return Ok(Some(BadEntry {
                    seq: n,
                    problem: format!(
                        "receipt {short} (server time {server_time}) acknowledges seq {n} with hash {}, this ledger's seq {n} has hash {}: {truncated} and new entries were written in place of the deleted ones",
                        r.body.acked_hash, e.hash
                    ),
                }));
            }
            Some(_) => {}
        }
        if !cited.contains(&hash) {
            return Ok(Some(BadEntry {
                seq: n + 1,
                problem: format!(
                    "receipt {short} (server time {server_time}, acknowledging seq {n}) is cited by no checkin entry: {truncated} (or a check-in was interrupted before it was recorded; `vmledger status` records it)"
                ),
            }));
        }
    }
    Ok(None)
}

fn genesis_key(
    row: &Row,
    expected: Option<&[u8; PUBLIC_KEY_LEN]>,
) -> Result<[u8; PUBLIC_KEY_LEN], Problem> {
    if row.seq != 0 {
        return Err(Problem::Gap {
            expected: 0,
            found: row.seq,
        });
    }
    let e = row.parse()?;
    let pk = e.genesis_public_key()?;
    if let Some(want) = expected
        && *want != pk
    {
        return Err(Problem::Genesis(
            "the genesis public key is not this instance's key (instance.key): the ledger was replaced"
                .into(),
        ));
    }
    Ok(pk)
}

/// Parse a stored row and check form, canonical text, hash and signature.
fn check_row(row: &Row, pk: &[u8; PUBLIC_KEY_LEN]) -> Result<Entry, Problem> {
    let e = row.parse()?;
    let canonical = e.check(Some(pk))?;
    if canonical != row.body {
        return Err(Problem::NotCanonical);
    }
    Ok(e)
}
