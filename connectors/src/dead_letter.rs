//! Records that could not go to the main stream, with the reason and where they came from.

use serde::{Deserialize, Serialize};

/// A record routed away from a source's main stream: malformed, or later than the source allows.
///
/// Nothing a source reads is dropped without a trace: each such record becomes a `DeadLetter` on the source's
/// error output (a dead-letter topic once a sink writes it), with its origin and its original bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The topic, or the file, the record came from.
    pub source: String,
    /// The Kafka partition (0 for files).
    pub partition: i32,
    /// The Kafka offset, or the 1-based line number in a file.
    pub offset: u64,
    /// Why the record is here.
    pub reason: Reason,
    /// The record's key, as read.
    pub key: Option<Vec<u8>>,
    /// The record's value, as read.
    pub payload: Option<Vec<u8>>,
}

/// Why a record went to the dead-letter output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The record could not be decoded, or its event time could not be extracted.
    Malformed {
        /// The decoder's message.
        error: String,
    },
    /// The record was further behind its partition's watermark than the source's maximum lateness.
    TooLate {
        /// The record's event time (ms).
        event_time: u64,
        /// The partition's watermark when it arrived (ms).
        watermark: u64,
        /// The source's maximum lateness (ms).
        max_lateness_ms: u64,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Malformed { error } => write!(f, "malformed: {error}"),
            Reason::TooLate { event_time, watermark, max_lateness_ms } => write!(
                f,
                "too late: event time {event_time} is {} ms behind the watermark {watermark} (maximum lateness {max_lateness_ms} ms)",
                watermark - event_time
            ),
        }
    }
}
