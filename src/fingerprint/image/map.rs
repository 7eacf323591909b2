//! Guest-offset extents: what a layer (or the whole chain) says a range of the virtual
//! disk is made of. Pure data; nothing here reads a file.

/// How compressed clusters are compressed (qcow2 `compression_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (RFC 1951, no zlib header): qcow2 compression type 0, "zlib" in QEMU.
    Deflate,
    /// Zstandard: qcow2 compression type 1.
    Zstd,
}

/// Where the bytes of an extent come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Reads as zeros (a hole, a zero cluster, past the end of a backing file).
    Zero,
    /// Not allocated in this layer: the next layer down decides (zeros at the bottom).
    Unallocated,
    /// Stored as is in file number `file` of the chain, at byte `host`.
    Data { file: usize, host: u64 },
    /// Part of a compressed cluster: `csize` bytes at `host` in file `file` decompress to
    /// `cluster` bytes, of which this extent is `skip..skip + len`.
    Compressed {
        file: usize,
        host: u64,
        csize: u64,
        cluster: u32,
        skip: u32,
        algo: Compression,
    },
}

/// A range of guest bytes `[guest, guest + len)` and where they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub guest: u64,
    pub len: u64,
    pub piece: Piece,
}

/// Append `e` to `out`, merging it into the previous extent when they continue each other
/// (zeros after zeros, unallocated after unallocated, contiguous data in the same file).
pub fn push(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.guest + last.len == e.guest
    {
        let merged = match (last.piece, e.piece) {
            (Piece::Zero, Piece::Zero) | (Piece::Unallocated, Piece::Unallocated) => true,
            (Piece::Data { file: f1, host: h1 }, Piece::Data { file: f2, host: h2 }) => {
                f1 == f2 && h1 + last.len == h2
            }
            _ => false,
        };
        if merged {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_only_what_continues() {
        let mut v = Vec::new();
        push(
            &mut v,
            Extent {
                guest: 0,
                len: 10,
                piece: Piece::Zero,
            },
        );
        push(
            &mut v,
            Extent {
                guest: 10,
                len: 5,
                piece: Piece::Zero,
            },
        );
        push(
            &mut v,
            Extent {
                guest: 15,
                len: 5,
                piece: Piece::Data { file: 0, host: 100 },
            },
        );
        push(
            &mut v,
            Extent {
                guest: 20,
                len: 5,
                piece: Piece::Data { file: 0, host: 105 },
            },
        );
        push(
            &mut v,
            Extent {
                guest: 25,
                len: 5,
                piece: Piece::Data { file: 0, host: 200 },
            },
        );
        push(
            &mut v,
            Extent {
                guest: 30,
                len: 0,
                piece: Piece::Zero,
            },
        );
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].len, 15);
        assert_eq!(v[1].len, 10);
        assert_eq!(v[2].guest, 25);
    }
}
