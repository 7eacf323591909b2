//! The hashing pipeline: one reader, several hashers.
//!
//! The calling thread (the reader) walks the image in guest order, one 4 MiB chunk at a
//! time, and describes each chunk as segments in guest order: runs of zeros; long runs of
//! stored data in a regular file (at least [`MAP_MIN`] bytes), left to be hashed where
//! they lie in the page cache (see `mapped`: this saves copying every byte once); and bytes
//! it reads into the chunk buffer itself (short runs, block devices, the compressed bytes
//! of compressed clusters). Hasher threads decompress the compressed clusters into the
//! buffer and SHA-256 the segments in order, zeros from a static block.
//!
//! Of `threads` hashing threads the reader is one: there are `threads - 1` hasher
//! threads, and when every job is queued the reader hashes one itself instead of waiting
//! (so as many threads hash as there are cores, not one more: 4-5% faster on 2 cores).
//!
//! Chunks are handed out in order, so the disk is read front to back within a window of
//! a few chunks (the pool), which suits a spinning disk: the reader's own reads are
//! sequential, and the pages of mapped runs are faulted in by the hashers with the
//! kernel's read-ahead (`POSIX_FADV_SEQUENTIAL`). Asking for each run ahead with
//! `POSIX_FADV_WILLNEED` measured slower (2.0 s against 1.2 s for 2 GiB not in the page
//! cache). A chunk that is all zeros (holes, zero or unallocated clusters) is not read or
//! hashed at all: its digest is computed once per length and reused.
//!
//! Memory is bounded by the pool: `threads + 1` chunk buffers (4 MiB each, plus at most
//! [`COMP_BUDGET`] of compressed bytes), a cluster buffer per hasher, one mapped run (at
//! most a chunk) per hashing thread, and the digests of at most [`MAX_PENDING`] chunks
//! that finish out of order. Digests leave in guest order through a callback.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::chain::Chain;
use super::decompress::decompress_cluster;
use super::error::ImageError;
use super::map::{Compression, Extent, Piece};
use super::mapped;
use super::source::ImageFile;
use super::{CHUNK_SIZE, Digest, Progress};

/// Most compressed bytes gathered for one chunk before the reader decompresses them
/// itself (QEMU's compressed clusters are at most a cluster plus a sector, so a chunk's
/// rarely exceed this; crafted tables may claim up to two clusters each).
const COMP_BUDGET: usize = 4 << 20;

/// Most finished digests held back waiting for an earlier chunk.
const MAX_PENDING: usize = 1024;

/// Runs of stored data at least this long are hashed where they lie (mapped) when they can
/// be (see `mapped::mappable`); shorter ones, and those of block devices, are read into
/// the chunk buffer by the reader (for short runs a copy costs less than a mapping).
const MAP_MIN: u64 = 256 << 10;

/// Zeros to hash zero runs from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// One run of a chunk's bytes, in guest order, as the hasher feeds them to SHA-256.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// Zero bytes.
    Zero { len: usize },
    /// `buf[dst..dst + len]`: read by the reader, or decompressed by the hasher.
    Buf { dst: usize, len: usize },
    /// `len` bytes of file number `file` at `host`, hashed in place (read into
    /// `buf[dst..dst + len]` instead where they cannot be mapped).
    Mapped {
        dst: usize,
        len: usize,
        file: usize,
        host: u64,
    },
}

/// A compressed cluster (or part of one) to decompress into the chunk.
#[derive(Debug)]
struct CompPiece {
    /// Offset in the chunk and length.
    dst: usize,
    len: usize,
    /// Where the piece starts in the decompressed cluster.
    skip: usize,
    /// The compressed bytes in `Job::comp`.
    src: Range<usize>,
    cluster: usize,
    algo: Compression,
    file: usize,
    host: u64,
    guest: u64,
}

#[derive(Debug, Default)]
struct Job {
    index: u64,
    len: usize,
    buf: Vec<u8>,
    segs: Vec<Seg>,
    comp: Vec<u8>,
    pieces: Vec<CompPiece>,
}

/// A job's chunk buffer `buf`, grown to the chunk's length `len` when first needed: a
/// chunk made only of zeros and mapped runs (most of a raw or uncompressed qcow2 image)
/// never needs one.
fn grown(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

struct Done {
    index: u64,
    result: Result<Digest, ImageError>,
    job: Job,
}

/// What hashing produced.
#[derive(Debug)]
pub struct Hashed {
    pub root: Digest,
    pub allocated_bytes: u64,
}

/// Hash every chunk of `chain` on `threads` threads (the calling one included), passing
/// each chunk digest in order to `sink` and progress to `progress`.
pub fn hash_chain(
    chain: &mut Chain,
    threads: usize,
    progress: Option<&(dyn Fn(Progress) + Sync)>,
    sink: &mut dyn FnMut(u64, &Digest) -> Result<(), ImageError>,
) -> Result<Hashed, ImageError> {
    let size = chain.virtual_size();
    let chunks = size.div_ceil(CHUNK_SIZE);
    let hashers = threads.max(1) - 1;
    let files: Vec<Arc<ImageFile>> = chain.files.clone();
    for f in &files {
        f.advise_sequential();
    }
    let pool = hashers + 2;
    let (job_tx, job_rx) = sync_channel::<Job>(pool);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel::<Done>();

    std::thread::scope(|s| {
        for _ in 0..hashers {
            let done_tx = done_tx.clone();
            let (job_rx, files) = (&job_rx, &files);
            s.spawn(move || hasher(job_rx, done_tx, files));
        }
        drop(done_tx);
        let mut state = Reader {
            chain,
            files: &files,
            size,
            sink,
            progress,
            root: Sha256::new(),
            next: 0,
            pending: BTreeMap::new(),
            zero: HashMap::new(),
            allocated: 0,
            free: (0..pool).map(|_| Job::default()).collect(),
            in_flight: 0,
            extents: Vec::new(),
            cluster_buf: Vec::new(),
            hashers,
        };
        let result = state.run(chunks, &job_tx, &job_rx, &done_rx);
        drop(job_tx);
        // Let the hashers finish what they hold before the scope joins them.
        while state.in_flight > 0 {
            if done_rx.recv().is_err() {
                break;
            }
            state.in_flight -= 1;
        }
        result.map(|()| Hashed {
            root: state.root.finalize().into(),
            allocated_bytes: state.allocated,
        })
    })
}

struct Reader<'a, 'b> {
    chain: &'a mut Chain,
    files: &'a [Arc<ImageFile>],
    size: u64,
    sink: &'a mut dyn FnMut(u64, &Digest) -> Result<(), ImageError>,
    progress: Option<&'b (dyn Fn(Progress) + Sync)>,
    root: Sha256,
    /// The next chunk index to pass to the sink.
    next: u64,
    pending: BTreeMap<u64, Digest>,
    zero: HashMap<usize, Digest>,
    allocated: u64,
    free: Vec<Job>,
    in_flight: usize,
    extents: Vec<Extent>,
    cluster_buf: Vec<u8>,
    /// Hasher threads besides this one.
    hashers: usize,
}

impl Reader<'_, '_> {
    fn run(
        &mut self,
        chunks: u64,
        job_tx: &std::sync::mpsc::SyncSender<Job>,
        job_rx: &Mutex<Receiver<Job>>,
        done_rx: &Receiver<Done>,
    ) -> Result<(), ImageError> {
        for index in 0..chunks {
            let start = index * CHUNK_SIZE;
            let len = (self.size - start).min(CHUNK_SIZE) as usize;
            self.extents.clear();
            self.chain.plan(start, len as u64, &mut self.extents)?;
            if self.extents.iter().all(|e| e.piece == Piece::Zero) {
                // Zero chunks are quick; don't let them pile up behind a chunk that is
                // still being hashed (the reorder window stays small).
                while self.in_flight > 0 && self.pending.len() >= MAX_PENDING {
                    self.receive(done_rx)?;
                }
                let d = *self
                    .zero
                    .entry(len)
                    .or_insert_with(|| Sha256::digest(vec![0u8; len]).into());
                self.pending.insert(index, d);
                self.flush()?;
                continue;
            }
            let mut job = loop {
                if let Some(job) = self.free.pop() {
                    break job;
                }
                // Every buffer is busy: rather than wait, hash a queued chunk here (on a
                // loaded machine this keeps the pipeline full), else wait for one.
                if let Some(job) = steal(job_rx) {
                    let done = process(job, &mut self.cluster_buf, self.files);
                    self.finish(done)?;
                    continue;
                }
                self.receive(done_rx)?;
            };
            job.index = index;
            job.len = len;
            if let Err(e) = self.fill(&mut job, start) {
                self.free.push(job);
                return Err(e);
            }
            self.in_flight += 1;
            if self.hashers == 0 {
                // One thread in all: it hashes what it reads.
                let done = process(job, &mut self.cluster_buf, self.files);
                self.finish(done)?;
                continue;
            }
            if job_tx.send(job).is_err() {
                // Only if every hasher died, which they do not do.
                self.in_flight -= 1;
                break;
            }
            // Collect whatever is already done without waiting.
            while let Ok(done) = done_rx.try_recv() {
                self.finish(done)?;
            }
        }
        while self.in_flight > 0 {
            self.receive(done_rx)?;
        }
        if self.next != chunks {
            return Err(ImageError::io(
                &self.files[0].path,
                "hashing",
                std::io::Error::other("a hashing thread stopped early"),
            ));
        }
        Ok(())
    }

    fn receive(&mut self, done_rx: &Receiver<Done>) -> Result<(), ImageError> {
        match done_rx.recv() {
            Ok(done) => self.finish(done),
            Err(_) => Err(ImageError::io(
                &self.files[0].path,
                "hashing",
                std::io::Error::other("the hashing threads stopped"),
            )),
        }
    }

    fn finish(&mut self, done: Done) -> Result<(), ImageError> {
        self.in_flight -= 1;
        let Done { index, result, job } = done;
        self.free.push(job);
        self.pending.insert(index, result?);
        self.flush()
    }

    /// Pass finished digests to the sink in order.
    fn flush(&mut self) -> Result<(), ImageError> {
        while let Some(d) = self.pending.remove(&self.next) {
            self.root.update(d);
            (self.sink)(self.next, &d)?;
            self.next += 1;
            if let Some(p) = self.progress {
                p(Progress {
                    done: (self.next * CHUNK_SIZE).min(self.size),
                    total: self.size,
                });
            }
        }
        Ok(())
    }

    /// Describe `job` as segments and fill its buffer with the bytes that go there
    /// (compressed clusters are left to the hasher, large runs of data to the mapping).
    fn fill(&mut self, job: &mut Job, start: u64) -> Result<(), ImageError> {
        job.segs.clear();
        job.comp.clear();
        job.pieces.clear();
        for e in &self.extents {
            let dst = (e.guest - start) as usize;
            let len = e.len as usize;
            match e.piece {
                Piece::Zero | Piece::Unallocated => push_seg(&mut job.segs, Seg::Zero { len }),
                Piece::Data { file, host }
                    if e.len >= MAP_MIN && mapped::mappable(&self.files[file], host, e.len) =>
                {
                    self.allocated += e.len;
                    job.segs.push(Seg::Mapped {
                        dst,
                        len,
                        file,
                        host,
                    });
                }
                Piece::Data { file, host } => {
                    let buf = &mut grown(&mut job.buf, job.len)[dst..dst + len];
                    self.files[file].read_exact_at(buf, host)?;
                    self.allocated += e.len;
                    push_seg(&mut job.segs, Seg::Buf { dst, len });
                }
                Piece::Compressed {
                    file,
                    host,
                    csize,
                    cluster,
                    skip,
                    algo,
                } => {
                    // Keep a job's compressed bytes within budget: past it, decompress
                    // what is gathered here, in the reader.
                    if job.comp.len() + csize as usize > COMP_BUDGET && !job.pieces.is_empty() {
                        decompress_pieces(job, &mut self.cluster_buf, self.files)?;
                    }
                    let at = job.comp.len();
                    job.comp.resize(at + csize as usize, 0);
                    self.files[file].read_exact_at(&mut job.comp[at..], host)?;
                    self.allocated += csize;
                    job.pieces.push(CompPiece {
                        dst,
                        len,
                        skip: skip as usize,
                        src: at..at + csize as usize,
                        cluster: cluster as usize,
                        algo,
                        file,
                        host,
                        guest: e.guest - u64::from(skip),
                    });
                    push_seg(&mut job.segs, Seg::Buf { dst, len });
                }
            }
        }
        Ok(())
    }
}

/// Append `seg`, merging it into the previous one when both are zeros or both are
/// adjacent bytes of the buffer.
fn push_seg(segs: &mut Vec<Seg>, seg: Seg) {
    match (segs.last_mut(), seg) {
        (Some(Seg::Zero { len }), Seg::Zero { len: more }) => *len += more,
        (
            Some(Seg::Buf { dst, len }),
            Seg::Buf {
                dst: next,
                len: more,
            },
        ) if *dst + *len == next => *len += more,
        _ => segs.push(seg),
    }
}

/// A queued job, if one is waiting and no hasher holds the queue.
fn steal(jobs: &Mutex<Receiver<Job>>) -> Option<Job> {
    jobs.try_lock().ok()?.try_recv().ok()
}

fn hasher(jobs: &Mutex<Receiver<Job>>, done: Sender<Done>, files: &[Arc<ImageFile>]) {
    let mut cluster_buf: Vec<u8> = Vec::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if done.send(process(job, &mut cluster_buf, files)).is_err() {
            return;
        }
    }
}

/// Decompress a job's compressed clusters into its buffer and hash its segments.
fn process(mut job: Job, cluster_buf: &mut Vec<u8>, files: &[Arc<ImageFile>]) -> Done {
    let result = decompress_pieces(&mut job, cluster_buf, files)
        .and_then(|()| hash_segments(&mut job, files));
    Done {
        index: job.index,
        result,
        job,
    }
}

/// SHA-256 of the job's segments in order.
fn hash_segments(job: &mut Job, files: &[Arc<ImageFile>]) -> Result<Digest, ImageError> {
    let mut sha = Sha256::new();
    let Job { segs, buf, len, .. } = job;
    for seg in segs.iter() {
        match *seg {
            Seg::Zero { mut len } => {
                while len > 0 {
                    let n = len.min(ZEROS.len());
                    sha.update(&ZEROS[..n]);
                    len -= n;
                }
            }
            Seg::Buf { dst, len: n } => sha.update(&buf[dst..dst + n]),
            Seg::Mapped {
                dst,
                len: n,
                file,
                host,
            } => match mapped::map(&files[file], host, n) {
                Some(m) => {
                    sha.update(m.bytes());
                    if let Some(fault) = m.fault() {
                        return Err(fault_error(&files[file], fault, host, n));
                    }
                }
                None => {
                    let run = &mut grown(buf, *len)[dst..dst + n];
                    files[file].read_exact_at(run, host)?;
                    sha.update(run);
                }
            },
        }
    }
    Ok(sha.finalize().into())
}

/// The error for a fault while reading `len` bytes at `host` from a mapping, in the words a
/// failed read would have.
fn fault_error(file: &ImageFile, fault: mapped::Fault, host: u64, len: usize) -> ImageError {
    let end = host + len as u64;
    let source = match fault {
        mapped::Fault::Shrank => return ImageError::shrank(&file.path, end),
        mapped::Fault::Io => std::io::Error::other(format!(
            "an I/O error on the bytes at offsets {host} to {end} (a bus error on their mapping)"
        )),
    };
    ImageError::io(&file.path, "reading", source)
}

/// Decompress the job's compressed clusters into its buffer, then forget them.
fn decompress_pieces(
    job: &mut Job,
    cluster_buf: &mut Vec<u8>,
    files: &[Arc<ImageFile>],
) -> Result<(), ImageError> {
    for p in &job.pieces {
        cluster_buf.resize(p.cluster, 0);
        if let Err(problem) = decompress_cluster(p.algo, &job.comp[p.src.clone()], cluster_buf) {
            return Err(ImageError::malformed(
                &files[p.file].path,
                format!(
                    "the compressed cluster for guest offset {:#x} (at {:#x}, {} bytes, {}) is bad: {problem}",
                    p.guest,
                    p.host,
                    p.src.len(),
                    match p.algo {
                        Compression::Deflate => "deflate",
                        Compression::Zstd => "zstd",
                    }
                ),
            ));
        }
        grown(&mut job.buf, job.len)[p.dst..p.dst + p.len]
            .copy_from_slice(&cluster_buf[p.skip..p.skip + p.len]);
    }
    job.pieces.clear();
    job.comp.clear();
    Ok(())
}
