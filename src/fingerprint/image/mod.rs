//! Disk image content fingerprints: raw, sparse raw and qcow2 (v2/v3, backing chains,
//! compressed clusters in deflate and zstd, extended L2 entries, external data files).
//!
//! # The content root (the contract; `docs/formats/image.md` has it to the byte)
//! The image is read as the guest sees it: its virtual size, bytes in guest order. It is
//! split into [`CHUNK_SIZE`] (4 MiB) chunks from offset 0 (the last one partial when the
//! size is not a multiple); `d_i` = SHA-256 of chunk `i`; the `content_root` is SHA-256 of
//! `d_0 || d_1 || ...` (32-byte digests concatenated), in lowercase hex. The same disk as
//! raw, sparse raw or qcow2 (any cluster size, compressed, an overlay) has the same root.
//!
//! # Using it
//! - [`fingerprint`]: one path in, an [`ImageFingerprint`] out (with the chunk digests when
//!   [`Options::keep_chunks`] is set).
//! - [`Image::open`] then [`Image::fingerprint`]: the same in two steps, with every chunk
//!   digest streamed to a callback (how a manifest of a huge image is written without
//!   holding its digests).
//! - [`manifest`]: `vmledger-manifest/v1` documents (the chunk digests) read and written.
//! - [`diff`]: differing byte ranges between two digest lists.
//!
//! This module only reads images; it never writes to them, never prints and never exits.
//! Memory stays bounded whatever the image size (see `hash`); only the chunk digests a
//! caller asks to keep grow with it (32 bytes per 4 MiB, 8 MiB per TiB).

mod chain;
pub mod decompress;
pub mod diff;
mod error;
mod hash;
pub mod manifest;
mod map;
mod mapped;
mod qcow2;
mod raw;
mod source;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use diff::{ByteRange, differing_ranges};
pub use error::ImageError;
pub use manifest::{MANIFEST_FORMAT, Manifest};
pub use map::Compression;
pub use source::looks_like_json_document;

/// Chunk size of the content root: 4 MiB.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// Largest virtual size fingerprinted: 16 TiB. Larger claims (a crafted 1 EiB header) are
/// refused before anything is read.
pub const MAX_VIRTUAL_SIZE: u64 = 16 << 40;
/// Most backing files below an image (deeper chains are refused).
pub const MAX_CHAIN_DEPTH: usize = 32;
/// The `format` of an image fingerprint document.
pub const IMAGE_FORMAT: &str = "vmledger-image/v1";

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Lowercase hex of a digest.
pub fn hex(d: &Digest) -> String {
    hex::encode(d)
}

/// Parse 64 lowercase hex digits.
pub fn parse_hex(s: &str) -> Option<Digest> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut d = [0u8; 32];
    hex::decode_to_slice(s, &mut d).ok()?;
    Some(d)
}

/// Number of chunks of an image of `virtual_size` bytes.
pub fn chunk_count(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(CHUNK_SIZE)
}

/// The content root of a list of chunk digests.
pub fn root_of(digests: &[Digest]) -> Digest {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// The stored format of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// Which format to read an image as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormatChoice {
    /// qcow2 when the file starts with the qcow2 magic, else raw; other known formats,
    /// JSON documents, empty files and sizes that are not a multiple of 512 are refused.
    #[default]
    Auto,
    /// The file's bytes, whatever they are.
    Raw,
    /// qcow2 (refused when the magic is missing).
    Qcow2,
}

/// Progress of one image: `done` of `total` guest bytes hashed.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// How to fingerprint.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    pub format: FormatChoice,
    /// Keep every chunk digest in [`ImageFingerprint::chunks`] (32 bytes per 4 MiB).
    pub keep_chunks: bool,
    /// Hashing threads in all, the one that reads included; 0 = one per available core.
    pub threads: usize,
    /// Called after each chunk, in order, from the calling thread.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("format", &self.format)
            .field("keep_chunks", &self.keep_chunks)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Everything the `vmledger-image/v1` document says about an image, plus (when asked)
/// the chunk digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFingerprint {
    /// The path as given.
    pub path: PathBuf,
    pub image_format: ImageFormat,
    pub virtual_size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// Bytes read from storage: data extents of raw files, allocated clusters (compressed
    /// ones at their compressed size) of every file in the chain. Holes and zero clusters
    /// are not read. Informational: not part of the root.
    pub allocated_bytes: u64,
    pub content_root: Digest,
    /// Backing files, nearest first (as resolved from the names stored in the images).
    pub backing_chain: Vec<PathBuf>,
    pub elapsed_ms: u64,
    /// The chunk digests, when [`Options::keep_chunks`] was set.
    pub chunks: Option<Vec<Digest>>,
}

/// The `vmledger-image/v1` JSON document (schema: `schemas/image.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDocument {
    pub format: String,
    pub path: String,
    pub image_format: ImageFormat,
    pub virtual_size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub allocated_bytes: u64,
    pub content_root: String,
    pub backing_chain: Vec<String>,
    pub elapsed_ms: u64,
}

impl ImageFingerprint {
    /// The JSON document for this fingerprint.
    pub fn document(&self) -> ImageDocument {
        ImageDocument {
            format: IMAGE_FORMAT.to_string(),
            path: self.path.to_string_lossy().into_owned(),
            image_format: self.image_format,
            virtual_size: self.virtual_size,
            chunk_size: self.chunk_size,
            chunk_count: self.chunk_count,
            allocated_bytes: self.allocated_bytes,
            content_root: hex(&self.content_root),
            backing_chain: self
                .backing_chain
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            elapsed_ms: self.elapsed_ms,
        }
    }
}

/// An opened image (and its backing chain), validated and ready to hash.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    chain: chain::Chain,
}

impl Image {
    /// Open `path` and every file it depends on; headers and the chain are validated
    /// here, tables and data while hashing.
    pub fn open(path: &Path, format: FormatChoice) -> Result<Image, ImageError> {
        Ok(Image {
            path: path.to_path_buf(),
            chain: chain::Chain::open(path, format)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> ImageFormat {
        self.chain.format
    }

    /// The guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.chain.virtual_size()
    }

    /// Backing files, nearest first.
    pub fn backing_chain(&self) -> &[PathBuf] {
        &self.chain.backing_chain
    }

    /// The external data file of a qcow2 image that has one.
    pub fn data_file(&self) -> Option<PathBuf> {
        self.chain.data_file()
    }

    /// Hash the image. Every chunk digest is passed to `on_chunk(index, digest)` in
    /// order (an error from it stops hashing and is returned); `chunks` in the result is
    /// `None`. `threads` (the calling one included) 0 means one per core.
    pub fn fingerprint(
        mut self,
        threads: usize,
        progress: Option<&(dyn Fn(Progress) + Sync)>,
        on_chunk: &mut dyn FnMut(u64, &Digest) -> Result<(), ImageError>,
    ) -> Result<ImageFingerprint, ImageError> {
        let started = Instant::now();
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let hashed = hash::hash_chain(&mut self.chain, threads, progress, on_chunk)?;
        let virtual_size = self.chain.virtual_size();
        Ok(ImageFingerprint {
            path: self.path,
            image_format: self.chain.format,
            virtual_size,
            chunk_size: CHUNK_SIZE,
            chunk_count: chunk_count(virtual_size),
            allocated_bytes: hashed.allocated_bytes,
            content_root: hashed.root,
            backing_chain: self.chain.backing_chain,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            chunks: None,
        })
    }
}

/// Fingerprint the image at `path` (raw or qcow2, detected unless `opts.format` says).
pub fn fingerprint(path: &Path, opts: &Options) -> Result<ImageFingerprint, ImageError> {
    let started = Instant::now();
    let image = Image::open(path, opts.format)?;
    let mut kept: Vec<Digest> = Vec::new();
    if opts.keep_chunks {
        kept.reserve_exact(chunk_count(image.virtual_size()) as usize);
    }
    let keep = opts.keep_chunks;
    let mut fp = image.fingerprint(opts.threads, opts.progress, &mut |_, d| {
        if keep {
            kept.push(*d);
        }
        Ok(())
    })?;
    if keep {
        fp.chunks = Some(kept);
    }
    fp.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(fp)
}
