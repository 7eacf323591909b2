//! Full verification of a stored ledger: every hash, signature, link and sequence number.
//!
//! Rows are streamed in batches; within a batch the expensive per-entry work (parsing,
//! canonical form, SHA-256, Ed25519) runs on every core with rayon, then links and
//! sequence numbers are checked in order, so the first bad seq is the one reported.

use rayon::prelude::*;
use serde::Serialize;

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
    Ok(report)
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
