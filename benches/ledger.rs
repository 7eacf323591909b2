//! Ledger benchmarks (issue: foundation). Prints figures and ratios; asserts nothing.
//!
//! `cargo bench --bench ledger` measures, side by side in one run:
//! 1. `vmledger boot` on a 100,000-entry ledger vs on a 10-entry ledger (the release
//!    binary, interleaved runs, medians): appends and start-up must be O(1) in length;
//! 2. `vmledger ledger verify` of the 100,000-entry ledger using every core, vs the
//!    single-core rate of bare ring Ed25519 verifications of same-sized messages.
//!
//! The ledgers hold real-sized boot entries (this machine's hardware fingerprint).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmledger::config::{Config, Overrides};
use vmledger::fingerprint::boot;
use vmledger::identity::{Instance, StateDir};
use vmledger::keys::{self, SigningKey};
use vmledger::time::SystemClock;

const BIG: usize = 100_000;

/// An initialised state with `n` entries: genesis, then boot entries with the data a real
/// `boot` records on this machine (hardware fingerprint and drift: about 1.2 KB of body),
/// not small fillers, so that verification and appends handle real-sized bodies.
fn populate(dir: &Path, n: usize) -> usize {
    let sd = StateDir::new(dir);
    let inst = Instance::init(&sd, Some("SN-BENCH"), &SystemClock).expect("init");
    let ledger = inst.ledger().expect("ledger");
    // Keep the real append path (one transaction each) but relax fsync while filling.
    ledger
        .connection()
        .pragma_update(None, "synchronous", "OFF")
        .expect("pragma");
    let cfg = Config::resolve(
        &Overrides {
            state_dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
        &[("HOME", "/nonexistent")],
        false,
    )
    .expect("config");
    // The first boot has nothing to drift from; later ones carry `hardware_drift`.
    let mut data = boot::collect(&cfg, &ledger).expect("fingerprint").data;
    for i in 1..n {
        if i == 2 {
            data = boot::collect(&cfg, &ledger).expect("fingerprint").data;
        }
        ledger
            .append(&inst.key, "boot", data.clone(), &SystemClock)
            .expect("append");
    }
    let last = ledger.tail(1).expect("tail").pop().expect("an entry");
    last.body.canonical().expect("canonical").len()
}

fn time_cmd(bin: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new(bin).args(args).output().expect("run vmledger");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ring_verify_rate(message_len: usize) -> f64 {
    let key = SigningKey::from_seed(&[42; 32]);
    let pk = key.public_key();
    let msgs: Vec<Vec<u8>> = (0..2048u32)
        .map(|i| {
            let mut m = vec![b'x'; message_len];
            m[..4].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    let sigs: Vec<[u8; 64]> = msgs.iter().map(|m| key.sign(m)).collect();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        for (m, s) in msgs.iter().zip(&sigs) {
            assert!(keys::verify(&pk, m, s));
        }
        n += msgs.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let bin = env!("CARGO_BIN_EXE_vmledger");
    // VMLEDGER_BENCH_DIR keeps the two ledgers (for profiling a single `boot`).
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("VMLEDGER_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let small = root.join("small");
    let big = root.join("big");
    if !big.exists() {
        eprintln!("populating ledgers (10 and {BIG} entries)...");
        populate(&small, 10);
        let t = Instant::now();
        let body = populate(&big, BIG);
        eprintln!(
            "  {BIG} appends in {:.1?}; boot bodies {body} bytes (canonical)",
            t.elapsed()
        );
    }

    // Warm up, then interleave boot runs so machine noise hits both sides alike.
    let (s, b) = (small.to_str().unwrap(), big.to_str().unwrap());
    for _ in 0..3 {
        time_cmd(bin, &["--state-dir", s, "boot"]);
        time_cmd(bin, &["--state-dir", b, "boot"]);
    }
    let (mut ts, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        ts.push(time_cmd(bin, &["--state-dir", s, "boot"]));
        tb.push(time_cmd(bin, &["--state-dir", b, "boot"]));
    }
    let (ms, mb) = (median(ts), median(tb));
    println!(
        "boot, 10-entry ledger:      median {:.2} ms",
        ms.as_secs_f64() * 1e3
    );
    println!(
        "boot, {BIG}-entry ledger:  median {:.2} ms",
        mb.as_secs_f64() * 1e3
    );
    println!(
        "ratio big/small: {:.3}x (target <= 1.1x)",
        mb.as_secs_f64() / ms.as_secs_f64()
    );

    // Message size of a typical entry (prefix + canonical body).
    let inst = Instance::open(&StateDir::new(&big)).expect("open");
    let sample = inst.ledger().unwrap().entry(5).unwrap().unwrap();
    let msg_len = sample.body.message().unwrap().len();
    let rate = ring_verify_rate(msg_len);
    let mut tv = Vec::new();
    for _ in 0..3 {
        tv.push(time_cmd(bin, &["--state-dir", b, "ledger", "verify"]));
    }
    let tv = median(tv);
    let mut t1 = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["--state-dir", b, "ledger", "verify"])
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("verify");
        assert!(out.status.success());
        t1.push(t.elapsed());
    }
    let t1 = median(t1);
    let entries = (BIG + 40 + 3) as f64;
    println!(
        "ledger verify, 1 checking thread (RAYON_NUM_THREADS=1; SQLite reads overlap on another): {:.0} entries/s = {:.2}x ring single-core",
        entries / t1.as_secs_f64(),
        entries / t1.as_secs_f64() / rate
    );
    let vrate = entries / tv.as_secs_f64();
    println!("ring Ed25519 verify, 1 core, {msg_len}-byte messages: {rate:.0}/s");
    println!(
        "ledger verify, {} cores: {:.0} entries/s ({:.2} s)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        vrate,
        tv.as_secs_f64()
    );
    println!(
        "ratio verify/ring-single-core: {:.2}x (target >= 1.6x)",
        vrate / rate
    );
}
