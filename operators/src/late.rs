//! Records too late for an operator, and where a record came from.
//!
//! Only a record that arrived behind its partition's watermark can be too late for an operator: an on-time
//! record travels at its own event time, which every window, session and join still accepts. So a source gives
//! such records their [`Origin`] (source, partition, offset and original bytes) in [`Timed::origin`], and an
//! operator that finds one too late hands it on in [`LateRecord::origin`]: a dead letter from an operator then
//! names the input record and carries its bytes, as one from a source does. On-time records carry nothing.
//!
//! [`Timed::origin`]: crate::event_time::Timed::origin

use serde::{Deserialize, Serialize};

/// Where a record was read, with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The topic, or the file, the record came from.
    pub source: String,
    /// The Kafka partition (0 for files).
    pub partition: i32,
    /// The Kafka offset, or the 1-based line number in a file.
    pub offset: u64,
    /// The record's key bytes, as read.
    pub key: Option<Vec<u8>>,
    /// The record's value bytes, as read.
    pub payload: Option<Vec<u8>>,
}

/// A record that arrived after every window (or join interval) it falls in had closed for good.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LateRecord<D> {
    /// The record.
    pub record: D,
    /// Its event time (ms).
    pub event_time: u64,
    /// Its dataflow time: the watermark when it arrived (ms).
    pub arrived_at: u64,
    /// Its multiplicity (`-1` for a retraction).
    pub diff: isize,
    /// The end of the latest window it falls in (ms).
    pub window_end: u64,
    /// The allowed lateness (ms).
    pub allowed_lateness_ms: u64,
    /// Where it was read, with its bytes, when a source said so (see the module docs).
    pub origin: Option<Box<Origin>>,
}
