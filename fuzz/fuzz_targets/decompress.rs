//! Fuzz cluster decompression (deflate and zstd) into a fixed cluster buffer: the first
//! byte picks the algorithm and the cluster size (512 B to 2 MiB), the rest is the
//! compressed data. Any outcome is fine except a panic or runaway memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmledger::fingerprint::image::Compression;
use vmledger::fingerprint::image::decompress::decompress_cluster;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let algo = if sel & 1 == 0 {
        Compression::Deflate
    } else {
        Compression::Zstd
    };
    let bits = 9 + u32::from(sel >> 1) % 13;
    let mut out = vec![0u8; 1 << bits];
    let _ = decompress_cluster(algo, input, &mut out);
});
