//! Records that could not go to the main stream, with the reason and where they came from.

use base64::Engine;
use serde::{Deserialize, Serialize};
use tributary_operators::late::LateRecord;

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
#[non_exhaustive]
pub enum Reason {
    /// The record could not be decoded, or its event time could not be extracted.
    Malformed {
        /// The decoder's message.
        error: String,
    },
    /// An operator found the record later than its allowed lateness (see [`DeadLetter::late`]).
    LateForWindow {
        /// The record's event time (ms).
        event_time: u64,
        /// Its dataflow time when it arrived (ms).
        arrived_at: u64,
        /// The end of the latest window it falls in (ms).
        window_end: u64,
        /// The operator's allowed lateness (ms).
        allowed_lateness_ms: u64,
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
    /// The record was stamped further ahead of the wall clock than the source allows
    /// ([`WatermarkPolicy::max_ahead_ms`](tributary_operators::WatermarkPolicy)).
    TooFarAhead {
        /// The record's event time (ms).
        event_time: u64,
        /// The source's limit (ms).
        max_ahead_ms: u64,
    },
    /// An output record the sink's topic cannot take (too large for it); `source` names the output topic.
    Refused {
        /// Why, as the sink or the broker says it.
        reason: String,
    },
}

impl Reason {
    /// The kind of reason, for counts: `malformed`, `too late for its window`, `too late`, `too far ahead`,
    /// `refused`.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Malformed { .. } => "malformed",
            Reason::LateForWindow { .. } => "too late for its window",
            Reason::TooLate { .. } => "too late",
            Reason::TooFarAhead { .. } => "too far ahead",
            Reason::Refused { .. } => "refused",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Malformed { error } => write!(f, "malformed: {error}"),
            Reason::LateForWindow { event_time, arrived_at, window_end, allowed_lateness_ms } => write!(
                f,
                "too late for its window: event time {event_time}, arrived at {arrived_at}, window ended at {window_end} (allowed lateness {allowed_lateness_ms} ms)"
            ),
            Reason::TooLate { event_time, watermark, max_lateness_ms } => write!(
                f,
                "too late: event time {event_time} is {} ms behind the watermark {watermark} (maximum lateness {max_lateness_ms} ms)",
                watermark - event_time
            ),
            Reason::TooFarAhead { event_time, max_ahead_ms } => write!(
                f,
                "too far ahead: event time {event_time} is more than {max_ahead_ms} ms ahead of the wall clock (a producer's clock or timestamp is wrong?)"
            ),
            Reason::Refused { reason } => write!(f, "refused by the output topic: {reason}"),
        }
    }
}

impl DeadLetter {
    /// A late record of an operator (a window, a session, a join) as a dead letter.
    ///
    /// A record read from a source carries its origin when it arrived behind its partition's watermark, which
    /// every record an operator finds too late did ([`tributary_operators::late`]): the dead letter then names the
    /// topic (or file), partition and offset it was read at, with its original key and value bytes. A record an
    /// operator derived has no single origin: `source` names the operator, partition and offset are 0, and the
    /// payload is the record as JSON.
    ///
    /// ```
    /// use tributary_connectors::DeadLetter;
    /// use tributary_operators::late::{LateRecord, Origin};
    /// let mut late = LateRecord {
    ///     record: ("a".to_string(), 3), event_time: 4, arrived_at: 30, diff: 1, window_end: 10, allowed_lateness_ms: 5, origin: None,
    /// };
    /// let derived = DeadLetter::late("Clicks", &late);
    /// assert_eq!((derived.origin(), derived.payload.as_deref()), ("Clicks/0/0".to_string(), Some(&b"[\"a\",3]"[..])));
    /// assert!(derived.reason.to_string().starts_with("too late for its window"));
    ///
    /// let bytes = br#"{"key":"a","ts_ms":4}"#.to_vec();
    /// late.origin = Some(Box::new(Origin { source: "clicks".into(), partition: 2, offset: 17, key: None, payload: Some(bytes.clone()) }));
    /// let read = DeadLetter::late("Clicks", &late);
    /// assert_eq!((read.origin(), read.payload), ("clicks/2/17".to_string(), Some(bytes)));
    /// ```
    pub fn late<D: Serialize>(operator: &str, late: &LateRecord<D>) -> DeadLetter {
        let reason = Reason::LateForWindow {
            event_time: late.event_time,
            arrived_at: late.arrived_at,
            window_end: late.window_end,
            allowed_lateness_ms: late.allowed_lateness_ms,
        };
        match late.origin.as_deref() {
            Some(origin) => DeadLetter {
                source: origin.source.clone(),
                partition: origin.partition,
                offset: origin.offset,
                reason,
                key: origin.key.clone(),
                payload: origin.payload.clone(),
            },
            None => DeadLetter {
                source: operator.to_owned(),
                partition: 0,
                offset: 0,
                reason,
                key: None,
                payload: serde_json::to_vec(&late.record).ok(),
            },
        }
    }

    /// The key a dead-letter topic uses: `source/partition/offset`.
    pub fn origin(&self) -> String {
        format!("{}/{}/{}", self.source, self.partition, self.offset)
    }

    /// The JSON a dead-letter topic holds: origin, reason, and the original key and payload bytes (base64, plus
    /// the text when they are UTF-8).
    ///
    /// Key and payload bytes beyond [`DeadLetter::MAX_BYTES`] each are cut off (a dead letter must fit in a
    /// topic); `key_len` and `payload_len` then give their full length.
    ///
    /// ```
    /// use tributary_connectors::{DeadLetter, Reason};
    /// let letter = DeadLetter {
    ///     source: "lines".into(), partition: 0, offset: 7,
    ///     reason: Reason::Malformed { error: "invalid UTF-8".into() },
    ///     key: None, payload: Some(vec![b'x'; 50_000]),
    /// };
    /// let json: serde_json::Value = serde_json::from_slice(&letter.to_json_within(10_000)).unwrap();
    /// assert_eq!(json["payload_len"], 50_000);
    /// assert!(letter.to_json_within(10_000).len() <= 10_000);
    /// ```
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_keeping(Self::MAX_BYTES)
    }

    /// As [`DeadLetter::to_json`], keeping fewer of the original bytes if needed so the JSON is at most `limit`
    /// bytes (a dead-letter topic's record size limit): a dead letter is never refused for its size.
    pub fn to_json_within(&self, limit: usize) -> Vec<u8> {
        let mut keep = Self::MAX_BYTES;
        loop {
            let json = self.to_json_keeping(keep);
            if json.len() <= limit || keep == 0 {
                return json;
            }
            // The kept bytes appear about 2.4 times (text and base64); shrink them by what is over.
            keep = keep.min(self.key.as_ref().map_or(0, Vec::len).max(self.payload.as_ref().map_or(0, Vec::len)));
            keep = keep.saturating_sub((json.len() - limit) / 2 + 1);
        }
    }

    fn to_json_keeping(&self, keep: usize) -> Vec<u8> {
        let cut = |b: &Option<Vec<u8>>| -> Option<Vec<u8>> {
            b.as_ref().map(|b| {
                let mut end = b.len().min(keep);
                // Cut text on a character boundary, so it stays text.
                if let Ok(text) = std::str::from_utf8(b) {
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                }
                b[..end].to_vec()
            })
        };
        let bytes = |b: &Option<Vec<u8>>| cut(b).map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        let text = |b: &Option<Vec<u8>>| cut(b).and_then(|b| String::from_utf8(b).ok());
        let mut value = serde_json::json!({
            "source": self.source,
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.reason.to_string(),
            "key": text(&self.key),
            "payload": text(&self.payload),
            "key_base64": bytes(&self.key),
            "payload_base64": bytes(&self.payload),
        });
        for (field, b) in [("key_len", &self.key), ("payload_len", &self.payload)] {
            if let Some(b) = b.as_ref().filter(|b| b.len() > keep) {
                value[field] = serde_json::json!(b.len());
            }
        }
        #[allow(clippy::expect_used, reason = "a JSON value with string keys always serializes")]
        let json = serde_json::to_vec(&value).expect("JSON values serialize");
        json
    }

    /// How many bytes of a key or payload a dead letter's JSON keeps (128 KiB).
    pub const MAX_BYTES: usize = 128 * 1024;
}

/// How many dead letters a worker logs in full before it only counts them.
pub(crate) const LOGGED_IN_FULL: usize = 10;

/// How often a worker logs the counts of the dead letters it did not log in full.
const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A worker's log of dead letters, never a line per record: the first [`LOGGED_IN_FULL`] with their origin and
/// reason, then counts by reason every few seconds and once the stream ends.
pub(crate) struct DeadLetterLog {
    /// The dead-letter topic that keeps every letter, if any.
    topic: Option<String>,
    logged: usize,
    /// Letters not logged in full since the last summary, by reason.
    pending: std::collections::BTreeMap<&'static str, u64>,
    since: std::time::Instant,
    total: u64,
}

impl DeadLetterLog {
    pub(crate) fn new(topic: Option<String>) -> Self {
        DeadLetterLog { topic, logged: 0, pending: Default::default(), since: std::time::Instant::now(), total: 0 }
    }

    /// Logs or counts one letter.
    pub(crate) fn letter(&mut self, letter: &DeadLetter) {
        self.total += 1;
        let (source, partition, offset) = (&letter.source, letter.partition, letter.offset);
        if self.logged < LOGGED_IN_FULL {
            self.logged += 1;
            match &self.topic {
                Some(topic) => tracing::warn!(source, partition, offset, topic, "dead letter: {}", letter.reason),
                None => tracing::warn!(source, partition, offset, "dead letter (no dead-letter topic keeps it): {}", letter.reason),
            }
            if self.logged == LOGGED_IN_FULL {
                tracing::warn!("further dead letters of this worker are counted, not logged one by one");
            }
            return;
        }
        *self.pending.entry(letter.reason.kind()).or_default() += 1;
        if self.since.elapsed() >= SUMMARY_EVERY {
            self.summary();
        }
    }

    /// Logs the counts not logged yet (called every few seconds, and when the stream ends).
    pub(crate) fn summary(&mut self) {
        self.since = std::time::Instant::now();
        if self.pending.is_empty() {
            return;
        }
        let counts: Vec<String> = self.pending.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        let count: u64 = self.pending.values().sum();
        let kept = match &self.topic {
            Some(topic) => format!("kept in {topic}"),
            None => "not kept: give the job a dead-letter topic to keep them".to_owned(),
        };
        tracing::warn!(total = self.total, "{count} more dead letters ({}); {kept}", counts.join(", "));
        self.pending.clear();
    }
}
