//! Fuzz the qcow2 reader end to end: the input is written to a file and fingerprinted as
//! qcow2 (header, extensions, L1/L2 walks, subclusters, compressed clusters, backing
//! names). Any outcome is fine except a panic, an abort, a hang or runaway memory.
//!
//! The virtual size is folded below 256 MiB so that one input cannot legitimately take
//! seconds of zero-chunk bookkeeping (the reader accepts up to 16 TiB).
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmledger::fingerprint::image::{self, FormatChoice, Options};

fn scratch() -> &'static std::path::Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmledger-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("input.qcow2")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= 32 {
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[24..32]);
        let folded = u64::from_be_bytes(size) % (256 << 20);
        bytes[24..32].copy_from_slice(&folded.to_be_bytes());
    }
    let path = scratch();
    let mut f = std::fs::File::create(path).expect("scratch file");
    f.write_all(&bytes).expect("write scratch");
    drop(f);
    let opts = Options {
        format: FormatChoice::Qcow2,
        threads: 1,
        ..Options::default()
    };
    if let Err(e) = image::fingerprint(path, &opts) {
        // Every error must render and name a file.
        let _ = e.to_string();
        assert!(!e.path().as_os_str().is_empty());
    }
});
