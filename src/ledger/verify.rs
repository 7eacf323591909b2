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
use std::ops::ControlFlow;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};

use super::entry::{self, BodyView, Entry, Link, Problem};
use super::{Ledger, LedgerError, Row};
use crate::canonical;
use crate::keys::PUBLIC_KEY_LEN;
use crate::license::observe::kind;

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
///
/// The calling thread reads batches of rows from SQLite while a second thread checks the
/// previous batch (on every core) and walks the links: reading never leaves the cores idle.
pub fn verify(
    ledger: &Ledger,
    expected_key: Option<&[u8; PUBLIC_KEY_LEN]>,
) -> Result<Report, LedgerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Row>>(1);
    let (read, chain) = std::thread::scope(|scope| {
        let checker = scope.spawn(move || {
            let mut chain = Chain::new(expected_key);
            for rows in rx {
                chain.batch(&rows);
                if chain.report.first_bad.is_some() {
                    break;
                }
            }
            chain
        });
        // A send fails once the checker stopped at a bad entry: the rest is not read.
        let read = ledger.for_each_row(0, BATCH, |rows| {
            Ok(match tx.send(rows) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            })
        });
        drop(tx);
        let chain = checker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read, chain)
    });
    let mut report = chain.report;
    // The head of the verified prefix is the last entry the walk accepted.
    report.head_seq = chain.prev.as_ref().map(|p| p.seq);
    report.head_hash = chain.prev.map(|p| p.hash);
    if report.first_bad.is_none() {
        read?;
    }
    if report.entries == 0 && report.first_bad.is_none() {
        report.first_bad = Some(BadEntry {
            seq: 0,
            problem: "the ledger is empty: the genesis entry is missing".into(),
        });
    }
    if report.first_bad.is_none() {
        report.first_bad = check_receipts(ledger, &chain.cited)?;
    }
    Ok(report)
}

/// What the chain walk keeps of a checked entry.
struct Checked {
    seq: u64,
    hash: String,
    instance: String,
    prev: String,
    at: String,
    /// The receipt hash the entry cites ([`cited_receipt`]).
    receipt: Option<String>,
}

impl Checked {
    fn from_entry(e: Entry) -> Checked {
        let receipt = cited_receipt(&e.body.kind, &e.body.data).map(str::to_string);
        Checked {
            seq: e.body.seq,
            hash: e.hash,
            instance: e.body.instance,
            prev: e.body.prev,
            at: e.body.at,
            receipt,
        }
    }

    fn link(&self) -> Link<'_> {
        Link {
            instance: &self.instance,
            seq: self.seq,
            prev: &self.prev,
            at: &self.at,
        }
    }
}

/// The walk along the chain, batch after batch: the genesis key, the previous entry, the
/// seq expected next, the receipts cited so far, and the report.
struct Chain<'k> {
    expected_key: Option<&'k [u8; PUBLIC_KEY_LEN]>,
    public_key: Option<[u8; PUBLIC_KEY_LEN]>,
    prev: Option<Checked>,
    expected_seq: u64,
    cited: HashSet<String>,
    report: Report,
}

impl<'k> Chain<'k> {
    fn new(expected_key: Option<&'k [u8; PUBLIC_KEY_LEN]>) -> Self {
        Chain {
            expected_key,
            public_key: None,
            prev: None,
            expected_seq: 0,
            cited: HashSet::new(),
            report: Report {
                entries: 0,
                head_seq: None,
                head_hash: None,
                first_bad: None,
            },
        }
    }

    fn fail(&mut self, seq: u64, problem: Problem) {
        self.report.first_bad = Some(BadEntry {
            seq: seq.min(self.expected_seq),
            problem: problem.to_string(),
        });
    }

    /// Check one batch of rows: each on its own on every core, then in order along links.
    fn batch(&mut self, rows: &[Row]) {
        if rows.is_empty() || self.report.first_bad.is_some() {
            return;
        }
        // The genesis row carries the key every other row is checked against.
        let pk = match self.public_key {
            Some(pk) => pk,
            None => match genesis_key(&rows[0], self.expected_key) {
                Ok(pk) => *self.public_key.insert(pk),
                Err(problem) => return self.fail(rows[0].seq, problem),
            },
        };
        let checked: Vec<Result<Checked, Problem>> =
            rows.par_iter().map(|row| check_row(row, &pk)).collect();
        for (row, result) in rows.iter().zip(checked) {
            let outcome = result.and_then(|e| {
                if row.seq != self.expected_seq {
                    return Err(if row.seq > self.expected_seq {
                        Problem::Gap {
                            expected: self.expected_seq,
                            found: row.seq,
                        }
                    } else {
                        Problem::Duplicate {
                            expected: self.expected_seq,
                            found: row.seq,
                        }
                    });
                }
                if let Some(p) = &self.prev {
                    entry::check_link_between(p.link(), &p.hash, e.link())?;
                }
                Ok(e)
            });
            self.report.entries += 1;
            match outcome {
                Ok(mut e) => {
                    self.expected_seq = e.seq + 1;
                    if let Some(h) = e.receipt.take() {
                        self.cited.insert(h);
                    }
                    self.prev = Some(e);
                }
                Err(problem) => return self.fail(row.seq, problem),
            }
        }
    }
}

/// The receipt hash an entry cites: `data.receipt` of a `checkin`, or of a
/// `checkin_failed` recording an `unknown_serial` receipt (the only failure whose receipt
/// is stored).
fn cited_receipt<'d>(kind: &str, d: &'d Map<String, Value>) -> Option<&'d str> {
    let receipt = d.get("receipt").and_then(Value::as_str);
    match kind {
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

/// Check one stored row on its own: form, canonical text, hash and signature.
fn check_row(row: &Row, pk: &[u8; PUBLIC_KEY_LEN]) -> Result<Checked, Problem> {
    match check_stored(row, pk) {
        Some(checked) => Ok(checked),
        None => check_parsed(row, pk).map(Checked::from_entry),
    }
}

/// The fast path: the stored text is canonical ([`canonical::is_canonical`]), so it is
/// hashed and verified as it is and only the members the checks read are parsed (in
/// place). `None` when anything is amiss, or the text holds what [`BodyView`] does not
/// borrow: [`check_parsed`] then decides, and names the problem.
fn check_stored(row: &Row, pk: &[u8; PUBLIC_KEY_LEN]) -> Option<Checked> {
    if row.unreadable.is_some() || !canonical::is_canonical(&row.body) {
        return None;
    }
    let view: BodyView = serde_json::from_str(&row.body).ok()?;
    let head = view.head();
    if !view.data.get().starts_with('{')
        || view.seq != row.seq
        || view.prev != row.prev
        || view.kind != row.kind
        || head.validate().is_err()
    {
        return None;
    }
    let message = entry::message_from_canonical(&row.body);
    if entry::sha256_hex(&message) != row.hash
        || entry::check_signature(pk, &message, &row.sig).is_err()
    {
        return None;
    }
    let receipt = if matches!(view.kind, kind::CHECKIN | kind::CHECKIN_FAILED) {
        let data: Map<String, Value> = serde_json::from_str(view.data.get()).ok()?;
        cited_receipt(view.kind, &data).map(str::to_string)
    } else {
        None
    };
    Some(Checked {
        seq: view.seq,
        hash: row.hash.clone(),
        instance: view.instance.to_string(),
        prev: view.prev.to_string(),
        at: view.at.to_string(),
        receipt,
    })
}

/// The slow path: parse the body into values, check its form, write its canonical text
/// again and compare (before the hash: a body hashed as stored but not canonical is
/// reported as such), hash, verify.
fn check_parsed(row: &Row, pk: &[u8; PUBLIC_KEY_LEN]) -> Result<Entry, Problem> {
    let e = row.parse()?;
    // `canonical()` checks `data` as `validate()` would.
    e.body.head().validate()?;
    if e.body.canonical()? != row.body {
        return Err(Problem::NotCanonical);
    }
    e.check(Some(pk))?;
    Ok(e)
}
