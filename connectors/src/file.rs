//! Files as a bounded event-time source: JSON lines or CSV, one file per partition, files spread over workers.
//!
//! Each file is one "partition" with its own watermark; file `i` of the sorted list goes to worker
//! `i % peers`. Records decode through serde; one that does not decode, or whose event time cannot be
//! extracted, goes to the dead-letter output with its file and line number. For demos, replaying data sets, and
//! benchmarks without a broker.
//!
//! ```
//! use timely::dataflow::operators::{Capture, capture::Extract};
//! use tributary_connectors::file::FileSource;
//!
//! #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
//! struct Click { user: String, ts_ms: u64 }
//!
//! let dir = std::env::temp_dir().join(format!("file-source-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("clicks.jsonl"), "{\"user\":\"a\",\"ts_ms\":10}\nnot json\n{\"user\":\"b\",\"ts_ms\":20}\n")?;
//! let source = FileSource::<Click>::new(vec![dir.clone()], |c: &Click| Ok(c.ts_ms))?;
//! let (records, dead) = timely::example(move |scope| {
//!     let streams = source.build(scope, Default::default());
//!     (streams.records.capture(), streams.dead_letters.capture())
//! });
//! let records: Vec<_> = records.extract().into_iter().flat_map(|(_, v)| v).map(|(r, t, _)| (r.value.user, t)).collect();
//! assert_eq!(records, vec![("a".to_string(), 10), ("b".to_string(), 20)]);
//! let dead: Vec<_> = dead.extract().into_iter().flat_map(|(_, v)| v).collect();
//! assert_eq!(dead[0].offset, 2);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use timely::dataflow::Scope;

use crate::source::{Arrivals, PartitionReader, Polled, ReadStatus, Source, SourceOptions, SourceStreams, partitioned_source};

/// The line format of a file, chosen by its extension: `.csv` is CSV with a header line, anything else JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per line; blank lines are skipped.
    JsonLines,
    /// CSV with a header line naming the fields.
    Csv,
}

impl Format {
    fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::JsonLines,
        }
    }
}

/// Extracts a record's event time (ms), or says why it cannot.
pub type EventTimeFn<T> = Arc<dyn Fn(&T) -> Result<u64, String> + Send + Sync>;

/// Why a file source cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSourceError {
    /// A path does not exist or cannot be listed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The paths hold no file.
    #[error("no input files in {0}; give files or directories holding .jsonl/.csv files")]
    Empty(String),
}

/// A bounded source over JSON-lines and CSV files (or directories of them).
pub struct FileSource<T> {
    files: Vec<PathBuf>,
    event_time: EventTimeFn<T>,
    _records: PhantomData<fn() -> T>,
}

impl<T> Clone for FileSource<T> {
    fn clone(&self) -> Self {
        FileSource { files: self.files.clone(), event_time: Arc::clone(&self.event_time), _records: PhantomData }
    }
}

impl<T: DeserializeOwned + Clone + 'static> FileSource<T> {
    /// A source over `paths`: files, or directories whose regular files (sorted by name, hidden ones skipped)
    /// are read. `event_time` extracts each record's event time in ms.
    pub fn new(
        paths: Vec<PathBuf>,
        event_time: impl Fn(&T) -> Result<u64, String> + Send + Sync + 'static,
    ) -> Result<Self, FileSourceError> {
        let mut files = Vec::new();
        for path in &paths {
            let io = |source| FileSourceError::Io { path: path.clone(), source };
            if path.is_dir() {
                let mut listed = Vec::new();
                for entry in std::fs::read_dir(path).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let hidden = entry.file_name().to_string_lossy().starts_with('.');
                    if entry.file_type().map_err(io)?.is_file() && !hidden {
                        listed.push(entry.path());
                    }
                }
                listed.sort();
                files.extend(listed);
            } else {
                std::fs::metadata(path).map_err(io)?;
                files.push(path.clone());
            }
        }
        if files.is_empty() {
            let names = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(FileSourceError::Empty(names));
        }
        Ok(FileSource { files, event_time: Arc::new(event_time), _records: PhantomData })
    }

    /// The files, in partition order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Builds the source operator in `scope`; each worker reads files `i` with `i % peers == index`.
    pub fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, T> {
        let files = self.files.clone();
        let event_time = Arc::clone(&self.event_time);
        partitioned_source(scope, "FileSource", options, move |index, peers, _resume| FileReader {
            files: files.into_iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, f)| (f.display().to_string(), f)).collect(),
            current: 0,
            open: None,
            event_time,
            line: String::new(),
        })
    }
}

impl<T: DeserializeOwned + Clone + 'static> Source for FileSource<T> {
    type Item = T;
    fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, T> {
        FileSource::build(self, scope, options)
    }
}

struct FileReader<T> {
    /// (display name, path) of this worker's files; the index is the partition.
    files: Vec<(String, PathBuf)>,
    current: usize,
    open: Option<OpenFile>,
    event_time: EventTimeFn<T>,
    /// The line being read (JSON lines), reused.
    line: String,
}

enum OpenFile {
    Json { lines: BufReader<File>, line: u64 },
    Csv { reader: csv::Reader<File>, headers: csv::ByteRecord, row: csv::ByteRecord },
}

impl<T: DeserializeOwned + 'static> PartitionReader for FileReader<T> {
    type Item = T;

    fn partitions(&self) -> usize {
        self.files.len()
    }

    fn origin(&self, partition: usize) -> (&str, i32) {
        (&self.files[partition].0, 0)
    }

    fn poll(&mut self, budget: usize, out: &mut Vec<Polled<T>>, arrivals: &mut Arrivals<'_>) -> ReadStatus {
        let mut read = 0;
        while read < budget {
            let partition = self.current;
            let Some((_, path)) = self.files.get(partition) else { return ReadStatus::Finished };
            if self.open.is_none() {
                let opened = File::open(path).and_then(|file| {
                    Ok(match Format::of(path) {
                        Format::JsonLines => OpenFile::Json { lines: BufReader::new(file), line: 0 },
                        Format::Csv => {
                            let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(file);
                            let headers = reader.byte_headers().map_err(std::io::Error::other)?.clone();
                            OpenFile::Csv { reader, headers, row: csv::ByteRecord::new() }
                        }
                    })
                });
                match opened {
                    Ok(open) => self.open = Some(open),
                    Err(e) => {
                        let error = format!("cannot open the file: {e}");
                        out.push(arrivals.decoded(partition, 0, Err(error), || (None, None)));
                        out.push(Polled::End { partition });
                        self.current += 1;
                        continue;
                    }
                }
            }
            let event_time = &self.event_time;
            let with_time = |decoded: Result<T, String>| {
                decoded.and_then(|value| match event_time(&value) {
                    Ok(time) => Ok((value, time)),
                    Err(error) => Err(format!("no event time: {error}")),
                })
            };
            #[allow(clippy::expect_used, reason = "opened just above, or the loop went on to the next file")]
            let event = match self.open.as_mut().expect("opened above") {
                OpenFile::Json { lines, line } => {
                    self.line.clear();
                    *line += 1;
                    match lines.read_line(&mut self.line) {
                        Ok(0) => None,
                        Ok(_) if self.line.trim().is_empty() => continue,
                        Ok(_) => {
                            let offset = *line;
                            let trimmed = self.line.trim_end_matches(['\n', '\r']);
                            let decoded = with_time(serde_json::from_str::<T>(trimmed).map_err(|e| e.to_string()));
                            Some(arrivals.decoded(partition, offset, decoded, || (None, Some(trimmed.as_bytes().to_vec()))))
                        }
                        // Invalid UTF-8 spoils one line (which is consumed); any other error is the file's, and
                        // would repeat: the job stops rather than skip the rest of the file.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            Some(arrivals.decoded(partition, *line, Err(format!("read error: {e}")), || (None, None)))
                        }
                        Err(source) => crate::error::stop(FileSourceError::Io { path: path.clone(), source }),
                    }
                }
                OpenFile::Csv { reader, headers, row } => match reader.read_byte_record(row) {
                    Ok(false) => None,
                    Ok(true) => {
                        let offset = row.position().map_or(0, csv::Position::line);
                        let decoded = with_time(row.deserialize::<T>(Some(headers)).map_err(|e| e.to_string()));
                        Some(arrivals.decoded(partition, offset, decoded, || (None, Some(row.iter().collect::<Vec<_>>().join(&b',')))))
                    }
                    Err(e) if e.is_io_error() => {
                        let source = match e.into_kind() {
                            csv::ErrorKind::Io(source) => source,
                            other => std::io::Error::other(format!("{other:?}")),
                        };
                        crate::error::stop(FileSourceError::Io { path: path.clone(), source })
                    }
                    Err(e) => {
                        let offset = e.position().map_or(0, csv::Position::line);
                        Some(arrivals.decoded(partition, offset, Err(e.to_string()), || (None, None)))
                    }
                },
            };
            match event {
                Some(event) => {
                    out.push(event);
                    read += 1;
                }
                None => {
                    out.push(Polled::End { partition });
                    self.open = None;
                    self.current += 1;
                }
            }
        }
        if self.current >= self.files.len() { ReadStatus::Finished } else { ReadStatus::More }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::of(Path::new("a.CSV")), Format::Csv);
        assert_eq!(Format::of(Path::new("a.jsonl")), Format::JsonLines);
        assert_eq!(Format::of(Path::new("a")), Format::JsonLines);
    }

    #[test]
    fn missing_paths_are_errors() {
        let err = FileSource::<u64>::new(vec![PathBuf::from("/nonexistent/x.csv")], |_| Ok(0)).err().expect("error");
        assert!(err.to_string().contains("/nonexistent/x.csv"));
    }
}
