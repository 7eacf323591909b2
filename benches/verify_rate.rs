//! The peer of the cross-check's `--full` figure: bare ring Ed25519 verifications per
//! second on one core, of entry-sized (900-byte) messages. Prints one line; asserts nothing.
//! Run by `benches/crosscheck.sh` in the same run as the cross-check it is compared with.

use std::time::{Duration, Instant};

use vmledger::keys::{self, SigningKey};

fn main() {
    let key = SigningKey::from_seed(&[7u8; 32]);
    let pk = key.public_key();
    let msg = vec![b'x'; 900];
    let sig = key.sign(&msg);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..100 {
            assert!(keys::verify(&pk, &msg, &sig));
        }
        n += 100;
    }
    println!(
        "ed25519 verify rate: {:.0}/s (ring, 1 core, 900-byte messages)",
        n as f64 / start.elapsed().as_secs_f64()
    );
}
