//! The single writer: one thread owns the database's write connection and applies
//! check-ins in batches, one transaction (one durable commit) per batch: group commit.
//! While a batch commits, new jobs queue up and form the next batch, so commits get
//! cheaper per check-in as load grows, and no reply leaves before its batch is durable.
//!
//! A storage failure fails the whole batch (rolled back, every job answered "retry");
//! refusals of single jobs (409, 403, ...) do not affect the others.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::checkin::{self, Answer, Prepared, Refusal};
use super::config::Settings;
use super::http::Metrics;
use super::keyring::KeyRing;
use super::store::Store;
use crate::time::Clock;

/// Largest batch per commit.
const MAX_BATCH: usize = 512;

/// Under load (the previous batch had several jobs) a batch smaller than this waits
/// [`LINGER`] once for more jobs: fewer, larger commits cost less CPU per check-in. An idle
/// service never waits.
const LINGER_BELOW: usize = 16;
const LINGER: std::time::Duration = std::time::Duration::from_micros(400);

/// One check-in waiting for the writer.
pub(crate) struct Job {
    pub prepared: Prepared,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the writer answers (one per job, moved once).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    Accepted(Answer),
    Refused(Refusal),
    /// Storage failed; nothing of this job was committed.
    Unavailable(String),
}

/// Start the writer thread; it stops when every sender is dropped. Each batch reads the
/// service keys in its transaction (an operator's `service key activate|retire` takes
/// effect at the next batch) and publishes the active key id in `active_key`.
pub(crate) fn spawn(
    mut store: Box<dyn Store>,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    mut ring: KeyRing,
    active_key: Arc<std::sync::Mutex<String>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let handle = std::thread::Builder::new()
        .name("vmledger-writer".into())
        .spawn(move || {
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            let mut previous = 0usize;
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                drain(&mut rx, &mut batch);
                if previous > 1 && batch.len() < LINGER_BELOW {
                    std::thread::sleep(LINGER);
                    drain(&mut rx, &mut batch);
                }
                previous = batch.len();
                run_batch(
                    &mut *store,
                    &mut batch,
                    &settings,
                    &*clock,
                    &mut ring,
                    &active_key,
                    &metrics,
                );
            }
        })?;
    Ok((tx, handle))
}

fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

fn run_batch(
    store: &mut dyn Store,
    batch: &mut Vec<Job>,
    settings: &Settings,
    clock: &dyn Clock,
    ring: &mut KeyRing,
    active_key: &std::sync::Mutex<String>,
    metrics: &Metrics,
) {
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let failure = (|| -> Result<(), String> {
        let mut tx = store.write().map_err(|e| e.to_string())?;
        let records = tx.service_keys().map_err(|e| e.to_string())?;
        let signers = ring.signers(&records).map_err(|e| e.to_string())?;
        if let Ok(mut k) = active_key.lock()
            && *k != signers.active_id()
        {
            *k = signers.active_id().to_string();
        }
        for job in batch.iter() {
            let now = clock.now();
            match checkin::apply(&mut *tx, &job.prepared, now, settings, &signers) {
                Ok(Ok(a)) => results.push(Outcome::Accepted(a)),
                Ok(Err(r)) => results.push(Outcome::Refused(r)),
                Err(e) => return Err(e.to_string()),
            }
        }
        tx.commit().map_err(|e| e.to_string())
    })()
    .err();
    metrics.observe_batch(batch.len());
    for (i, job) in batch.drain(..).enumerate() {
        let outcome = match &failure {
            Some(msg) => Outcome::Unavailable(msg.clone()),
            None => std::mem::replace(&mut results[i], Outcome::Unavailable(String::new())),
        };
        // The client may have gone (timeout); its entries are committed all the same and
        // a retry is idempotent.
        let _ = job.reply.send(outcome);
    }
}
