//! Decompressing one qcow2 compressed cluster into a fixed, cluster-sized buffer.
//!
//! The output must be exactly one cluster, as QEMU requires: a stream that ends early, or
//! that still produces bytes once the cluster is full, is an error. The input may carry
//! trailing bytes (compressed sizes are only known to the 512-byte sector), which are
//! ignored. Nothing here allocates in proportion to what the input claims: deflate writes
//! straight into the buffer, and a zstd frame must declare a window of at most
//! [`MAX_ZSTD_WINDOW`] before it is decoded.

use std::io::Read;

use flate2::{Decompress, FlushDecompress, Status};

use super::map::Compression;

/// The largest zstd window accepted (QEMU's clusters are at most 2 MiB, so its frames
/// never need more).
pub const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// Decompress `input` into all of `out` (one cluster). The error says what is wrong with
/// the data; the caller names the file and the cluster.
pub fn decompress_cluster(algo: Compression, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match algo {
        Compression::Deflate => inflate(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut d = Decompress::new(false);
    let mut status;
    loop {
        let (in_pos, out_pos) = (d.total_in() as usize, d.total_out() as usize);
        status = d
            .decompress(&input[in_pos..], &mut out[out_pos..], FlushDecompress::None)
            .map_err(|e| format!("the deflate data is corrupt ({e})"))?;
        let produced = d.total_out() as usize;
        if produced == out.len() {
            break;
        }
        if status == Status::StreamEnd {
            return Err(format!(
                "it decompresses to {produced} bytes instead of the cluster's {}",
                out.len()
            ));
        }
        if d.total_in() as usize == in_pos && produced == out_pos {
            return Err(format!(
                "the compressed data stops after {produced} of the cluster's {} bytes (cut off by its sector count or the end of the file)",
                out.len()
            ));
        }
    }
    if status != Status::StreamEnd {
        let in_pos = d.total_in() as usize;
        let mut extra = [0u8; 1];
        // Bytes that do not even decode after a full cluster are ignored, as QEMU does.
        if let Ok(_) = d.decompress(&input[in_pos..], &mut extra, FlushDecompress::None)
            && d.total_out() as usize > out.len()
        {
            return Err(format!(
                "it decompresses to more than the cluster's {} bytes",
                out.len()
            ));
        }
    }
    Ok(())
}

/// The window a zstd frame header declares, or an error for anything that is not a zstd
/// frame.
fn zstd_window(input: &[u8]) -> Result<u64, String> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if input.len() < 6 || input[..4] != MAGIC {
        return Err("the compressed data is not a zstd frame".into());
    }
    let fhd = input[4];
    if fhd & 0x08 != 0 {
        return Err("the zstd frame header has its reserved bit set".into());
    }
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = input[5];
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        return Ok(base + (base / 8) * u64::from(wd & 7));
    }
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + dict_len;
    let bytes = input
        .get(at..at + fcs_len)
        .ok_or("the zstd frame header is cut off")?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Ok(if fcs_len == 2 { v + 256 } else { v })
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let window = zstd_window(input)?;
    if window > MAX_ZSTD_WINDOW {
        return Err(format!(
            "the zstd frame asks for a {window}-byte window (at most {MAX_ZSTD_WINDOW} is accepted)"
        ));
    }
    let mut src = input;
    let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
        .map_err(|e| format!("the zstd frame is corrupt ({e})"))?;
    let mut filled = 0;
    while filled < out.len() {
        match dec.read(&mut out[filled..]) {
            Ok(0) => {
                return Err(format!(
                    "it decompresses to {filled} bytes instead of the cluster's {} (or the data is cut off by its sector count or the end of the file)",
                    out.len()
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("the zstd data is corrupt ({e})")),
        }
    }
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!(
            "it decompresses to more than the cluster's {} bytes",
            out.len()
        )),
        Err(e) => Err(format!("the zstd data is corrupt after the cluster ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression as Level, FlushCompress};

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Level::default(), false);
        let mut out = vec![0u8; data.len() + 1024];
        c.compress(data, &mut out, FlushCompress::Finish).unwrap();
        out.truncate(c.total_out() as usize);
        out
    }

    #[test]
    fn deflate_exact_cluster_with_trailing_bytes() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = deflate(&data);
        c.extend_from_slice(&[0xAA; 300]);
        let mut out = vec![0u8; 4096];
        decompress_cluster(Compression::Deflate, &c, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_wrong_sizes_are_errors() {
        let c = deflate(&[1u8; 1000]);
        let mut out = vec![0u8; 4096];
        let e = decompress_cluster(Compression::Deflate, &c, &mut out).unwrap_err();
        assert!(e.contains("1000 bytes instead"), "{e}");
        let c = deflate(&[1u8; 8192]);
        let e = decompress_cluster(Compression::Deflate, &c, &mut out).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let c = deflate(&[1u8; 4096]);
        let e = decompress_cluster(Compression::Deflate, &c[..c.len() / 2], &mut out).unwrap_err();
        assert!(e.contains("stops after") || e.contains("corrupt"), "{e}");
    }

    #[test]
    fn zstd_rejects_garbage_and_huge_windows() {
        let mut out = vec![0u8; 4096];
        assert!(decompress_cluster(Compression::Zstd, b"not zstd at all", &mut out).is_err());
        // magic, FHD without single segment, window descriptor for 2^(10+31)
        let e = decompress_cluster(
            Compression::Zstd,
            &[0x28, 0xb5, 0x2f, 0xfd, 0, 31 << 3],
            &mut out,
        )
        .unwrap_err();
        assert!(e.contains("window"), "{e}");
    }
}
