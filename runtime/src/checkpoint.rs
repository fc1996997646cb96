//! The checkpoint store: where a process keeps the files of its checkpoints, written so that a crash at any
//! moment leaves either a complete, verified file or none.
//!
//! A checkpoint is identified by the run *generation* that wrote it (strictly increasing across restarts, so no
//! name is ever reused) and the completed dataflow *time* it captures. Each process writes its own part under
//! `<root>/g<generation>-t<time>/p<process>/`: one file per piece of state (an operator's shard, a source's
//! positions), each written to a temporary name, fsynced, renamed into place and the directory fsynced, then a
//! manifest listing every file with its length and CRC-32, written the same way. Sealing the manifest returns
//! its own checksum, the process's *fingerprint* of the checkpoint.
//!
//! The store decides nothing about which checkpoint counts: the job's commit record (one per checkpoint, in the
//! commit log) names the checkpoint and every process's fingerprint, and is the only thing that makes it exist.
//! A restart loads the part the newest commit names and verifies it ([`CheckpointStore::load`]): a missing or
//! corrupt file is an error the caller answers by falling back to an older checkpoint, and finally to a full
//! replay. [`CheckpointStore::retain`] deletes what no commit references any more, never a checkpoint newer than
//! the newest one kept (it may still be being written).
//!
//! The dataflow's operators hand their state over per checkpoint (`tributary_operators::checkpoint`), and each
//! worker's first source has its part written here by a thread of its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which checkpoint: the run generation that wrote it and the completed time it captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId {
    /// The run that wrote it (strictly increasing across restarts).
    pub generation: u64,
    /// Every output at times up to this one is in the checkpoint.
    pub time: u64,
}

impl CheckpointId {
    fn dir_name(&self) -> String {
        format!("g{}-t{}", self.generation, self.time)
    }

    fn parse(name: &str) -> Option<CheckpointId> {
        let (generation, time) = name.strip_prefix('g')?.split_once("-t")?;
        Some(CheckpointId { generation: generation.parse().ok()?, time: time.parse().ok()? })
    }
}

/// One file of a checkpoint part, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The state it holds (e.g. `WindowedCount/shard-17`).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its CRC-32.
    pub crc32: u32,
}

/// What a process wrote for one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format (1).
    pub version: u32,
    /// The checkpoint.
    pub id: CheckpointId,
    /// The process that wrote it.
    pub process: usize,
    /// Its files.
    pub files: Vec<FileEntry>,
}

/// A verified checkpoint part: its manifest and every file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The manifest.
    pub manifest: Manifest,
    /// Each file's contents, by name.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file system failed.
    #[error("checkpoint store: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A file the checkpoint needs is not there.
    #[error("checkpoint {id:?} of process {process} is incomplete: {path} is missing")]
    Missing {
        /// The checkpoint.
        id: CheckpointId,
        /// The process.
        process: usize,
        /// The missing file.
        path: PathBuf,
    },
    /// A file is there but not what the manifest (or the commit) says.
    #[error("checkpoint {id:?} of process {process} is corrupt: {path}: {reason}")]
    Corrupt {
        /// The checkpoint.
        id: CheckpointId,
        /// The process.
        process: usize,
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A state name that cannot be a file name.
    #[error("checkpoint state name {0:?}: use letters, digits, `.`, `_`, `-` and `/` between non-empty parts")]
    InvalidName(String),
}

/// A process's checkpoints, in a directory (local disk, or any shared file system).
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    process: usize,
}

const MANIFEST: &str = "MANIFEST.json";

impl CheckpointStore {
    /// The store of process `process` under `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>, process: usize) -> Result<CheckpointStore, CheckpointError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| CheckpointError::Io { what: "create", path: root.clone(), source })?;
        Ok(CheckpointStore { root, process })
    }

    fn part_dir(&self, id: CheckpointId) -> PathBuf {
        self.root.join(id.dir_name()).join(format!("p{}", self.process))
    }

    /// Starts writing this process's part of checkpoint `id`.
    pub fn writer(&self, id: CheckpointId) -> Result<CheckpointWriter, CheckpointError> {
        let dir = self.part_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io { what: "create", path: dir.clone(), source })?;
        Ok(CheckpointWriter { dir, id, process: self.process, files: Vec::new() })
    }

    /// The checkpoints with a part of this process's in the store, oldest first (complete or not).
    pub fn list(&self) -> Result<Vec<CheckpointId>, CheckpointError> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|source| CheckpointError::Io { what: "list", path: self.root.clone(), source })?;
        let mut ids: Vec<CheckpointId> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(CheckpointId::parse))
            .filter(|id| self.part_dir(*id).is_dir())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads and verifies this process's part of checkpoint `id`: the manifest's checksum must be `fingerprint`
    /// (what the commit recorded), and every file it lists must be there with its length and checksum.
    pub fn load(&self, id: CheckpointId, fingerprint: u32) -> Result<Loaded, CheckpointError> {
        let dir = self.part_dir(id);
        let process = self.process;
        let read = |path: PathBuf| -> Result<Vec<u8>, CheckpointError> {
            std::fs::read(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => CheckpointError::Missing { id, process, path: path.clone() },
                _ => CheckpointError::Io { what: "read", path: path.clone(), source },
            })
        };
        let corrupt = |path: &Path, reason: String| CheckpointError::Corrupt { id, process, path: path.to_owned(), reason };
        let manifest_path = dir.join(MANIFEST);
        let bytes = read(manifest_path.clone())?;
        let crc = crc32fast::hash(&bytes);
        if crc != fingerprint {
            return Err(corrupt(&manifest_path, format!("its checksum is {crc:08x}, the commit recorded {fingerprint:08x}")));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(&manifest_path, e.to_string()))?;
        if manifest.id != id || manifest.process != process {
            return Err(corrupt(&manifest_path, format!("it describes {:?} of process {}", manifest.id, manifest.process)));
        }
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let path = dir.join(file_name(&entry.name)?);
            let contents = read(path.clone())?;
            if contents.len() as u64 != entry.len {
                return Err(corrupt(&path, format!("{} bytes, the manifest says {}", contents.len(), entry.len)));
            }
            let crc = crc32fast::hash(&contents);
            if crc != entry.crc32 {
                return Err(corrupt(&path, format!("checksum {crc:08x}, the manifest says {:08x}", entry.crc32)));
            }
            files.insert(entry.name.clone(), contents);
        }
        Ok(Loaded { manifest, files })
    }

    /// Deletes every checkpoint not in `keep` that is older than the newest one in `keep`: what no commit
    /// references any more. A checkpoint newer than all of `keep` may still be being written and stays; with
    /// `keep` empty nothing is deleted.
    pub fn retain(&self, keep: &[CheckpointId]) -> Result<Vec<CheckpointId>, CheckpointError> {
        let Some(newest) = keep.iter().max().copied() else { return Ok(Vec::new()) };
        let mut deleted = Vec::new();
        for id in self.list()? {
            if id < newest && !keep.contains(&id) {
                let dir = self.part_dir(id);
                std::fs::remove_dir_all(&dir).map_err(|source| CheckpointError::Io { what: "delete", path: dir, source })?;
                // The checkpoint's directory goes once no process has a part in it (other processes may share it).
                let _ = std::fs::remove_dir(self.root.join(id.dir_name()));
                deleted.push(id);
            }
        }
        Ok(deleted)
    }
}

/// Writes one process's part of a checkpoint, file by file; [`CheckpointWriter::seal`] completes it.
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: PathBuf,
    id: CheckpointId,
    process: usize,
    files: Vec<FileEntry>,
}

impl CheckpointWriter {
    /// Writes the state `name` (letters, digits, `.`, `_`, `-`, parts separated by `/`), durably.
    pub fn write(&mut self, name: &str, contents: &[u8]) -> Result<(), CheckpointError> {
        let path = self.dir.join(file_name(name)?);
        write_durably(&path, contents)?;
        self.files.retain(|f| f.name != name);
        self.files.push(FileEntry { name: name.to_owned(), len: contents.len() as u64, crc32: crc32fast::hash(contents) });
        Ok(())
    }

    /// Writes the manifest, durably, and returns its checksum: the fingerprint the commit records.
    pub fn seal(mut self) -> Result<u32, CheckpointError> {
        self.files.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = Manifest { version: 1, id: self.id, process: self.process, files: self.files };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Io {
            what: "encode",
            path: self.dir.join(MANIFEST),
            source: std::io::Error::other(e),
        })?;
        write_durably(&self.dir.join(MANIFEST), &bytes)?;
        Ok(crc32fast::hash(&bytes))
    }
}

/// The file a state name is kept in: `/` separates directories-in-name, flattened to `--`, so every file of a
/// part is in one directory.
fn file_name(name: &str) -> Result<String, CheckpointError> {
    let valid_part = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if name.split('/').all(valid_part) && !name.contains("--") && name != MANIFEST {
        Ok(format!("{}.state", name.replace('/', "--")))
    } else {
        Err(CheckpointError::InvalidName(name.to_owned()))
    }
}

/// Writes `contents` to `path` so that a crash leaves the old file, or the complete new one: a temporary file,
/// fsynced, renamed into place, and the directory fsynced.
fn write_durably(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
        move |source| CheckpointError::Io { what, path: path.to_owned(), source }
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = File::create(&temp).map_err(io("create", &temp))?;
    file.write_all(contents).map_err(io("write", &temp))?;
    file.sync_all().map_err(io("fsync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io("rename into place", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tributary-checkpoint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(store: &CheckpointStore, id: CheckpointId, files: &[(&str, &[u8])]) -> u32 {
        let mut writer = store.writer(id).unwrap();
        for (name, contents) in files {
            writer.write(name, contents).unwrap();
        }
        writer.seal().unwrap()
    }

    #[test]
    fn a_sealed_part_loads_verified() {
        let root = scratch("load");
        let store = CheckpointStore::open(&root, 1).unwrap();
        let id = CheckpointId { generation: 3, time: 1_000 };
        let fingerprint = write(&store, id, &[("Counts/shard-0", b"abc"), ("sources", b"{}"), ("Counts/shard-1", b"")]);
        let loaded = store.load(id, fingerprint).unwrap();
        assert_eq!(loaded.files.len(), 3);
        assert_eq!(loaded.files["Counts/shard-0"], b"abc");
        assert_eq!(loaded.manifest.process, 1);
        // Another process's part of the same checkpoint is its own.
        assert!(matches!(CheckpointStore::open(&root, 0).unwrap().load(id, fingerprint), Err(CheckpointError::Missing { .. })));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_corrupt_a_deleted_or_an_unsealed_file_is_an_error_not_a_checkpoint() {
        let root = scratch("corrupt");
        let store = CheckpointStore::open(&root, 0).unwrap();
        let id = CheckpointId { generation: 1, time: 50 };
        let fingerprint = write(&store, id, &[("a", b"hello"), ("b", b"world")]);
        let dir = root.join("g1-t50").join("p0");

        // A flipped byte.
        std::fs::write(dir.join("a.state"), b"hellp").unwrap();
        let err = store.load(id, fingerprint).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }) && err.to_string().contains("checksum"), "{err}");
        // A truncated file.
        std::fs::write(dir.join("a.state"), b"hell").unwrap();
        assert!(store.load(id, fingerprint).unwrap_err().to_string().contains("4 bytes, the manifest says 5"));
        // A deleted file.
        std::fs::remove_file(dir.join("a.state")).unwrap();
        assert!(matches!(store.load(id, fingerprint), Err(CheckpointError::Missing { .. })));
        // A manifest that is not the one the commit recorded.
        assert!(matches!(store.load(id, fingerprint ^ 1), Err(CheckpointError::Corrupt { .. })));
        // A part whose manifest was never written (a crash before sealing) does not load.
        let unsealed = CheckpointId { generation: 1, time: 60 };
        store.writer(unsealed).unwrap().write("a", b"x").unwrap();
        assert!(matches!(store.load(unsealed, 0), Err(CheckpointError::Missing { .. })));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn retain_deletes_only_what_is_older_than_the_newest_kept_and_not_kept() {
        let root = scratch("retain");
        let store = CheckpointStore::open(&root, 0).unwrap();
        let ids: Vec<CheckpointId> =
            [(1, 10), (1, 20), (2, 20), (2, 30), (3, 40)].map(|(g, t)| CheckpointId { generation: g, time: t }).to_vec();
        for id in &ids {
            write(&store, *id, &[("s", b"state")]);
        }
        assert_eq!(store.list().unwrap(), ids);
        assert!(store.retain(&[]).unwrap().is_empty(), "nothing committed: nothing deleted");
        // Committed: (2, 20) and (2, 30); (3, 40) is newer, maybe still being written.
        let deleted = store.retain(&[ids[2], ids[3]]).unwrap();
        assert_eq!(deleted, vec![ids[0], ids[1]]);
        assert_eq!(store.list().unwrap(), vec![ids[2], ids[3], ids[4]]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn state_names_are_checked() {
        assert!(file_name("Window/shard-3").is_ok());
        for bad in ["", "a//b", "../x", "a/./b", "a b", "a--b", "MANIFEST.json"] {
            assert!(matches!(file_name(bad), Err(CheckpointError::InvalidName(_))), "{bad:?}");
        }
    }
}
