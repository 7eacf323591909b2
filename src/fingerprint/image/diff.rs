//! Which byte ranges differ between two images, from their chunk digests.
//!
//! Chunk `i` covers guest bytes `[i * 4 MiB, (i + 1) * 4 MiB)`, cut at the larger of the
//! two virtual sizes. A chunk differs when its digests differ or only one side has it.
//! Adjacent differing chunks are merged into one range. A range is therefore the
//! chunk-aligned region that contains changes, not the changed bytes themselves: one
//! changed byte makes a 4 MiB range. Pure functions over values.

use serde::{Deserialize, Serialize};

use super::{CHUNK_SIZE, Digest, Image, ImageError, ImageFingerprint, Progress};

/// A byte range `[offset, offset + length)` of the guest-visible disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// Builds merged ranges from differing chunk indexes given in increasing order.
#[derive(Clone, Debug)]
pub struct RangeBuilder {
    end: u64,
    ranges: Vec<ByteRange>,
}

impl RangeBuilder {
    /// `end`: the larger virtual size (ranges are cut there).
    pub fn new(end: u64) -> RangeBuilder {
        RangeBuilder {
            end,
            ranges: Vec::new(),
        }
    }

    /// Mark chunk `index` as differing (indexes must not decrease).
    pub fn chunk(&mut self, index: u64) {
        let offset = index.saturating_mul(CHUNK_SIZE);
        if offset >= self.end {
            return;
        }
        let length = CHUNK_SIZE.min(self.end - offset);
        if let Some(last) = self.ranges.last_mut()
            && last.offset + last.length == offset
        {
            last.length += length;
            return;
        }
        self.ranges.push(ByteRange { offset, length });
    }

    /// Mark every chunk from `index` to the end as differing.
    pub fn rest_from(&mut self, index: u64) {
        let count = self.end.div_ceil(CHUNK_SIZE);
        if index < count {
            self.chunk(index);
            if let Some(last) = self.ranges.last_mut() {
                last.length = self.end - last.offset;
            }
        }
    }

    pub fn finish(self) -> Vec<ByteRange> {
        self.ranges
    }
}

/// The differing byte ranges between an image of `a_size` bytes with chunk digests `a`
/// and one of `b_size` bytes with digests `b` (adjacent chunks merged). Empty when the
/// two are identical.
pub fn differing_ranges(a: &[Digest], a_size: u64, b: &[Digest], b_size: u64) -> Vec<ByteRange> {
    let mut rb = RangeBuilder::new(a_size.max(b_size));
    let common = a.len().min(b.len());
    for i in 0..common {
        if a[i] != b[i] {
            rb.chunk(i as u64);
        }
    }
    rb.rest_from(common as u64);
    rb.finish()
}

/// Hash `image` and compare it, chunk by chunk as it is hashed, with the digests of a
/// reference of `reference_size` bytes (a manifest, or another image fingerprinted with
/// `keep_chunks`). Holds no digests of its own: memory stays bounded. Returns the image's
/// fingerprint (without chunks) and the differing ranges.
pub fn compare_image(
    image: Image,
    reference: &[Digest],
    reference_size: u64,
    threads: usize,
    progress: Option<&(dyn Fn(Progress) + Sync)>,
) -> Result<(ImageFingerprint, Vec<ByteRange>), ImageError> {
    let size = image.virtual_size();
    let mut rb = RangeBuilder::new(size.max(reference_size));
    let fp = image.fingerprint(threads, progress, &mut |i, d| {
        if reference.get(i as usize) != Some(d) {
            rb.chunk(i);
        }
        Ok(())
    })?;
    // Chunks only the reference has.
    rb.rest_from(fp.chunk_count);
    Ok((fp, rb.finish()))
}

/// Total bytes covered by `ranges`: the size of the chunk-aligned regions that contain
/// changes, not the number of bytes that changed (one changed byte makes a 4 MiB region).
pub fn total(ranges: &[ByteRange]) -> u64 {
    ranges.iter().map(|r| r.length).sum()
}

/// A byte count for people: `16 MiB` when a whole number of MiB, else the bytes (and MiB).
pub fn size_words(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{bytes} bytes ({:.1} MiB)", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// What differing `ranges` mean, in words that do not overstate the change: ranges are
/// the chunk-aligned regions containing changes, e.g. `2 regions (16 MiB in all, whole
/// 4 MiB chunks) contain changes`.
pub fn summary(ranges: &[ByteRange]) -> String {
    format!(
        "{} region{} ({} in all, whole {} MiB chunks) contain{} changes; how many bytes changed inside them is not known",
        ranges.len(),
        if ranges.len() == 1 { "" } else { "s" },
        size_words(total(ranges)),
        CHUNK_SIZE >> 20,
        if ranges.len() == 1 { "s" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_regions_not_changed_bytes() {
        let r = [
            ByteRange {
                offset: 0,
                length: 12 << 20,
            },
            ByteRange {
                offset: 40 << 20,
                length: 4 << 20,
            },
        ];
        assert_eq!(
            summary(&r),
            "2 regions (16 MiB in all, whole 4 MiB chunks) contain changes; how many bytes changed inside them is not known"
        );
        assert!(
            summary(&r[1..])
                .starts_with("1 region (4 MiB in all, whole 4 MiB chunks) contains changes")
        );
        assert_eq!(size_words(4194816), "4194816 bytes (4.0 MiB)");
        assert_eq!(size_words(512), "512 bytes");
    }

    const C: u64 = CHUNK_SIZE;

    fn d(x: u8) -> Digest {
        [x; 32]
    }

    #[test]
    fn identical_lists_have_no_ranges() {
        assert!(differing_ranges(&[d(1), d(2)], 2 * C, &[d(1), d(2)], 2 * C).is_empty());
        assert!(differing_ranges(&[], 0, &[], 0).is_empty());
    }

    #[test]
    fn adjacent_chunks_merge_and_the_last_chunk_is_cut() {
        let a = [d(1), d(2), d(3), d(4), d(5)];
        let b = [d(1), d(9), d(9), d(4), d(9)];
        let size = 4 * C + 512;
        let r = differing_ranges(&a, size, &b, size);
        assert_eq!(
            r,
            vec![
                ByteRange {
                    offset: C,
                    length: 2 * C
                },
                ByteRange {
                    offset: 4 * C,
                    length: 512
                }
            ]
        );
    }

    #[test]
    fn a_longer_image_differs_from_the_shorter_ones_end() {
        let r = differing_ranges(&[d(1), d(2)], 2 * C, &[d(1), d(2), d(3), d(4)], 3 * C + 10);
        assert_eq!(
            r,
            vec![ByteRange {
                offset: 2 * C,
                length: C + 10
            }]
        );
        let r = differing_ranges(&[d(1), d(7)], 2 * C, &[d(1)], C);
        assert_eq!(
            r,
            vec![ByteRange {
                offset: C,
                length: C
            }]
        );
        // a differing last common chunk merges with the extra tail
        let r = differing_ranges(&[d(1), d(7)], C + 5, &[d(1), d(8), d(9)], 3 * C);
        assert_eq!(
            r,
            vec![ByteRange {
                offset: C,
                length: 2 * C
            }]
        );
    }
}
