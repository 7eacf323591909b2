//! `vmledger-manifest/v1`: an image's fingerprint with every chunk digest, so that a later
//! image (or manifest) can be compared chunk by chunk (`vmledger diff`).
//!
//! The document is the `vmledger-image/v1` fields (without `elapsed_ms`) plus `chunks`, an
//! array of 64-hex-digit chunk digests in guest order (35 MiB for a 2 TiB image). Reading
//! checks everything a reader relies on: the format, the chunk size, the chunk count
//! against the virtual size, and that the digests hash to `content_root`. Parsing streams
//! and keeps 32 bytes per chunk; writing streams too ([`ManifestWriter`]), through a
//! temporary file renamed into place, so a failed write never leaves half a manifest.
//! Schema: `schemas/manifest.schema.json`; spec: `docs/formats/image.md`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::ImageError;
use super::{
    CHUNK_SIZE, Digest, ImageFingerprint, ImageFormat, MAX_VIRTUAL_SIZE, chunk_count, hex,
    parse_hex, root_of,
};

/// The `format` of a manifest.
pub const MANIFEST_FORMAT: &str = "vmledger-manifest/v1";

/// A manifest: an image's fingerprint and its chunk digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The image path as it was given when the manifest was made.
    pub path: String,
    pub image_format: ImageFormat,
    pub virtual_size: u64,
    pub allocated_bytes: u64,
    pub content_root: Digest,
    pub backing_chain: Vec<String>,
    /// One digest per 4 MiB chunk, in guest order.
    pub chunks: Vec<Digest>,
}

impl Manifest {
    /// The manifest of a fingerprint made with `keep_chunks` (`None` without chunks).
    pub fn from_fingerprint(fp: &ImageFingerprint) -> Option<Manifest> {
        let chunks = fp.chunks.clone()?;
        let doc = fp.document();
        Some(Manifest {
            path: doc.path,
            image_format: fp.image_format,
            virtual_size: fp.virtual_size,
            allocated_bytes: fp.allocated_bytes,
            content_root: fp.content_root,
            backing_chain: doc.backing_chain,
            chunks,
        })
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Check the invariants a reader relies on; the error says which one fails.
    pub fn check(&self) -> Result<(), String> {
        if self.virtual_size > MAX_VIRTUAL_SIZE {
            return Err(format!(
                "virtual_size {} is above the 16 TiB limit",
                self.virtual_size
            ));
        }
        let want = chunk_count(self.virtual_size);
        if self.chunk_count() != want {
            return Err(format!(
                "it has {} chunk digests but a {}-byte image has {want} chunks",
                self.chunk_count(),
                self.virtual_size
            ));
        }
        if root_of(&self.chunks) != self.content_root {
            return Err(
                "its chunk digests do not hash to its content_root (it was edited or damaged)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Read and check the manifest at `path`.
    pub fn read(path: &Path) -> Result<Manifest, ImageError> {
        let f = File::open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = f
            .metadata()
            .map_err(|e| ImageError::io(path, "inspecting", e))?;
        if meta.is_dir() {
            return Err(ImageError::manifest(path, "is a directory"));
        }
        Manifest::from_reader(BufReader::with_capacity(1 << 16, f), path)
    }

    /// Parse and check a manifest from `r`; `path` names it in errors.
    pub fn from_reader(r: impl std::io::Read, path: &Path) -> Result<Manifest, ImageError> {
        let m: Manifest = serde_json::from_reader(r).map_err(|e| {
            ImageError::manifest(
                path,
                format!("it is not a valid {MANIFEST_FORMAT} document: {e}"),
            )
        })?;
        m.check().map_err(|p| ImageError::manifest(path, p))?;
        Ok(m)
    }

    /// Write the manifest to `out` (atomically, mode 0600).
    pub fn write(&self, out: &Path) -> Result<(), ImageError> {
        let mut w = ManifestWriter::create(
            out,
            &self.path,
            self.image_format,
            self.virtual_size,
            &self.backing_chain,
        )?;
        for d in &self.chunks {
            w.push(d)?;
        }
        w.finish(self.allocated_bytes, &self.content_root)
    }
}

/// Digests written as an array of lowercase hex strings (shared with signed backup
/// manifests).
pub(crate) struct HexList<'a>(pub(crate) &'a [Digest]);

impl Serialize for HexList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for d in self.0 {
            seq.serialize_element(&hex(d))?;
        }
        seq.end()
    }
}

impl Serialize for Manifest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Manifest", 10)?;
        st.serialize_field("format", MANIFEST_FORMAT)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("image_format", &self.image_format)?;
        st.serialize_field("virtual_size", &self.virtual_size)?;
        st.serialize_field("chunk_size", &CHUNK_SIZE)?;
        st.serialize_field("chunk_count", &self.chunk_count())?;
        st.serialize_field("backing_chain", &self.backing_chain)?;
        st.serialize_field("chunks", &HexList(&self.chunks))?;
        st.serialize_field("allocated_bytes", &self.allocated_bytes)?;
        st.serialize_field("content_root", &hex(&self.content_root))?;
        st.end()
    }
}

/// One digest read from 64 lowercase hex digits.
pub(crate) struct HexDigest(pub(crate) Digest);

impl<'de> Deserialize<'de> for HexDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HexDigest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a SHA-256 digest as 64 lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HexDigest, E> {
                parse_hex(s)
                    .map(HexDigest)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_str(V)
    }
}

/// Chunk digests read from hex strings, at most as many as a 16 TiB image has.
pub(crate) struct Digests(pub(crate) Vec<Digest>);

impl<'de> Deserialize<'de> for Digests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Digests;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of chunk digests")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Digests, A::Error> {
                let mut v = Vec::new();
                while let Some(HexDigest(d)) = seq.next_element()? {
                    if v.len() as u64 >= chunk_count(MAX_VIRTUAL_SIZE) {
                        return Err(de::Error::custom(
                            "more chunk digests than a 16 TiB image has",
                        ));
                    }
                    v.push(d);
                }
                Ok(Digests(v))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: String,
    path: String,
    image_format: ImageFormat,
    virtual_size: u64,
    chunk_size: u64,
    chunk_count: u64,
    allocated_bytes: u64,
    content_root: HexDigest,
    backing_chain: Vec<String>,
    chunks: Digests,
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawManifest::deserialize(d)?;
        if raw.format != MANIFEST_FORMAT {
            return Err(de::Error::custom(format!(
                "format is `{}`, not `{MANIFEST_FORMAT}`",
                raw.format
            )));
        }
        if raw.chunk_size != CHUNK_SIZE {
            return Err(de::Error::custom(format!(
                "chunk_size is {}; version 1 manifests use {CHUNK_SIZE}",
                raw.chunk_size
            )));
        }
        if raw.chunk_count != raw.chunks.0.len() as u64 {
            return Err(de::Error::custom(format!(
                "chunk_count is {} but it lists {} chunk digests",
                raw.chunk_count,
                raw.chunks.0.len()
            )));
        }
        Ok(Manifest {
            path: raw.path,
            image_format: raw.image_format,
            virtual_size: raw.virtual_size,
            allocated_bytes: raw.allocated_bytes,
            content_root: raw.content_root.0,
            backing_chain: raw.backing_chain,
            chunks: raw.chunks.0,
        })
    }
}

/// Writes a manifest while the image is being hashed, one digest at a time, into a
/// temporary file next to `out` that [`ManifestWriter::finish`] renames into place.
/// Dropped without `finish`, it removes the temporary file.
#[derive(Debug)]
pub struct ManifestWriter {
    out: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    count: u64,
    expected: u64,
}

impl ManifestWriter {
    /// Start the manifest of an image (`image_path` as it should be recorded).
    pub fn create(
        out: &Path,
        image_path: &str,
        image_format: ImageFormat,
        virtual_size: u64,
        backing_chain: &[String],
    ) -> Result<ManifestWriter, ImageError> {
        let name = out
            .file_name()
            .ok_or_else(|| ImageError::manifest(out, "is not a file name"))?;
        let tmp = out.with_file_name(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ImageError::io(out, "creating the manifest", e))?;
        let mut w = ManifestWriter {
            out: out.to_path_buf(),
            tmp,
            w: Some(BufWriter::with_capacity(1 << 16, f)),
            count: 0,
            expected: chunk_count(virtual_size),
        };
        let head = format!(
            "{{\n  \"format\": \"{MANIFEST_FORMAT}\",\n  \"path\": {},\n  \"image_format\": \"{}\",\n  \"virtual_size\": {virtual_size},\n  \"chunk_size\": {CHUNK_SIZE},\n  \"chunk_count\": {},\n  \"backing_chain\": {},\n  \"chunks\": [",
            json_str(image_path),
            image_format.as_str(),
            w.expected,
            serde_json::to_string(backing_chain).unwrap_or_else(|_| "[]".into()),
        );
        w.write(head.as_bytes())?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        match self.w.as_mut() {
            Some(w) => w
                .write_all(bytes)
                .map_err(|e| ImageError::io(&self.out, "writing the manifest", e)),
            None => Err(ImageError::manifest(&self.out, "writer already finished")),
        }
    }

    /// Append the next chunk digest.
    pub fn push(&mut self, d: &Digest) -> Result<(), ImageError> {
        let sep = if self.count == 0 {
            "\n    \""
        } else {
            ",\n    \""
        };
        let line = format!("{sep}{}\"", hex(d));
        self.write(line.as_bytes())?;
        self.count += 1;
        Ok(())
    }

    /// Write the trailing members, make the file durable and rename it into place.
    pub fn finish(mut self, allocated_bytes: u64, content_root: &Digest) -> Result<(), ImageError> {
        if self.count != self.expected {
            return Err(ImageError::manifest(
                &self.out,
                format!(
                    "{} chunk digests were written, {} expected",
                    self.count, self.expected
                ),
            ));
        }
        let close = if self.count == 0 { "]" } else { "\n  ]" };
        let tail = format!(
            "{close},\n  \"allocated_bytes\": {allocated_bytes},\n  \"content_root\": \"{}\"\n}}\n",
            hex(content_root)
        );
        self.write(tail.as_bytes())?;
        let w = self
            .w
            .take()
            .ok_or_else(|| ImageError::manifest(&self.out, "writer already finished"))?;
        let f = w
            .into_inner()
            .map_err(|e| ImageError::io(&self.out, "writing the manifest", e.into_error()))?;
        f.sync_all()
            .map_err(|e| ImageError::io(&self.out, "syncing the manifest", e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.out)
            .map_err(|e| ImageError::io(&self.out, "renaming the manifest into place", e))?;
        let dir = self
            .out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let _ = crate::fsutil::sync_dir(dir);
        Ok(())
    }
}

impl Drop for ManifestWriter {
    fn drop(&mut self) {
        if self.w.is_some() {
            self.w = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let chunks = vec![[1u8; 32], [2u8; 32]];
        Manifest {
            path: "disk \"a\".img".into(),
            image_format: ImageFormat::Raw,
            virtual_size: CHUNK_SIZE + 512,
            allocated_bytes: 7,
            content_root: root_of(&chunks),
            backing_chain: vec![],
            chunks,
        }
    }

    #[test]
    fn streamed_and_serde_forms_agree_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let m = sample();
        m.write(&p).unwrap();
        let back = Manifest::read(&p).unwrap();
        assert_eq!(back, m);
        let via_serde: serde_json::Value = serde_json::to_value(&m).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(via_serde, written);
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn tampered_manifests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let mut m = sample();
        m.chunks[1] = [3u8; 32];
        std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("do not hash to its content_root"), "{e}");
        let mut m = sample();
        m.virtual_size = 3 * CHUNK_SIZE;
        std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("3 chunks"), "{e}");
    }

    #[test]
    fn abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let mut w = ManifestWriter::create(&p, "x", ImageFormat::Raw, 10, &[]).unwrap();
        w.push(&[0u8; 32]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
