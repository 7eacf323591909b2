//! The file index between the scan and the judging, with memory bounded by one partition.
//!
//! [`super::input::scan`] finds one [`FileRef`] per bundle; judging needs them grouped by
//! serial and instance ([`super::group`]). A small fleet's index stays in memory and is
//! grouped in one go (serials then come out in sorted order). Past [`IN_MEMORY`] files the
//! index spills to a private temporary directory (removed when the index is dropped) in
//! two hash-partitioned passes, so that no step holds more than one partition:
//! 1. files go to one of [`PARTITIONS`] files by their instance id, so every file of an
//!    instance lands together (an instance's serial is decided from all its files);
//! 2. each instance partition is grouped, and every instance's files go on to one of
//!    [`PARTITIONS`] files by its group key (serial, or instance when it has none), so
//!    every instance of a serial lands together;
//! 3. each group partition is grouped again and handed to the caller.
//!
//! Records are length-prefixed byte strings (paths need not be UTF-8). The spill holds a
//! few hundred bytes per file; what it costs in memory is 2 x [`PARTITIONS`] write buffers
//! and the largest partition. Groups of a spilled index come out partition by partition
//! (sorted within each): the order is deterministic but not alphabetical.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::input::FileRef;
use super::{Group, group};

/// Most files indexed in memory before the index spills to disk.
pub const IN_MEMORY: usize = 32 * 1024;

/// Partitions of a spilled index (each pass keeps one write buffer per partition open).
pub const PARTITIONS: usize = 256;

/// Write buffer per partition file.
const BUFFER: usize = 8 << 10;

/// Bundle files found so far.
#[derive(Default)]
pub struct Index {
    files: u64,
    bytes: u64,
    mem: Vec<FileRef>,
    spill: Option<Spill>,
}

struct Spill {
    dir: tempfile::TempDir,
    by_instance: Vec<BufWriter<File>>,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// Bundle files indexed.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Their total size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the index went to disk.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Add one file.
    pub fn push(&mut self, f: FileRef) -> io::Result<()> {
        self.files += 1;
        self.bytes += f.bytes;
        if let Some(spill) = &mut self.spill {
            let p = instance_partition(&f.instance);
            return put_file(&mut spill.by_instance[p], &f);
        }
        self.mem.push(f);
        if self.mem.len() > IN_MEMORY {
            let dir = tempfile::Builder::new()
                .prefix("vmledger-crosscheck-")
                .tempdir()
                .map_err(|e| with_context(e, "creating the temporary index directory"))?;
            let by_instance = create_all(&dir, "i")?;
            let mut spill = Spill { dir, by_instance };
            for f in self.mem.drain(..) {
                let p = instance_partition(&f.instance);
                put_file(&mut spill.by_instance[p], &f)?;
            }
            self.mem = Vec::new();
            self.spill = Some(spill);
        }
        Ok(())
    }

    /// Hand the groups to `judge`, one partition at a time (all of them at once when the
    /// index is in memory).
    pub fn for_each_partition<E: From<io::Error>>(
        self,
        judge: &mut dyn FnMut(Vec<Group>) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(spill) = self.spill else {
            return judge(group(self.mem));
        };
        let Spill { dir, by_instance } = spill;
        for w in by_instance {
            w.into_inner()
                .map_err(|e| with_context(e.into_error(), "writing the temporary index"))?;
        }
        // Pass 2: instance partitions -> group partitions.
        let mut by_group = create_all(&dir, "g")?;
        for p in 0..PARTITIONS {
            let path = dir.path().join(format!("i{p}"));
            let files = read_all(&path)?;
            std::fs::remove_file(&path)
                .map_err(|e| with_context(e, "removing a temporary index file"))?;
            for g in group(files) {
                let q = group_partition(&g);
                for (_, files) in &g.instances {
                    for f in files {
                        put_file(&mut by_group[q], f)?;
                    }
                }
            }
        }
        for w in by_group {
            w.into_inner()
                .map_err(|e| with_context(e.into_error(), "writing the temporary index"))?;
        }
        // Pass 3: judge one group partition at a time.
        for p in 0..PARTITIONS {
            let path = dir.path().join(format!("g{p}"));
            let files = read_all(&path)?;
            std::fs::remove_file(&path)
                .map_err(|e| with_context(e, "removing a temporary index file"))?;
            if !files.is_empty() {
                judge(group(files))?;
            }
        }
        Ok(())
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what}: {e} (the index goes to $TMPDIR when a fleet has many files)"),
    )
}

fn create_all(dir: &tempfile::TempDir, prefix: &str) -> io::Result<Vec<BufWriter<File>>> {
    (0..PARTITIONS)
        .map(|p| {
            File::create(dir.path().join(format!("{prefix}{p}")))
                .map(|f| BufWriter::with_capacity(BUFFER, f))
                .map_err(|e| with_context(e, "creating a temporary index file"))
        })
        .collect()
}

/// Instance ids are 32 lowercase hex digits (checked at the scan): the first two pick the
/// partition.
fn instance_partition(instance: &str) -> usize {
    instance
        .get(..2)
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .unwrap_or(0)
        % PARTITIONS
}

fn group_partition(g: &Group) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    match &g.serial {
        Some(s) => (0u8, s.as_str()).hash(&mut h),
        None => (1u8, g.instances.first().map_or("", |(i, _)| i.as_str())).hash(&mut h),
    }
    (h.finish() % PARTITIONS as u64) as usize
}

fn put(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "index field over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

fn put_file(w: &mut impl Write, f: &FileRef) -> io::Result<()> {
    put(w, f.path.as_os_str().as_bytes())?;
    match &f.serial {
        Some(s) => {
            w.write_all(&[1])?;
            put(w, s.as_bytes())?;
        }
        None => w.write_all(&[0])?,
    }
    put(w, f.instance.as_bytes())?;
    put(w, f.public_key.as_bytes())?;
    w.write_all(&f.bytes.to_le_bytes())
        .map_err(|e| with_context(e, "writing the temporary index"))
}

fn get(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn get_string(r: &mut impl Read) -> io::Result<String> {
    String::from_utf8(get(r)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the temporary index is damaged (not UTF-8)",
        )
    })
}

/// Read a partition file back (it was written by this process, so any damage is an
/// I/O error).
fn read_all(path: &std::path::Path) -> io::Result<Vec<FileRef>> {
    let file = File::open(path).map_err(|e| with_context(e, "reading the temporary index"))?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(64 << 10, file);
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let path = PathBuf::from(std::ffi::OsString::from_vec(get(&mut r)?));
        let mut flag = [0u8; 1];
        r.read_exact(&mut flag)?;
        let serial = if flag[0] == 1 {
            Some(get_string(&mut r)?)
        } else {
            None
        };
        let instance = get_string(&mut r)?;
        let public_key = get_string(&mut r)?;
        let mut bytes = [0u8; 8];
        r.read_exact(&mut bytes)?;
        pos += record_len(&path, serial.as_deref(), &instance, &public_key);
        out.push(FileRef {
            path,
            serial,
            instance,
            public_key,
            bytes: u64::from_le_bytes(bytes),
        });
    }
    Ok(out)
}

fn record_len(path: &std::path::Path, serial: Option<&str>, instance: &str, key: &str) -> u64 {
    let field = |n: usize| 4 + n as u64;
    field(path.as_os_str().len())
        + 1
        + serial.map_or(0, |s| field(s.len()))
        + field(instance.len())
        + field(key.len())
        + 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(i: usize, instance: String, serial: Option<String>) -> FileRef {
        FileRef {
            path: PathBuf::from(format!("/fleet/{i:06}.json")),
            serial,
            instance,
            public_key: "k".repeat(44),
            bytes: i as u64,
        }
    }

    /// The spilled index yields exactly the groups the in-memory one does (as sets), with
    /// instances whose files disagree about the serial and serials spread over many
    /// instance partitions.
    #[test]
    fn spilled_groups_equal_in_memory_groups() {
        let mut files = Vec::new();
        for i in 0..(IN_MEMORY + 5000) {
            let instance = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let serial = match i % 7 {
                0 => None,
                1 => Some(format!("SN-{}", i % 100)),
                _ => Some(format!("SN-{}", i % 1000)),
            };
            files.push(file(i, instance.clone(), serial));
            if i % 5 == 0 {
                // A second file of the instance naming another (larger) serial.
                files.push(file(i + 1_000_000, instance, Some(format!("SN-z{i}"))));
            }
        }
        let expected = {
            let mut g: Vec<String> = group(files.clone())
                .iter()
                .map(|g| format!("{g:?}"))
                .collect();
            g.sort();
            g
        };
        let mut index = Index::new();
        for f in files {
            index.push(f).unwrap();
        }
        assert!(index.spilled());
        let mut got = Vec::new();
        index
            .for_each_partition::<io::Error>(&mut |groups| {
                got.extend(groups.iter().map(|g| format!("{g:?}")));
                Ok(())
            })
            .unwrap();
        got.sort();
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);
    }
}
