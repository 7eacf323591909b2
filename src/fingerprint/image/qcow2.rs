//! The qcow2 reader (versions 2 and 3), written against QEMU's `docs/interop/qcow2.rst`.
//!
//! Owns parsing and validating the header and its extensions, and translating guest
//! ranges into extents through the L1/L2 tables (standard and extended L2 entries, zero
//! clusters, compressed clusters, external data files). Backing files are opened by
//! `chain`, not here.
//!
//! Everything a file says is bounded before it is used: cluster_bits 9..=21, the L1 table
//! at most 32 MiB and inside the file, every table and data offset aligned, outside the
//! header cluster and inside the file, header extensions inside the first cluster, unknown
//! incompatible features and encryption refused, the virtual size capped. Tables are read
//! through a small LRU of 64 KiB slices, so memory does not grow with the image; a layer
//! that maps more data than its file holds (clusters referenced over and over to make a
//! small file look huge) is refused. Nothing here writes to an image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::MAX_VIRTUAL_SIZE;
use super::error::ImageError;
use super::map::{self, Compression, Extent, Piece};
use super::source::ImageFile;

/// Largest L1 table accepted, in bytes (QEMU's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Guest clusters allowed to reuse the compressed data of the one before them.
const MAX_COMPRESSED_REPEATS: u64 = 64;
/// Table slices are read and cached in units of this many bytes.
const SLICE: u64 = 64 << 10;
/// Cached slices per layer: L1 and L2.
const L1_SLOTS: usize = 2;
const L2_SLOTS: usize = 4;

// Bit 0 (dirty: refcounts may be stale) does not matter to a reader.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
const AUTOCLEAR_RAW_DATA: u64 = 1 << 1;

const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L1E_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// What the header and its extensions say, validated.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_offset: u64,
    pub l1_size: u32,
    pub extended_l2: bool,
    pub compression: Compression,
    /// The backing file name as stored (not yet resolved).
    pub backing_file: Option<Vec<u8>>,
    /// The backing file format from the header extension, when present.
    pub backing_format: Option<String>,
    /// The external data file name as stored, when the image uses one.
    pub data_file: Option<Vec<u8>>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// L2 entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / if self.extended_l2 { 16 } else { 8 }
    }

    /// L1 entries needed to map the virtual size.
    pub fn l1_needed(&self) -> u64 {
        let clusters = self.virtual_size.div_ceil(self.cluster_size());
        clusters.div_ceil(self.l2_entries())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parse and validate the header of the qcow2 image `f` (whose magic was checked).
pub fn parse_header(f: &ImageFile) -> Result<Header, ImageError> {
    let path = &f.path;
    let bad = |p: String| ImageError::malformed(path, p);
    let mut fixed = [0u8; 112];
    let n = f.read_up_to(&mut fixed, 0)?;
    if n < 72 {
        return Err(bad(format!(
            "the file is truncated: a qcow2 header needs at least 72 bytes, the file has {n}"
        )));
    }
    if fixed[..4] != *b"QFI\xfb" {
        return Err(ImageError::NotAnImage {
            path: path.clone(),
            reason: "it does not start with the qcow2 magic `QFI\\xfb`".into(),
        });
    }
    let version = be32(&fixed, 4);
    if version == 1 {
        return Err(ImageError::NotAnImage {
            path: path.clone(),
            reason: "it is a version 1 qcow image; convert it with `qemu-img convert -O qcow2`"
                .into(),
        });
    }
    if version != 2 && version != 3 {
        return Err(ImageError::Unsupported {
            path: path.clone(),
            what: format!("qcow2 version {version} (vmledger reads versions 2 and 3)"),
        });
    }
    let backing_offset = be64(&fixed, 8);
    let backing_size = be32(&fixed, 16);
    let cluster_bits = be32(&fixed, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!(
            "cluster_bits is {cluster_bits}; it must be 9 to 21 (512-byte to 2 MiB clusters)"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let virtual_size = be64(&fixed, 24);
    let crypt_method = be32(&fixed, 32);
    let l1_size = be32(&fixed, 36);
    let l1_offset = be64(&fixed, 40);

    let (incompatible, autoclear, header_length, compression_byte) = if version == 3 {
        if n < 104 {
            return Err(bad(format!(
                "the file is truncated: a version 3 header needs at least 104 bytes, the file has {n}"
            )));
        }
        let header_length = be32(&fixed, 100);
        if header_length < 104 || header_length % 8 != 0 {
            return Err(bad(format!(
                "header_length is {header_length}; it must be a multiple of 8 and at least 104"
            )));
        }
        if u64::from(header_length) > cluster_size || u64::from(header_length) > f.len {
            return Err(bad(format!(
                "header_length {header_length} runs past the first cluster or the end of the file"
            )));
        }
        let refcount_order = be32(&fixed, 96);
        if refcount_order > 6 {
            return Err(bad(format!(
                "refcount_order is {refcount_order}; it must be at most 6"
            )));
        }
        let compression_byte = if header_length > 104 && n > 104 {
            fixed[104]
        } else {
            0
        };
        (
            be64(&fixed, 72),
            be64(&fixed, 88),
            u64::from(header_length),
            compression_byte,
        )
    } else {
        (0, 0, 72, 0)
    };

    match crypt_method {
        0 => {}
        1 => {
            return Err(ImageError::Encrypted {
                path: path.clone(),
                method: "qcow2 AES",
            });
        }
        2 => {
            return Err(ImageError::Encrypted {
                path: path.clone(),
                method: "LUKS",
            });
        }
        m => {
            return Err(bad(format!(
                "crypt_method is {m}; known values are 0, 1 and 2"
            )));
        }
    }

    // The first cluster holds the header, its extensions and the backing file name.
    let first_len = cluster_size.min(f.len);
    let mut first = vec![0u8; first_len as usize];
    f.read_exact_at(&mut first, 0)?;

    // Backing file name.
    let backing_file = if backing_offset != 0 {
        if backing_size == 0 || backing_size > 1023 {
            return Err(bad(format!(
                "the backing file name is {backing_size} bytes long; it must be 1 to 1023"
            )));
        }
        let end = backing_offset.checked_add(u64::from(backing_size));
        if backing_offset < header_length || end.is_none_or(|e| e > first_len) {
            return Err(bad(format!(
                "the backing file name (offset {backing_offset}, {backing_size} bytes) is not inside the first cluster after the header"
            )));
        }
        let s = backing_offset as usize;
        Some(first[s..s + backing_size as usize].to_vec())
    } else {
        None
    };

    // Header extensions.
    let ext_end = if backing_offset != 0 {
        backing_offset
    } else {
        first_len
    } as usize;
    let mut at = header_length as usize;
    let mut seen: Vec<u32> = Vec::new();
    let mut backing_format = None;
    let mut data_file = None;
    let mut feature_names: Vec<(u8, u8, String)> = Vec::new();
    while at < ext_end {
        if at + 8 > ext_end {
            return Err(bad(format!(
                "a header extension at byte {at} is cut off by the end of the header area"
            )));
        }
        let kind = be32(&first, at);
        let len = be32(&first, at + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data_at = at + 8;
        if len > ext_end - data_at {
            return Err(bad(format!(
                "header extension {kind:#010x} at byte {at} ({len} bytes) runs past the end of the header area"
            )));
        }
        let data = &first[data_at..data_at + len];
        if kind != EXT_FEATURE_TABLE
            && matches!(
                kind,
                EXT_BACKING_FORMAT | EXT_BITMAPS | EXT_CRYPTO | EXT_DATA_FILE
            )
        {
            if seen.contains(&kind) {
                return Err(bad(format!("header extension {kind:#010x} appears twice")));
            }
            seen.push(kind);
        }
        match kind {
            EXT_BACKING_FORMAT => {
                if len == 0 || len > 15 {
                    return Err(bad(format!(
                        "the backing format extension is {len} bytes long; it must be 1 to 15"
                    )));
                }
                let s = std::str::from_utf8(data)
                    .map_err(|_| bad("the backing format name is not UTF-8".into()))?;
                backing_format = Some(s.to_string());
            }
            EXT_DATA_FILE => {
                if len == 0 || len > 4095 {
                    return Err(bad(format!(
                        "the external data file name is {len} bytes long; it must be 1 to 4095"
                    )));
                }
                data_file = Some(data.to_vec());
            }
            EXT_FEATURE_TABLE => {
                for e in data.chunks_exact(48) {
                    let name = e[2..]
                        .iter()
                        .take_while(|b| **b != 0)
                        .map(|b| char::from(*b))
                        .filter(|c| c.is_ascii_graphic() || *c == ' ')
                        .collect();
                    feature_names.push((e[0], e[1], name));
                }
            }
            EXT_CRYPTO => {
                return Err(bad(
                    "it has an encryption header extension but crypt_method is 0".into(),
                ));
            }
            _ => {}
        }
        at = data_at + len.div_ceil(8) * 8;
    }

    // Features.
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let names: Vec<String> = (0..64)
            .filter(|b| unknown & (1u64 << b) != 0)
            .map(|b| {
                feature_names
                    .iter()
                    .find(|(t, bit, _)| *t == 0 && u32::from(*bit) == b)
                    .map(|(_, _, n)| format!("bit {b} ({n})"))
                    .unwrap_or_else(|| format!("bit {b}"))
            })
            .collect();
        return Err(ImageError::Unsupported {
            path: path.clone(),
            what: format!(
                "unknown incompatible qcow2 features: {} (a newer QEMU wrote it; convert it with a QEMU that knows them)",
                names.join(", ")
            ),
        });
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(bad(
            "QEMU marked it corrupt (incompatible feature bit 1); check and repair it with `qemu-img check -r all` first".into(),
        ));
    }
    let compression = if incompatible & INCOMPAT_COMPRESSION != 0 {
        if header_length <= 104 {
            return Err(bad(
                "the compression type feature is set but the header has no compression_type field"
                    .into(),
            ));
        }
        match compression_byte {
            0 => {
                return Err(bad(
                    "the compression type feature is set but compression_type is 0".into(),
                ));
            }
            1 => Compression::Zstd,
            t => {
                return Err(ImageError::Unsupported {
                    path: path.clone(),
                    what: format!("compression type {t} (vmledger reads deflate and zstd)"),
                });
            }
        }
    } else {
        if compression_byte != 0 {
            return Err(bad(format!(
                "compression_type is {compression_byte} but the compression type feature bit is not set"
            )));
        }
        Compression::Deflate
    };
    let extended_l2 = incompatible & INCOMPAT_EXTL2 != 0;
    if extended_l2 && cluster_bits < 14 {
        return Err(bad(format!(
            "extended L2 entries need clusters of at least 16 KiB; this image has {cluster_size}-byte clusters"
        )));
    }
    let data_file = if incompatible & INCOMPAT_DATA_FILE != 0 {
        match data_file {
            Some(name) => Some(name),
            None => {
                return Err(ImageError::Unsupported {
                    path: path.clone(),
                    what: "an external data file whose name is not recorded in the image".into(),
                });
            }
        }
    } else {
        None
    };
    if data_file.is_some() && autoclear & AUTOCLEAR_RAW_DATA != 0 && backing_file.is_some() {
        return Err(bad(
            "it has a raw external data file and a backing file, which cannot be combined".into(),
        ));
    }

    // Size and L1 table.
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(ImageError::TooLarge {
            path: path.clone(),
            size: virtual_size,
            limit: MAX_VIRTUAL_SIZE,
        });
    }
    let header = Header {
        version,
        cluster_bits,
        virtual_size,
        l1_offset,
        l1_size,
        extended_l2,
        compression,
        backing_file,
        backing_format,
        data_file,
    };
    let l1_bytes = u64::from(l1_size) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(bad(format!(
            "l1_size is {l1_size} entries ({l1_bytes} bytes), above the 32 MiB limit"
        )));
    }
    let needed = header.l1_needed();
    if u64::from(l1_size) < needed {
        return Err(bad(format!(
            "the L1 table has {l1_size} entries but the virtual size ({virtual_size} bytes) needs {needed}"
        )));
    }
    if l1_size > 0 {
        if l1_offset % cluster_size != 0 {
            return Err(bad(format!(
                "the L1 table offset {l1_offset:#x} is not aligned to the cluster size ({cluster_size})"
            )));
        }
        if l1_offset < cluster_size {
            return Err(bad(format!(
                "the L1 table offset {l1_offset:#x} is inside the header cluster"
            )));
        }
        if l1_offset.checked_add(l1_bytes).is_none_or(|e| e > f.len) {
            return Err(bad(format!(
                "the L1 table (offset {l1_offset:#x}, {l1_size} entries) runs past the end of the file ({} bytes); the file is truncated or corrupt",
                f.len
            )));
        }
    }
    Ok(header)
}

/// A small LRU of table slices read from one file.
#[derive(Debug)]
struct SliceCache {
    slots: Vec<(u64, Vec<u8>, u64)>,
    cap: usize,
    tick: u64,
}

impl SliceCache {
    fn new(cap: usize) -> SliceCache {
        SliceCache {
            slots: Vec::with_capacity(cap),
            cap,
            tick: 0,
        }
    }

    /// The entry of `width` bytes (8 or 16) at byte `pos` of the table at `table` (of
    /// `table_len` bytes, slices aligned from its start), as big-endian u64s.
    fn entry(
        &mut self,
        f: &ImageFile,
        table: u64,
        table_len: u64,
        pos: u64,
        width: u64,
    ) -> Result<(u64, u64), ImageError> {
        let slice_start = pos / SLICE * SLICE;
        let key = table + slice_start;
        let len = SLICE.min(table_len - slice_start) as usize;
        self.tick += 1;
        let tick = self.tick;
        let i = match self
            .slots
            .iter()
            .position(|s| s.0 == key && s.1.len() == len)
        {
            Some(i) => i,
            None => {
                let i = if self.slots.len() < self.cap {
                    self.slots.push((key, Vec::new(), 0));
                    self.slots.len() - 1
                } else {
                    let (i, _) = self
                        .slots
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.2)
                        .unwrap_or((0, &self.slots[0]));
                    i
                };
                let slot = &mut self.slots[i];
                slot.0 = key;
                slot.1.resize(len, 0);
                if let Err(e) = f.read_exact_at(&mut slot.1, key) {
                    slot.1.clear();
                    return Err(e);
                }
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.2 = tick;
        let at = (pos - slice_start) as usize;
        let a = be64(&slot.1, at);
        let b = if width == 16 {
            be64(&slot.1, at + 8)
        } else {
            0
        };
        Ok((a, b))
    }
}

/// A qcow2 image as one layer of a chain.
#[derive(Debug)]
pub struct Qcow2Layer {
    pub header: Header,
    file: Arc<ImageFile>,
    /// Where guest data lives: this file or the external data file.
    data: Arc<ImageFile>,
    data_index: usize,
    external: bool,
    l1: SliceCache,
    l2: SliceCache,
    /// Guest bytes mapped to stored data / compressed bytes referenced so far.
    data_mapped: u64,
    /// The previous compressed cluster's host offset, and how many compressed clusters
    /// reused the offset just before them.
    last_compressed: u64,
    compressed_repeats: u64,
}

impl Qcow2Layer {
    /// `file_index` / `data_index`: the numbers of the image file and of the file holding
    /// its data (the same unless it has an external data file) in the chain's table.
    pub fn new(
        header: Header,
        file: Arc<ImageFile>,
        data: Arc<ImageFile>,
        data_index: usize,
    ) -> Qcow2Layer {
        let external = header.data_file.is_some();
        Qcow2Layer {
            header,
            file,
            data,
            data_index,
            external,
            l1: SliceCache::new(L1_SLOTS),
            l2: SliceCache::new(L2_SLOTS),
            data_mapped: 0,
            last_compressed: u64::MAX,
            compressed_repeats: 0,
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn path(&self) -> &Path {
        &self.file.path
    }

    fn bad(&self, problem: String) -> ImageError {
        ImageError::malformed(self.path(), problem)
    }

    /// Describe `[off, off + len)` (inside the virtual size) as extents.
    pub fn map(&mut self, off: u64, len: u64, out: &mut Vec<Extent>) -> Result<(), ImageError> {
        let cb = self.header.cluster_bits;
        let cs = self.header.cluster_size();
        let l2_entries = self.header.l2_entries();
        let width = if self.header.extended_l2 { 16 } else { 8 };
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let cluster = pos >> cb;
            let l1_idx = cluster / l2_entries;
            let l2_idx = cluster % l2_entries;
            let (l1e, _) = self.l1.entry(
                &self.file,
                self.header.l1_offset,
                u64::from(self.header.l1_size) * 8,
                l1_idx * 8,
                8,
            )?;
            if l1e & L1E_RESERVED != 0 {
                return Err(self.bad(format!(
                    "L1 entry {l1_idx} ({l1e:#018x}) has reserved bits set"
                )));
            }
            let l2_off = l1e & L1E_OFFSET_MASK;
            if l2_off == 0 {
                let span_end = ((l1_idx + 1) * l2_entries * cs).min(end);
                map::push(
                    out,
                    Extent {
                        guest: pos,
                        len: span_end - pos,
                        piece: Piece::Unallocated,
                    },
                );
                pos = span_end;
                continue;
            }
            if l2_off % cs != 0 {
                return Err(self.bad(format!(
                    "L1 entry {l1_idx} points to an L2 table at {l2_off:#x}, which is not aligned to the cluster size ({cs})"
                )));
            }
            if l2_off < cs {
                return Err(self.bad(format!(
                    "L1 entry {l1_idx} points to an L2 table inside the header cluster ({l2_off:#x})"
                )));
            }
            if l2_off + cs > self.file.len {
                return Err(self.bad(format!(
                    "L1 entry {l1_idx} points to an L2 table at {l2_off:#x}, past the end of the file ({} bytes)",
                    self.file.len
                )));
            }
            let (l2e, bitmap) = self
                .l2
                .entry(&self.file, l2_off, cs, l2_idx * width, width)?;
            let c_start = cluster << cb;
            let c_end = (c_start + cs).min(end);
            self.map_cluster(l2e, bitmap, c_start, pos, c_end, l2_off, l2_idx, out)?;
            pos = c_end;
        }
        Ok(())
    }

    /// Map `[pos, stop)`, a part of the cluster starting at guest offset `c_start`.
    #[allow(clippy::too_many_arguments)]
    fn map_cluster(
        &mut self,
        l2e: u64,
        bitmap: u64,
        c_start: u64,
        pos: u64,
        stop: u64,
        l2_off: u64,
        l2_idx: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), ImageError> {
        let cb = self.header.cluster_bits;
        let cs = self.header.cluster_size();
        let at = |what: &str| {
            format!(
                "the L2 entry for guest offset {c_start:#x} (table {l2_off:#x}, index {l2_idx}) {what}"
            )
        };
        if l2e & OFLAG_COMPRESSED != 0 {
            if self.external {
                return Err(self.bad(at(
                    "is a compressed cluster, which images with an external data file cannot have",
                )));
            }
            if self.header.extended_l2 && bitmap != 0 {
                return Err(self.bad(at(
                    "is a compressed cluster with a non-zero subcluster bitmap (reserved bits set)",
                )));
            }
            let x = 62 - (cb - 8);
            let host = l2e & ((1u64 << x) - 1);
            if host >> 56 != 0 {
                return Err(self.bad(at("has reserved bits set in its compressed offset")));
            }
            let sectors = ((l2e >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
            let csize = sectors * 512 - (host & 511);
            if host < cs {
                return Err(self.bad(at(&format!(
                    "points to compressed data inside the header cluster ({host:#x})"
                ))));
            }
            let flen = self.file.len;
            if host >= flen {
                return Err(self.bad(at(&format!(
                    "points to compressed data at {host:#x}, past the end of the file ({flen} bytes)"
                ))));
            }
            // The last sector may be partly past the end of the file; whole sectors may not.
            if host + csize > flen + 511 {
                return Err(self.bad(at(&format!(
                    "has compressed data ({sectors} sectors at {host:#x}) running past the end of the file ({flen} bytes)"
                ))));
            }
            let csize = csize.min(flen - host);
            // QEMU never points two guest clusters at the same compressed data; tables
            // that do make a small file decompress to a huge disk.
            if host == self.last_compressed && pos == c_start {
                self.compressed_repeats += 1;
                if self.compressed_repeats > MAX_COMPRESSED_REPEATS {
                    return Err(self.amplified());
                }
            }
            self.last_compressed = host;
            map::push(
                out,
                Extent {
                    guest: pos,
                    len: stop - pos,
                    piece: Piece::Compressed {
                        file: self.data_index,
                        host,
                        csize,
                        cluster: cs as u32,
                        skip: (pos - c_start) as u32,
                        algo: self.header.compression,
                    },
                },
            );
            return Ok(());
        }
        if l2e & L2E_STD_RESERVED != 0 {
            return Err(self.bad(at(&format!("({l2e:#018x}) has reserved bits set"))));
        }
        let zero_flag = l2e & OFLAG_ZERO != 0;
        if zero_flag && (self.header.version == 2 || self.header.extended_l2) {
            return Err(self.bad(at(&format!(
                "({l2e:#018x}) has bit 0 set, which is reserved in {}",
                if self.header.extended_l2 {
                    "images with extended L2 entries"
                } else {
                    "version 2 images"
                }
            ))));
        }
        let host = l2e & L2E_OFFSET_MASK;
        let allocated = host != 0 || (self.external && l2e & OFLAG_COPIED != 0);
        if allocated {
            if host % cs != 0 {
                return Err(self.bad(at(&format!(
                    "points to data at {host:#x}, which is not aligned to the cluster size ({cs})"
                ))));
            }
            if self.external {
                if host != c_start {
                    return Err(self.bad(at(&format!(
                        "points to {host:#x} in the external data file; it must equal the guest offset"
                    ))));
                }
            } else if host < cs {
                return Err(self.bad(at("points to data inside the header cluster")));
            }
        }
        let data_end_ok = |layer: &Self, upto: u64| -> Result<(), ImageError> {
            // `upto`: bytes of this cluster that are read.
            if host + upto > layer.data.len {
                let what = if layer.external {
                    format!("the external data file {}", layer.data.path.display())
                } else {
                    "the file".to_string()
                };
                return Err(layer.bad(at(&format!(
                    "points to data at {host:#x}, past the end of {what} ({} bytes)",
                    layer.data.len
                ))));
            }
            Ok(())
        };
        if !self.header.extended_l2 {
            let piece = if zero_flag {
                Piece::Zero
            } else if !allocated {
                Piece::Unallocated
            } else {
                data_end_ok(self, stop - c_start)?;
                self.count_data(stop - pos)?;
                Piece::Data {
                    file: self.data_index,
                    host: host + (pos - c_start),
                }
            };
            map::push(
                out,
                Extent {
                    guest: pos,
                    len: stop - pos,
                    piece,
                },
            );
            return Ok(());
        }
        let alloc = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if alloc & zero != 0 {
            return Err(self.bad(at(&format!(
                "has subclusters marked both allocated and zero (bitmap {bitmap:#018x})"
            ))));
        }
        if !allocated && alloc != 0 {
            return Err(self.bad(at(&format!(
                "has allocated subclusters but no host offset (bitmap {bitmap:#018x})"
            ))));
        }
        let sc = cs / 32;
        let mut p = pos;
        while p < stop {
            let idx = (p - c_start) / sc;
            let sc_end = (c_start + (idx + 1) * sc).min(stop);
            let piece = if alloc & (1 << idx) != 0 {
                data_end_ok(self, sc_end - c_start)?;
                self.count_data(sc_end - p)?;
                Piece::Data {
                    file: self.data_index,
                    host: host + (p - c_start),
                }
            } else if zero & (1 << idx) != 0 {
                Piece::Zero
            } else {
                Piece::Unallocated
            };
            map::push(
                out,
                Extent {
                    guest: p,
                    len: sc_end - p,
                    piece,
                },
            );
            p = sc_end;
        }
        Ok(())
    }

    fn count_data(&mut self, n: u64) -> Result<(), ImageError> {
        self.data_mapped += n;
        if self.data_mapped > self.data.len + self.header.cluster_size() {
            return Err(self.amplified());
        }
        Ok(())
    }

    fn amplified(&self) -> ImageError {
        self.bad(
            "its tables map more data than the file holds (the same clusters are referenced again and again); it is corrupt or crafted".into(),
        )
    }

    /// Where the image's data lives, when that is an external data file.
    pub fn data_file_path(&self) -> Option<PathBuf> {
        self.external.then(|| self.data.path.clone())
    }
}
