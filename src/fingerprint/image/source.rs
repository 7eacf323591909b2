//! Opening the files an image is made of (the image itself, backing files, external data
//! files), their sizes, positioned reads, and telling image formats apart by content.
//!
//! Only regular files and block devices are accepted. This module only reads; it never
//! writes to an image.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::ImageError;

/// One open file of an image: the top image, a backing file, or an external data file.
#[derive(Debug)]
pub struct ImageFile {
    pub path: PathBuf,
    pub file: File,
    /// Size in bytes (for a block device, its capacity).
    pub len: u64,
    /// `(st_dev, st_ino)`, for backing-chain cycle detection.
    pub id: (u64, u64),
    pub is_block_device: bool,
}

impl ImageFile {
    /// Open `path` read-only; refuse directories and anything that is neither a regular
    /// file nor a block device.
    pub fn open(path: &Path) -> Result<ImageFile, ImageError> {
        let meta = std::fs::metadata(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(ImageError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        if !ft.is_file() && !ft.is_block_device() {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: "it is neither a regular file nor a block device".into(),
            });
        }
        let file = File::open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let len = if ft.is_block_device() {
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|e| ImageError::io(path, "reading the block device's size", e))?
        } else {
            meta.len()
        };
        Ok(ImageFile {
            path: path.to_path_buf(),
            file,
            len,
            id: (meta.dev(), meta.ino()),
            is_block_device: ft.is_block_device(),
        })
    }

    /// Read exactly `buf.len()` bytes at `offset`; a short read (the file shrank while it
    /// was read) is an error naming the file.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ImageError::shrank(&self.path, offset + buf.len() as u64)
            } else {
                ImageError::io(&self.path, "reading", e)
            }
        })
    }

    /// Read up to `buf.len()` bytes at `offset`, stopping at the end of the file.
    pub fn read_up_to(&self, buf: &mut [u8], offset: u64) -> Result<usize, ImageError> {
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io(&self.path, "reading", e)),
            }
        }
        Ok(n)
    }

    /// Tell the kernel the file will be read sequentially (larger read-ahead); advisory.
    pub fn advise_sequential(&self) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        let _ = posix_fadvise(&self.file, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Qcow2,
    /// Nothing recognised: a raw image.
    Raw,
}

/// Look at the first bytes of `f`: qcow2, a raw image, or a known non-raw format vmledger
/// does not read (an error saying which and what to do). `strict` (for the image the user
/// named, not for probed backing files) also refuses JSON documents, empty files and
/// sizes that are not a multiple of 512, which no disk image has.
pub fn sniff(f: &ImageFile, strict: bool) -> Result<Sniffed, ImageError> {
    let mut head = [0u8; 512];
    let n = f.read_up_to(&mut head, 0)?;
    let head = &head[..n];
    let not = |reason: &str| ImageError::NotAnImage {
        path: f.path.clone(),
        reason: reason.to_string(),
    };
    let convert = "; convert it with `qemu-img convert -O qcow2` first";
    if head.starts_with(b"QFI\xfb") {
        return Ok(Sniffed::Qcow2);
    }
    if head.starts_with(b"QFI\0") {
        return Err(not(&format!("it is a QED image{convert}")));
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        return Err(not(&format!("it is a VMDK image{convert}")));
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err(not(&format!("it is a VMDK descriptor{convert}")));
    }
    if head.starts_with(b"vhdxfile") {
        return Err(not(&format!("it is a VHDX image{convert}")));
    }
    if head.starts_with(b"conectix") {
        return Err(not(&format!("it is a VHD image{convert}")));
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Err(not(&format!("it is a VDI image{convert}")));
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return Err(ImageError::Encrypted {
            path: f.path.clone(),
            method: "LUKS",
        });
    }
    if !strict {
        return Ok(Sniffed::Raw);
    }
    if looks_like_json_document(head) {
        return Err(not(
            "it is a JSON document (a vmledger fingerprint or manifest?), not an image",
        ));
    }
    if !f.is_block_device {
        if f.len == 0 {
            return Err(not(
                "the file is empty (use --format raw to fingerprint it as a 0-byte raw image)",
            ));
        }
        if f.len % 512 != 0 {
            return Err(not(&format!(
                "its size ({} bytes) is not a multiple of 512, which every disk image is (use --format raw to fingerprint it anyway)",
                f.len
            )));
        }
    }
    Ok(Sniffed::Raw)
}

/// True when `head` (a file's first bytes) starts like a JSON object or array that names a
/// `format` or a `vmledger-` kind: a vmledger document, never a disk image. A raw image
/// that merely begins with `{` is not one.
pub fn looks_like_json_document(head: &[u8]) -> bool {
    let text = head.iter().position(|b| !b.is_ascii_whitespace());
    text.is_some_and(|i| {
        (head[i] == b'{' || head[i] == b'[')
            && (contains(head, b"\"vmledger-") || contains(head, b"\"format\""))
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
