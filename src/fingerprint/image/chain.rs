//! An image as the guest sees it: the top image and its backing chain, opened and
//! validated, and the translation of a guest range into extents of concrete files.
//!
//! Owns backing-file resolution (relative names against the overlay's directory, format
//! from the header extension or probed), the depth limit and cycle detection by
//! device+inode. Unallocated ranges fall through to the next layer, and read as zeros past
//! a backing file's end or at the bottom of the chain.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ImageError;
use super::map::{self, Extent, Piece};
use super::qcow2::{self, Qcow2Layer};
use super::raw::RawLayer;
use super::source::{self, ImageFile, Sniffed};
use super::{FormatChoice, ImageFormat, MAX_CHAIN_DEPTH, MAX_VIRTUAL_SIZE};

#[derive(Debug)]
enum Layer {
    Raw(RawLayer),
    Qcow2(Box<Qcow2Layer>),
}

impl Layer {
    fn virtual_size(&self) -> u64 {
        match self {
            Layer::Raw(l) => l.virtual_size(),
            Layer::Qcow2(l) => l.virtual_size(),
        }
    }

    fn map(&mut self, off: u64, len: u64, out: &mut Vec<Extent>) -> Result<(), ImageError> {
        match self {
            Layer::Raw(l) => l.map(off, len, out),
            Layer::Qcow2(l) => l.map(off, len, out),
        }
    }
}

/// An opened image with its backing chain.
#[derive(Debug)]
pub struct Chain {
    /// Every file the chain reads; extents name files by their index here.
    pub files: Vec<Arc<ImageFile>>,
    layers: Vec<Layer>,
    pub format: ImageFormat,
    /// Backing files, nearest first.
    pub backing_chain: Vec<PathBuf>,
    scratch: Vec<Vec<Extent>>,
}

impl Chain {
    /// Open `path` and everything it depends on.
    pub fn open(path: &Path, choice: FormatChoice) -> Result<Chain, ImageError> {
        let top = ImageFile::open(path)?;
        let format = match choice {
            FormatChoice::Raw => ImageFormat::Raw,
            FormatChoice::Qcow2 => {
                let mut magic = [0u8; 4];
                let n = top.read_up_to(&mut magic, 0)?;
                if n < 4 || magic != *b"QFI\xfb" {
                    return Err(ImageError::NotAnImage {
                        path: path.to_path_buf(),
                        reason: "--format qcow2 was given but it does not start with the qcow2 magic `QFI\\xfb`".into(),
                    });
                }
                ImageFormat::Qcow2
            }
            FormatChoice::Auto => match source::sniff(&top, true)? {
                Sniffed::Qcow2 => ImageFormat::Qcow2,
                Sniffed::Raw => ImageFormat::Raw,
            },
        };
        let mut chain = Chain {
            files: Vec::new(),
            layers: Vec::new(),
            format,
            backing_chain: Vec::new(),
            scratch: Vec::new(),
        };
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        seen.insert(top.id);
        let mut file = Arc::new(top);
        let mut fmt = format;
        loop {
            let index = chain.files.len();
            chain.files.push(file.clone());
            match fmt {
                ImageFormat::Raw => {
                    // Only the top's size is the virtual size; a larger raw backing file
                    // is read no further than the overlay needs.
                    if index == 0 && file.len > MAX_VIRTUAL_SIZE {
                        return Err(ImageError::TooLarge {
                            path: file.path.clone(),
                            size: file.len,
                            limit: MAX_VIRTUAL_SIZE,
                        });
                    }
                    chain
                        .layers
                        .push(Layer::Raw(RawLayer::new(file.clone(), index)));
                    break;
                }
                ImageFormat::Qcow2 => {
                    let header = qcow2::parse_header(&file)?;
                    let (data, data_index) = match &header.data_file {
                        Some(name) => {
                            let p = resolve(&file.path, name, "external data file")?;
                            let d = ImageFile::open(&p).map_err(|e| ImageError::Backing {
                                path: file.path.clone(),
                                problem: format!("cannot use its external data file: {e}"),
                            })?;
                            let d = Arc::new(d);
                            chain.files.push(d.clone());
                            (d, chain.files.len() - 1)
                        }
                        None => (file.clone(), index),
                    };
                    let backing = header.backing_file.clone();
                    let backing_format = header.backing_format.clone();
                    chain.layers.push(Layer::Qcow2(Box::new(Qcow2Layer::new(
                        header,
                        file.clone(),
                        data,
                        data_index,
                    ))));
                    let Some(name) = backing else { break };
                    if chain.backing_chain.len() >= MAX_CHAIN_DEPTH {
                        return Err(ImageError::Backing {
                            path: path.to_path_buf(),
                            problem: format!(
                                "it is deeper than {MAX_CHAIN_DEPTH} backing files (stopped at {}); flatten it with `qemu-img convert`",
                                file.path.display()
                            ),
                        });
                    }
                    let declared = match backing_format.as_deref() {
                        Some("raw") => Some(ImageFormat::Raw),
                        Some("qcow2") => Some(ImageFormat::Qcow2),
                        Some(other) => {
                            return Err(ImageError::Unsupported {
                                path: file.path.clone(),
                                what: format!(
                                    "a backing file in `{other}` format (vmledger reads raw and qcow2)"
                                ),
                            });
                        }
                        None => None,
                    };
                    let next = resolve(&file.path, &name, "backing file")?;
                    let opened = ImageFile::open(&next).map_err(|e| ImageError::Backing {
                        path: file.path.clone(),
                        problem: format!("cannot use its backing file: {e}"),
                    })?;
                    if !seen.insert(opened.id) {
                        return Err(ImageError::Backing {
                            path: file.path.clone(),
                            problem: format!(
                                "its backing file {} is already in the chain (the chain loops back on itself)",
                                next.display()
                            ),
                        });
                    }
                    fmt = match declared {
                        Some(f) => f,
                        None => match source::sniff(&opened, false)? {
                            Sniffed::Qcow2 => ImageFormat::Qcow2,
                            Sniffed::Raw => ImageFormat::Raw,
                        },
                    };
                    chain.backing_chain.push(next);
                    file = Arc::new(opened);
                }
            }
        }
        chain.scratch = (0..chain.layers.len()).map(|_| Vec::new()).collect();
        Ok(chain)
    }

    /// The guest-visible size.
    pub fn virtual_size(&self) -> u64 {
        self.layers[0].virtual_size()
    }

    /// The top layer's external data file, if it has one.
    pub fn data_file(&self) -> Option<PathBuf> {
        match &self.layers[0] {
            Layer::Qcow2(l) => l.data_file_path(),
            Layer::Raw(_) => None,
        }
    }

    /// Append to `out` the extents making up guest bytes `[off, off + len)`, with every
    /// unallocated range resolved down the chain (so `out` holds no `Unallocated`).
    pub fn plan(&mut self, off: u64, len: u64, out: &mut Vec<Extent>) -> Result<(), ImageError> {
        self.resolve(0, off, len, out)
    }

    fn resolve(
        &mut self,
        level: usize,
        off: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), ImageError> {
        let end = off + len;
        let vs = self.layers[level].virtual_size();
        let mapped_end = end.min(vs);
        if off < mapped_end {
            let mut tmp = std::mem::take(&mut self.scratch[level]);
            tmp.clear();
            let r = self.layers[level].map(off, mapped_end - off, &mut tmp);
            let r = r.and_then(|()| {
                for e in &tmp {
                    if e.piece == Piece::Unallocated {
                        if level + 1 < self.layers.len() {
                            self.resolve(level + 1, e.guest, e.len, out)?;
                        } else {
                            map::push(
                                out,
                                Extent {
                                    piece: Piece::Zero,
                                    ..*e
                                },
                            );
                        }
                    } else {
                        map::push(out, *e);
                    }
                }
                Ok(())
            });
            self.scratch[level] = tmp;
            r?;
        }
        let zero_from = off.max(mapped_end);
        if zero_from < end {
            map::push(
                out,
                Extent {
                    guest: zero_from,
                    len: end - zero_from,
                    piece: Piece::Zero,
                },
            );
        }
        Ok(())
    }
}

/// Resolve a backing or data file name stored in `overlay`: absolute names as they are,
/// relative ones against the overlay's directory. Protocol and `json:` names are refused.
fn resolve(overlay: &Path, name: &[u8], what: &str) -> Result<PathBuf, ImageError> {
    let refuse = |why: &str| ImageError::Backing {
        path: overlay.to_path_buf(),
        problem: format!("its {what} `{}` {why}", String::from_utf8_lossy(name)),
    };
    if name.contains(&0) {
        return Err(refuse("contains a NUL byte"));
    }
    if name.starts_with(b"json:") {
        return Err(refuse("is a QEMU json: specification, not a file name"));
    }
    if let Some(colon) = name.iter().position(|b| *b == b':') {
        let scheme = &name[..colon];
        let protocol = !scheme.is_empty()
            && scheme
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'-')
            && (name[colon..].starts_with(b"://")
                || matches!(
                    scheme,
                    b"nbd" | b"ssh" | b"rbd" | b"iscsi" | b"gluster" | b"nfs" | b"file"
                ));
        if protocol {
            if scheme == b"file" {
                return resolve(overlay, &name[colon + 1..], what);
            }
            return Err(refuse(
                "is a network or protocol location, not a local file",
            ));
        }
    }
    let p = Path::new(OsStr::from_bytes(name));
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let dir = overlay.parent().unwrap_or(Path::new(""));
    Ok(dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_against_the_overlay_directory() {
        let o = Path::new("/images/vm/overlay.qcow2");
        assert_eq!(
            resolve(o, b"base.qcow2", "backing file").unwrap(),
            Path::new("/images/vm/base.qcow2")
        );
        assert_eq!(
            resolve(o, b"../base.raw", "backing file").unwrap(),
            Path::new("/images/vm/../base.raw")
        );
        assert_eq!(
            resolve(o, b"/abs/base", "backing file").unwrap(),
            Path::new("/abs/base")
        );
        assert_eq!(
            resolve(o, b"file:/abs/base", "backing file").unwrap(),
            Path::new("/abs/base")
        );
        assert_eq!(
            resolve(Path::new("overlay.qcow2"), b"base", "backing file").unwrap(),
            Path::new("base")
        );
        // A colon alone does not make a protocol.
        assert_eq!(
            resolve(o, b"disk:2.raw", "backing file").unwrap(),
            Path::new("/images/vm/disk:2.raw")
        );
        for bad in [
            &b"json:{}"[..],
            b"nbd:localhost:10809",
            b"http://example.invalid/x",
            b"a\0b",
        ] {
            let e = resolve(o, bad, "backing file").unwrap_err().to_string();
            assert!(e.contains("overlay.qcow2"), "{e}");
        }
    }
}
