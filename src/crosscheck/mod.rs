//! The offline cross-check: read `vmledger-export/v1` bundles (files and directories, any
//! order, overlapping or duplicated exports), check every entry, and judge every instance
//! and serial with the licensing service's own detection rules ([`crate::rules`]),
//! replaying each instance's entries in the order of their `at` times in place of server
//! arrival times. Verdicts (`clean | restored | concurrent_duplicate | switching |
//! invalid`) come with `vmledger-evidence/v1` documents that re-verify offline.
//!
//! Streaming: [`input::scan`] reads only each file's header, [`index::Index`] groups the
//! files by serial and instance (in memory for a small fleet, else through hash
//! partitions on disk, one partition in memory at a time); then groups are judged in
//! parallel (rayon) in ordered chunks and handed to a [`report::Sink`] one by one. Memory
//! is bounded by the largest group (a serial's instances; usually one instance) and one
//! index partition, not by the fleet.
//!
//! Modules: `input` (finding and reading bundles), `instance` (checks and the
//! instance-level replay), `serial` (the serial-level replay), `evidence` (documents),
//! `policy` (the policy file), `report` (model, JSON and text renderings), `html` (the
//! timeline page). Nothing here prints or exits; the CLI chooses the sinks.

pub mod evidence;
pub mod html;
pub mod index;
pub mod input;
pub mod instance;
pub mod policy;
pub mod report;
pub mod serial;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

pub use input::{FileRef, Limits};
pub use report::{Head, SerialReport, Sink, Summary, Verdict};
pub use serial::Group;

use crate::rules::Policy;

/// Serial groups judged per parallel chunk (bounds the results held at once: two chunks,
/// one being written while the next is judged).
const CHUNK: usize = 512;

/// One serial group's report and the files that could not be read.
type Judged = (SerialReport, Vec<input::FileNote>);

/// How to cross-check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub policy: Policy,
    /// Check every signature (default: those that carry weight).
    pub full: bool,
    pub limits: Limits,
    /// Keep per-instance timelines for an HTML report.
    pub timelines: bool,
}

/// Why a cross-check could not run (bad input files are not errors: they are reported).
#[derive(Debug, thiserror::Error)]
pub enum CrosscheckError {
    #[error(transparent)]
    Path(#[from] input::PathError),
    #[error("cannot write the report: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot keep the file index: {0}")]
    Index(#[source] std::io::Error),
}

impl From<std::io::Error> for CrosscheckError {
    fn from(e: std::io::Error) -> Self {
        CrosscheckError::Index(e)
    }
}

/// Group bundle files by serial and instance (an instance whose files name several
/// serials goes with the smallest; instances without a serial are judged alone).
pub fn group(bundles: Vec<FileRef>) -> Vec<Group> {
    let mut by_instance: BTreeMap<String, (Option<String>, Vec<FileRef>)> = BTreeMap::new();
    for f in bundles {
        let slot = by_instance.entry(f.instance.clone()).or_default();
        if let Some(s) = &f.serial
            && slot.0.as_ref().is_none_or(|cur| s < cur)
        {
            slot.0 = Some(s.clone());
        }
        slot.1.push(f);
    }
    let mut groups: BTreeMap<(u8, String), Group> = BTreeMap::new();
    for (instance, (serial, mut files)) in by_instance {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let key = match &serial {
            Some(s) => (0, s.clone()),
            None => (1, instance.clone()),
        };
        groups
            .entry(key)
            .or_insert_with(|| Group {
                serial,
                instances: Vec::new(),
            })
            .instances
            .push((instance, files));
    }
    groups.into_values().collect()
}

/// The threads that judge: twice as many as cores, because each reads its groups' bundles
/// itself and, when they are not in the page cache, waits on the disk (one group's entries
/// in memory per thread). `None` (rayon's global pool) when `RAYON_NUM_THREADS` says how
/// many, or the pool cannot be built.
fn judging_pool() -> Option<rayon::ThreadPool> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads(2 * cores)
        .thread_name(|i| format!("crosscheck-judge-{i}"))
        .build()
        .ok()
}

/// Cross-check the bundles under `paths`, handing results to `sink` as they are made.
pub fn run(
    paths: &[PathBuf],
    opts: &Options,
    sink: &mut dyn Sink,
) -> Result<Summary, CrosscheckError> {
    let mut index = index::Index::new();
    let scan = input::scan(paths, opts.limits, &mut |f| {
        index.push(f).map_err(CrosscheckError::Index)
    })?;
    let mut summary = Summary {
        files: index.files(),
        bytes: index.bytes(),
        skipped: scan.skipped.len() as u64,
        unreadable: scan.unreadable.len() as u64,
        ..Summary::default()
    };
    let mut head = Head {
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        policy: policy::echo(&opts.policy),
        signatures: if opts.full { "full" } else { "tips_and_forks" }.into(),
        skipped: scan.skipped,
        unreadable: scan.unreadable,
    };
    sink.begin(&head).map_err(CrosscheckError::Write)?;
    let ctx = instance::Ctx {
        policy: &opts.policy,
        full: opts.full,
        limits: opts.limits,
        timelines: opts.timelines,
    };
    let pool = judging_pool();
    index.for_each_partition::<CrosscheckError>(&mut |groups: Vec<Group>| {
        // The pool judges the next chunk while this thread writes the last one's reports
        // (writing a large JSON report is serial work that would otherwise idle the pool).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Judged>>(1);
        std::thread::scope(|s| {
            let (groups, ctx, pool) = (&groups, &ctx, &pool);
            s.spawn(move || {
                let judge_all = || {
                    for chunk in groups.chunks(CHUNK) {
                        let results = chunk
                            .par_iter()
                            .map(|g| serial::judge_group(g, ctx))
                            .collect();
                        if tx.send(results).is_err() {
                            break;
                        }
                    }
                };
                match pool {
                    Some(p) => p.install(judge_all),
                    None => judge_all(),
                }
            });
            for results in rx {
                for (r, unreadable) in results {
                    summary.unreadable += unreadable.len() as u64;
                    head.unreadable.extend(unreadable);
                    summary.add(&r);
                    sink.serial(&r).map_err(CrosscheckError::Write)?;
                }
            }
            Ok(())
        })
    })?;
    summary.decide();
    sink.finish(&head, &summary)
        .map_err(CrosscheckError::Write)?;
    Ok(summary)
}
