//! vmledger: an offline-first licensing ledger for virtual appliances.
//!
//! One library, one binary. The binary (`src/main.rs`) only calls [`cli::main`]; every
//! command is a thin layer in [`cli`] over the domain modules below, which never print and
//! never exit. See `ARCHITECTURE.md` for the code map and the invariants.
// Unsafe code is refused everywhere but in `fingerprint::image::mapped` (mapping image
// files to hash them without copying; that module says why and what it guards against,
// and its tests fail if unsafe code appears anywhere else).
#![deny(unsafe_code)]

pub mod backup;
pub mod canonical;
pub mod checkin;
pub mod cli;
pub mod config;
pub mod crosscheck;
pub mod db;
pub mod exit;
pub mod fingerprint;
pub mod fsutil;
pub mod hooks;
pub mod identity;
pub mod keys;
pub mod ledger;
pub mod license;
pub mod protocol;
pub mod rules;
pub mod service;
pub mod simulate;
pub mod time;
pub mod watch;
