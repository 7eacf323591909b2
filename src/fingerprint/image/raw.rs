//! Raw images (regular files and block devices): the guest sees the file's bytes, and its
//! virtual size is the file's exact size. Holes are found with `SEEK_DATA`/`SEEK_HOLE`
//! and reported as zeros without being read; where the file system or device does not
//! support them, everything is data.

use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use super::error::ImageError;
use super::map::{self, Extent, Piece};
use super::source::ImageFile;

/// A raw file as one layer of a chain.
#[derive(Debug)]
pub struct RawLayer {
    file: Arc<ImageFile>,
    index: usize,
    sparse: bool,
    /// A range `[start, end)` known to be data (`true`) or a hole (`false`).
    known: [(u64, u64, bool); 2],
}

impl RawLayer {
    /// `index` is the file's number in the chain's file table.
    pub fn new(file: Arc<ImageFile>, index: usize) -> RawLayer {
        RawLayer {
            sparse: !file.is_block_device,
            file,
            index,
            known: [(0, 0, true); 2],
        }
    }

    pub fn virtual_size(&self) -> u64 {
        self.file.len
    }

    /// Describe `[off, off + len)` (inside the virtual size) as data and zero extents.
    pub fn map(&mut self, off: u64, len: u64, out: &mut Vec<Extent>) -> Result<(), ImageError> {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let (kind_end, data) = self.region(pos)?;
            let stop = kind_end.min(end);
            let piece = if data {
                Piece::Data {
                    file: self.index,
                    host: pos,
                }
            } else {
                Piece::Zero
            };
            map::push(
                out,
                Extent {
                    guest: pos,
                    len: stop - pos,
                    piece,
                },
            );
            pos = stop;
        }
        Ok(())
    }

    /// An error when the file is now shorter than `end` while it was not when opened (it
    /// was truncated while being read: what is gone is not a hole).
    fn check_not_shrunk(&self, end: u64) -> Result<(), ImageError> {
        let now = self
            .file
            .file
            .metadata()
            .map_err(|e| ImageError::io(&self.file.path, "reading", e))?
            .len();
        if now < end.min(self.file.len) {
            return Err(ImageError::shrank(&self.file.path, end.min(self.file.len)));
        }
        Ok(())
    }

    /// The end of the data or hole region containing `pos`, and whether it is data.
    fn region(&mut self, pos: u64) -> Result<(u64, bool), ImageError> {
        let size = self.file.len;
        if !self.sparse {
            return Ok((size, true));
        }
        for &(s, e, data) in &self.known {
            if s <= pos && pos < e {
                return Ok((e, data));
            }
        }
        let to_off = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        let data_start = match lseek(&self.file.file, to_off(pos), Whence::SeekData) {
            Ok(d) => (d as u64).max(pos),
            // No data at or after pos: the rest is a hole.
            Err(Errno::ENXIO) => size,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ESPIPE) => {
                self.sparse = false;
                return Ok((size, true));
            }
            Err(e) => {
                return Err(ImageError::io(
                    &self.file.path,
                    "looking for data (SEEK_DATA)",
                    e.into(),
                ));
            }
        };
        let data_start = data_start.min(size);
        let data_end = if data_start >= size {
            size
        } else {
            match lseek(&self.file.file, to_off(data_start), Whence::SeekHole) {
                Ok(h) => (h as u64).clamp(data_start + 1, size),
                Err(Errno::ENXIO) => size,
                Err(e) => {
                    return Err(ImageError::io(
                        &self.file.path,
                        "looking for holes (SEEK_HOLE)",
                        e.into(),
                    ));
                }
            }
        };
        if data_start > pos {
            // A hole, or the end of a file that shrank since it was opened: zeros only in
            // the first case.
            self.check_not_shrunk(data_start)?;
        }
        self.known = [(pos, data_start, false), (data_start, data_end, true)];
        if data_start > pos {
            Ok((data_start, false))
        } else {
            Ok((data_end, true))
        }
    }
}
