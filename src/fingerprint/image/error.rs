//! The one error type of image fingerprinting, manifests and image diffs.
//!
//! Every variant names the file it concerns; messages say what is wrong and, where there
//! is something to do, what to do. Malformed input of any kind (truncated files, crafted
//! qcow2 tables, broken compressed clusters, inconsistent manifests) is an `ImageError`,
//! never a panic.

use std::path::{Path, PathBuf};

/// What went wrong while opening, reading or hashing an image, or reading or writing a
/// manifest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or inspected.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A read or write failed part-way.
    #[error("{}: {what} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// A directory was given where an image was expected.
    #[error("{} is a directory, not a disk image", path.display())]
    IsDirectory { path: PathBuf },
    /// The file is not something vmledger reads as a disk image.
    #[error("{} is not a disk image vmledger can read: {reason}", path.display())]
    NotAnImage { path: PathBuf, reason: String },
    /// A qcow2 structure is invalid (the problem names the field or table entry).
    #[error("{} is not a valid qcow2 image: {problem}", path.display())]
    Malformed { path: PathBuf, problem: String },
    /// An encrypted image: its guest-visible content cannot be read without the key.
    #[error(
        "{} is encrypted ({method}); vmledger fingerprints plain images only: fingerprint the decrypted image (qemu-img convert with the secret) instead",
        path.display()
    )]
    Encrypted { path: PathBuf, method: &'static str },
    /// A valid image using something vmledger does not read.
    #[error("{} uses {what}, which vmledger does not support", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// The virtual size is above [`super::MAX_VIRTUAL_SIZE`].
    #[error(
        "{} has a virtual size of {size} bytes, above vmledger's limit of {limit} bytes (16 TiB)",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// A problem with the backing chain (cycle, depth, unusable name).
    #[error("{}: backing chain: {problem}", path.display())]
    Backing { path: PathBuf, problem: String },
    /// A manifest that does not parse or is inconsistent.
    #[error("manifest {}: {problem}", path.display())]
    Manifest { path: PathBuf, problem: String },
}

impl ImageError {
    pub(crate) fn malformed(path: &Path, problem: impl Into<String>) -> ImageError {
        ImageError::Malformed {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: &Path, what: &'static str, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }

    /// The file ended before `end` although it was longer when opened: it shrank (was
    /// truncated) while it was being read.
    pub(crate) fn shrank(path: &Path, end: u64) -> ImageError {
        ImageError::io(
            path,
            "reading",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended before offset {end} (was it truncated while being read?)"),
            ),
        )
    }

    pub(crate) fn manifest(path: &Path, problem: impl Into<String>) -> ImageError {
        ImageError::Manifest {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Open { path, .. }
            | ImageError::Io { path, .. }
            | ImageError::IsDirectory { path }
            | ImageError::NotAnImage { path, .. }
            | ImageError::Malformed { path, .. }
            | ImageError::Encrypted { path, .. }
            | ImageError::Unsupported { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::Backing { path, .. }
            | ImageError::Manifest { path, .. } => path,
        }
    }
}
