//! Fingerprints: what identifies a disk image's content ([`image`]), the virtual hardware
//! a VM runs on ([`hardware`]) and an appliance's file tree ([`tree`]).
//!
//! Fingerprinting only reads: nothing in this module writes state. [`boot`] gathers what a
//! `boot` ledger entry records about fingerprints (the caller appends the entry).

pub mod boot;
pub mod hardware;
pub mod image;
pub mod tree;
