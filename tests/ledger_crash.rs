//! Crash safety: `vmledger boot` killed with SIGKILL at random moments, hundreds of times,
//! never corrupts the ledger and never loses an append that reported success; a first boot
//! killed while it creates the identity leaves a state the next boot completes. Concurrent
//! writers never fork the chain or lose an entry.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, bin};

/// A deterministic xorshift so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn boot_cmd(sb: &Sandbox) -> Command {
    let mut c = Command::new(bin());
    c.args(["boot", "--json", "--serial", "SN-CRASH"])
        .env("HOME", sb.path())
        .env("VMLEDGER_STATE_DIR", sb.state())
        .env("VMLEDGER_CONFIG", sb.empty_config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Committed entries as (seq -> (kind, hash)), read back through `ledger show --json`.
fn stored(sb: &Sandbox) -> HashMap<u64, (String, String)> {
    let doc = sb.cmd(["ledger", "show", "--json"]).ok().json();
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["body"]["seq"].as_u64().unwrap(),
                (
                    e["body"]["kind"].as_str().unwrap().to_string(),
                    e["hash"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn boots(sb: &Sandbox) -> usize {
    stored(sb).values().filter(|(k, _)| k == "boot").count()
}

/// Median wall time of `n` uninterrupted runs of `cmd`.
fn median_run(n: usize, mut cmd: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = cmd().output().expect("run vmledger");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// Spawn `cmd`, SIGKILL it after `delay`; the JSON it printed when it finished first.
fn run_and_kill(mut cmd: Command, delay: Duration) -> Option<serde_json::Value> {
    let mut child = cmd.spawn().expect("spawn");
    std::thread::sleep(delay);
    let _ = child.kill(); // SIGKILL; fails harmlessly when it already exited
    let out = child.wait_with_output().expect("wait");
    out.status.success().then(|| {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("exit 0 but stdout is not JSON ({e})"))
    })
}

fn seed() -> u64 {
    std::env::var("VMLEDGER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64)
}

#[test]
fn sigkill_during_boot_loses_nothing_that_was_acknowledged() {
    let seed = seed();
    let mut rng = Rng(seed);
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-CRASH"]).ok();
    // Kill anywhere from "at once" to a little past a typical boot's end, so that kills
    // land before, during and after the commit, and some boots finish.
    let typical = median_run(5, || boot_cmd(&sb));
    let mut window_us = (typical.as_micros() as u64 * 3 / 2).max(1_000);
    let before = boots(&sb);
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut kills = 0;
    let mut acked_at_check = 0;
    while kills < 240 {
        let delay = Duration::from_micros(rng.next() % window_us);
        if let Some(doc) = run_and_kill(boot_cmd(&sb), delay) {
            acked.push((
                doc["seq"].as_u64().unwrap(),
                doc["hash"].as_str().unwrap().to_string(),
            ));
        }
        kills += 1;
        // A machine that got slower than measured: widen the window so boots still finish.
        if kills % 40 == 0 {
            if acked.len() == acked_at_check {
                window_us = window_us * 3 / 2;
            }
            acked_at_check = acked.len();
        }
    }
    // Whatever happened, the next boot works and the ledger verifies.
    let out = boot_cmd(&sb).output().expect("final boot");
    assert!(
        out.status.success(),
        "seed {seed}: boot after crashes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = sb.cmd(["ledger", "verify", "--json"]).run();
    assert_eq!(v.code, 0, "seed {seed}: {}", v.stdout);
    let have = stored(&sb);
    for (seq, hash) in &acked {
        assert_eq!(
            have.get(seq).map(|(k, h)| (k.as_str(), h)),
            Some(("boot", hash)),
            "seed {seed}: acknowledged boot seq {seq} is missing"
        );
    }
    // The kills really landed across the append: some boots were acknowledged, and some
    // killed boots had already committed (boots in the ledger beyond the acknowledged).
    let committed = boots(&sb) - before - 1;
    let killed_after_commit = committed - acked.len();
    let killed_before_commit = kills - committed;
    eprintln!(
        "seed {seed}: window {window_us} us, {kills} kills: {} acknowledged, {killed_after_commit} killed after the commit, {killed_before_commit} before",
        acked.len()
    );
    assert!(!acked.is_empty(), "seed {seed}: no boot was acknowledged");
    assert!(
        killed_after_commit > 0,
        "seed {seed}: no killed boot had committed"
    );
    assert!(
        killed_before_commit > 0,
        "seed {seed}: no boot was killed before its commit"
    );
}

#[test]
fn sigkill_during_identity_creation_leaves_a_state_the_next_boot_completes() {
    let seed = seed() ^ 0x5555;
    let mut rng = Rng(seed);
    let fresh: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let mut next = fresh.iter();
    let typical = median_run(3, || boot_cmd(next.next().unwrap()));
    let window_us = (typical.as_micros() as u64).max(1_000);
    for round in 0..30 {
        let sb = Sandbox::new();
        let delay = Duration::from_micros(rng.next() % window_us);
        let first = run_and_kill(boot_cmd(&sb), delay);
        let key_before = std::fs::read(sb.state().join("instance.key")).ok();
        let out = boot_cmd(&sb).output().expect("boot");
        assert!(
            out.status.success(),
            "seed {seed} round {round}: boot after a killed first boot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sb.cmd(["ledger", "verify"]).ok();
        // A key written before the kill is kept, never replaced.
        let key_after = std::fs::read(sb.state().join("instance.key")).unwrap();
        if let Some(k) = key_before {
            assert_eq!(
                k, key_after,
                "seed {seed} round {round}: instance.key replaced"
            );
        }
        if let Some(doc) = first {
            let have = stored(&sb);
            let seq = doc["seq"].as_u64().unwrap();
            assert_eq!(
                have.get(&seq).map(|(_, h)| h.as_str()),
                doc["hash"].as_str()
            );
        }
    }
}

#[test]
fn eight_concurrent_writers_never_fork_or_lose_entries() {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-CONC"]).ok();
    let per_writer = 15;
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut cmds: Vec<Command> = (0..per_writer).map(|_| boot_cmd(&sb)).collect();
            std::thread::spawn(move || {
                cmds.iter_mut()
                    .map(|c| {
                        let out = c.output().expect("boot");
                        assert!(
                            out.status.success(),
                            "concurrent boot failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                        (
                            doc["seq"].as_u64().unwrap(),
                            doc["hash"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort();
    // Every writer got a distinct seq: no two appends shared a predecessor.
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=(8 * per_writer) as u64).collect();
    assert_eq!(seqs, expected);
    let have = stored(&sb);
    assert_eq!(have.len(), 1 + 8 * per_writer);
    for (seq, hash) in &acked {
        assert_eq!(have.get(seq).map(|(_, h)| h), Some(hash));
    }
    sb.cmd(["ledger", "verify"]).ok();
}
