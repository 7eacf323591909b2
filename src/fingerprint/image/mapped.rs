//! Zero-copy reads: ranges of an image file mapped into memory and hashed in place, and
//! the `SIGBUS` guard that makes a file shrinking under a mapping a clear error.
//!
//! This module holds vmledger's only `unsafe` code, for a measured need: hashing a
//! page-cached 2 GiB raw image through `pread` spends a fifth of its CPU copying pages into
//! buffers, which kept `vmledger diff IMAGE MANIFEST` at 1.8x `qemu-img compare` (target
//! 1.5x; README, "Benchmarks"). Hashing the page cache where it lies removes that copy.
//!
//! What mapping a file risks, and how each risk is met:
//! - The file shrinks while mapped: touching a page past the new end raises `SIGBUS`.
//!   [`map`] first installs a handler that writes one line to stderr naming the image (the one last passed to
//!   [`note_image`]), the cause and what to do, and exits with code 2, the code of every
//!   other image error, instead of dumping core. The fingerprint is lost,
//!   as with a read error; nothing half-done is recorded (ledger writes are transactions).
//! - The file changes while mapped: the hash sees a mix of old and new bytes, exactly as a
//!   `pread` racing the same writer would. Fingerprints are taken of images at rest.
//! - Memory: each mapping covers one extent of at most one chunk (4 MiB) and is dropped as
//!   soon as it is hashed, so mapped pages never add more than a chunk per hashing thread
//!   to the resident set.
//!
//! Block devices and ranges outside the size the file had when opened are not mapped;
//! callers read those as before ([`map`] returns `None`, and so does a failing `mmap`).

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use memmap2::{Mmap, MmapOptions};

use super::source::ImageFile;

/// What the `SIGBUS` handler prints, around the image's name, before exiting with code 2.
const SIGBUS_PREFIX: &[u8] = b"vmledger: error: ";
const SIGBUS_MESSAGE: &[u8] = b": the image (or a file of its backing chain) shrank while it \
was being read (bus error on a mapped page): the fingerprint is void and nothing was \
recorded from it; run again once nothing is truncating or rewriting the image\n";

/// The name of the image being hashed, for the `SIGBUS` handler: bytes in atomics, which a
/// signal handler may read (a lock or an allocation it may not touch).
const NAME_MAX: usize = 1024;
static NAME: [AtomicU8; NAME_MAX] = [const { AtomicU8::new(0) }; NAME_MAX];
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

/// Record `path` as the image being hashed, so that a bus error names it (its first
/// [`NAME_MAX`] bytes). When several images are hashed at once, the last one noted is
/// named.
pub fn note_image(path: &Path) {
    let bytes = path.as_os_str().as_bytes();
    let n = bytes.len().min(NAME_MAX);
    NAME_LEN.store(0, Ordering::Release);
    for (slot, b) in NAME.iter().zip(&bytes[..n]) {
        slot.store(*b, Ordering::Relaxed);
    }
    NAME_LEN.store(n, Ordering::Release);
}

/// `len` bytes of a file at some offset, mapped read-only.
pub struct Mapped {
    map: Mmap,
    skip: usize,
    len: usize,
}

impl Mapped {
    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.skip..self.skip + self.len]
    }
}

/// Map `[offset, offset + len)` of `file` read-only, or `None` when it cannot or should
/// not be (a block device, a range outside the file's size at open, `mmap` failing): the
/// caller then reads the range instead.
pub fn map(file: &ImageFile, offset: u64, len: usize) -> Option<Mapped> {
    let end = offset.checked_add(len as u64)?;
    if file.is_block_device || len == 0 || end > file.len {
        return None;
    }
    install_sigbus_guard();
    // mmap offsets must be page-aligned; map from the page the range starts in.
    let page = page_size();
    let start = offset - offset % page;
    let skip = (offset - start) as usize;
    let total = skip.checked_add(len)?;
    // SAFETY: the mapping is read-only and private to this value, and the bytes are only
    // ever read (hashed). If another process truncates the file meanwhile, touching a page
    // past its new end raises SIGBUS, which the guard turns into a clear error and exit 2;
    // if it writes to the file, the hash sees old or new bytes, as a racing pread would.
    #[allow(unsafe_code)]
    let map = unsafe { MmapOptions::new().offset(start).len(total).map(&file.file) }.ok()?;
    Some(Mapped { map, skip, len })
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Install the `SIGBUS` handler once. It replaces whatever was there: the default action
/// (a core dump), or the one Rust's runtime installs in every program, which on Linux only
/// restores the default (Rust detects stack overflows by `SIGSEGV` here).
fn install_sigbus_guard() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let guard = SigAction::new(
            SigHandler::Handler(on_sigbus),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: `on_sigbus` only reads atomics and calls async-signal-safe functions
        // (write, _exit).
        #[allow(unsafe_code)]
        let _ = unsafe { sigaction(Signal::SIGBUS, &guard) };
    });
}

extern "C" fn on_sigbus(_signal: nix::libc::c_int) {
    let mut name = [0u8; NAME_MAX];
    let n = NAME_LEN.load(Ordering::Acquire).min(NAME_MAX);
    for (b, slot) in name.iter_mut().zip(&NAME[..n]) {
        *b = slot.load(Ordering::Relaxed);
    }
    let name: &[u8] = if n == 0 { b"an image" } else { &name[..n] };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffers are valid for the
    // lengths given.
    #[allow(unsafe_code)]
    unsafe {
        for part in [SIGBUS_PREFIX, name, SIGBUS_MESSAGE] {
            nix::libc::write(2, part.as_ptr().cast(), part.len());
        }
        nix::libc::_exit(2);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, ImageFile) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        t.flush().unwrap();
        let f = ImageFile::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn maps_unaligned_ranges_exactly() {
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let (_t, f) = file_with(&data);
        for (off, len) in [(0, 1), (1, 4095), (4095, 2), (4096, 8192), (5000, 7388)] {
            let m = map(&f, off, len).expect("maps");
            assert_eq!(m.bytes(), &data[off as usize..off as usize + len]);
        }
    }

    #[test]
    fn refuses_ranges_past_the_size_at_open_and_empty_ones() {
        let (_t, f) = file_with(&[7u8; 4096]);
        assert!(map(&f, 0, 4097).is_none());
        assert!(map(&f, 4096, 1).is_none());
        assert!(map(&f, u64::MAX, 2).is_none());
        assert!(map(&f, 0, 0).is_none());
        assert!(map(&f, 0, 4096).is_some());
    }
}
