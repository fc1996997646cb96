//! Kafka records as decoders see them, and the decoders Tributary ships.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record as read from a partition, borrowed from the client's buffer.
#[derive(Clone, Copy, Debug)]
pub struct KafkaRecord<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// The record's timestamp (CreateTime or LogAppendTime) in ms, if it has one.
    pub timestamp: Option<i64>,
    /// The key bytes.
    pub key: Option<&'a [u8]>,
    /// The value bytes; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// An owned copy of a record, for programs that want everything (see [`Decoder::message`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The timestamp in ms, if any.
    pub timestamp: Option<i64>,
    /// The key bytes.
    pub key: Option<Vec<u8>>,
    /// The value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

type DecodeFn<T> = dyn Fn(&KafkaRecord<'_>) -> Result<T, String> + Send + Sync;

/// Turns a record into a value, or says why it cannot; a failure sends the record to the dead-letter output.
pub struct Decoder<T>(pub(crate) Arc<DecodeFn<T>>);

impl<T> Clone for Decoder<T> {
    fn clone(&self) -> Self {
        Decoder(Arc::clone(&self.0))
    }
}

impl<T> Decoder<T> {
    /// A decoder from a function.
    pub fn with(f: impl Fn(&KafkaRecord<'_>) -> Result<T, String> + Send + Sync + 'static) -> Self {
        Decoder(Arc::new(f))
    }
}

impl<T: DeserializeOwned> Decoder<T> {
    /// The value as JSON.
    pub fn json() -> Self {
        Decoder::with(|r| {
            let value = r.value.ok_or("the record has no value (a tombstone)")?;
            serde_json::from_slice(value).map_err(|e| format!("invalid JSON: {e}"))
        })
    }
}

impl Decoder<String> {
    /// The value as UTF-8 text.
    pub fn utf8() -> Self {
        Decoder::with(|r| {
            let value = r.value.ok_or("the record has no value (a tombstone)")?;
            String::from_utf8(value.to_vec()).map_err(|e| format!("invalid UTF-8: {e}"))
        })
    }
}

impl Decoder<Message> {
    /// The whole record, owned: key, value, headers, partition, offset, timestamp.
    pub fn message() -> Self {
        Decoder::with(|r| {
            Ok(Message {
                topic: r.topic.to_owned(),
                partition: r.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r.headers.iter().map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec))).collect(),
            })
        })
    }
}

type ExtractFn<T> = dyn Fn(&T) -> Result<u64, String> + Send + Sync;

/// Where a record's event time comes from.
pub enum EventTime<T> {
    /// The Kafka record timestamp (ms); a record without one is malformed.
    KafkaTimestamp,
    /// Extracted from the decoded value.
    Extract(Arc<ExtractFn<T>>),
}

impl<T> Clone for EventTime<T> {
    fn clone(&self) -> Self {
        match self {
            EventTime::KafkaTimestamp => EventTime::KafkaTimestamp,
            EventTime::Extract(f) => EventTime::Extract(Arc::clone(f)),
        }
    }
}

/// A closure is an [`EventTime::Extract`]: `KafkaSource::new(config, &topics, decoder, |r: &T| Ok(r.ts_ms))`
/// takes the same closure as [`FileSource::new`](crate::file::FileSource::new).
impl<T, F: Fn(&T) -> Result<u64, String> + Send + Sync + 'static> From<F> for EventTime<T> {
    fn from(f: F) -> Self {
        EventTime::Extract(Arc::new(f))
    }
}

impl<T> EventTime<T> {
    /// Event time from the decoded value.
    pub fn extract(f: impl Fn(&T) -> Result<u64, String> + Send + Sync + 'static) -> Self {
        EventTime::Extract(Arc::new(f))
    }

    pub(crate) fn of(&self, record: &KafkaRecord<'_>, value: &T) -> Result<u64, String> {
        match self {
            EventTime::KafkaTimestamp => match record.timestamp {
                Some(ts) if ts >= 0 => Ok(ts as u64),
                _ => Err("the record has no timestamp".into()),
            },
            EventTime::Extract(f) => f(value),
        }
    }
}
