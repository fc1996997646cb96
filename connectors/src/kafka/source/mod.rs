//! The Kafka source: every partition of the configured topics read by exactly one worker of the cluster.
//!
//! Assignment is ours (`assign`, never group subscription, no auto-commit): partition `p` of topic `t` belongs
//! to worker `(fnv1a(t) + p) % peers`, the same answer in every process. A worker that owns no partition at
//! start finishes at once, so it never holds the watermark back; partitions added while running are found by a
//! background metadata poll and go to the same worker as the formula says, or, if that worker owned nothing at
//! start (and so has finished), to one of the workers that did, by the same rule over those.
//!
//! Records are decoded on the worker by a [`Decoder`]; one that fails, or has no event time, goes to the
//! dead-letter output with its topic, partition and offset. With [`KafkaSource::until_end`] each partition is
//! read up to the end offset seen at start and the source then closes, so the job finishes with final results.

mod assignment;
mod reader;
mod start;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;

pub use self::assignment::owner;
use self::assignment::partition_count;
use self::reader::{KafkaReader, metadata_client};
use super::config::{ConfigError, KafkaConfig};
use super::record::{Decoder, EventTime};
use crate::source::{Source, SourceMetrics, SourceOptions, SourceStreams, partitioned_source};

/// Where a source starts reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The earliest offset of each partition.
    #[default]
    Earliest,
    /// The end of each partition: only records produced from now on.
    Latest,
    /// The first offset whose timestamp is at or after this time (ms); the end if there is none.
    Timestamp(i64),
    /// Explicit next offsets per (topic, partition); partitions not listed start at the earliest offset.
    Offsets(BTreeMap<(String, i32), i64>),
    /// Positions the runtime stored (offsets and watermarks); partitions not listed start at the earliest offset.
    Resume(Vec<Position>),
}

/// Where a partition's reading stands: the next offset to read and the partition's watermark. Store these
/// (from [`SourceMetrics`]) to resume with [`StartFrom::Resume`] without loss or duplicates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
    /// The partition's event-time watermark.
    pub watermark: u64,
}

/// Why a Kafka source could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client could not be created or could not reach the brokers.
    #[error("cannot reach the brokers at {brokers}: {source}; check --brokers and that the broker runs")]
    Client {
        /// The brokers.
        brokers: String,
        /// rdkafka's error.
        source: KafkaError,
    },
    /// The brokers refused the client's TLS handshake or SASL login: retrying will not help.
    #[error("cannot connect to the Kafka brokers at {brokers}: {reason}")]
    Security {
        /// The brokers.
        brokers: String,
        /// What failed, librdkafka's message, and what to check.
        reason: String,
    },
    /// A topic does not exist.
    #[error("topic `{topic}` does not exist on {brokers}; create it first (topics are not auto-created)")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// The brokers.
        brokers: String,
    },
    /// No topics were given.
    #[error("no topics given")]
    NoTopics,
    /// The records a restart must replay are gone.
    #[error(
        "partition {topic}/{partition} now starts at offset {log_start}, but the job's commit says it read from offset {start}: retention deleted records the job replays to rebuild its state; raise the topic's retention, or start the job afresh (new output topics and commit log)"
    )]
    Retention {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where the job's reading started.
        start: u64,
        /// Where the partition's log starts now.
        log_start: i64,
    },
    /// The offset a partition was asked to start from (`StartFrom::Offsets`, or positions given to resume from
    /// without a commit) is no longer in the partition.
    #[error(
        "partition {topic}/{partition} now starts at offset {log_start}, but the source was asked to start at offset {requested}: retention deleted those records; ask for offset {log_start} or later (or StartFrom::Earliest)"
    )]
    StartGone {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        requested: i64,
        /// Where the partition's log starts now.
        log_start: i64,
    },
    /// A partition holds fewer records than the job had read: the topic was recreated or truncated.
    #[error(
        "partition {topic}/{partition} ends at offset {end}, but the job's commit says it had read up to offset {position}: the topic was recreated or truncated; start the job afresh (new output topics and commit log)"
    )]
    Truncated {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where the job's reading had got to.
        position: u64,
        /// Where the partition ends now.
        end: i64,
    },
    /// A position the running job reads from disappeared (retention deleted it, or the topic was recreated).
    #[error(
        "Kafka source: {reason}: a position the job reads from no longer exists (retention deleted it, or the topic was recreated); start the job afresh (new output topics and commit log) or restore the records"
    )]
    PositionGone {
        /// The consumer's error.
        reason: String,
    },
}

/// A Kafka source of records decoded to `T`.
///
/// Build it before starting the cluster (it checks the topics exist), then call [`KafkaSource::build`] in each
/// worker's dataflow.
pub struct KafkaSource<T> {
    config: KafkaConfig,
    topics: Vec<String>,
    partitions: BTreeMap<String, i32>,
    start: StartFrom,
    until_end: bool,
    decoder: Decoder<T>,
    event_time: EventTime<T>,
    discovery_interval: Duration,
    timeout: Duration,
    commit_group: Option<String>,
}

impl<T> Clone for KafkaSource<T> {
    fn clone(&self) -> Self {
        KafkaSource {
            config: self.config.clone(),
            topics: self.topics.clone(),
            partitions: self.partitions.clone(),
            start: self.start.clone(),
            until_end: self.until_end,
            decoder: self.decoder.clone(),
            event_time: self.event_time.clone(),
            discovery_interval: self.discovery_interval,
            timeout: self.timeout,
            commit_group: self.commit_group.clone(),
        }
    }
}

impl<T: Clone + 'static> KafkaSource<T> {
    /// A source over `topics`, decoding with `decoder` and taking event time from `event_time`: an [`EventTime`], or
    /// a closure `|record: &T| Ok(ms)` extracting it from the decoded value.
    ///
    /// Connects to the brokers to read the topics' partition counts; fails if a topic does not exist.
    pub fn new(
        config: KafkaConfig,
        topics: &[&str],
        decoder: Decoder<T>,
        event_time: impl Into<EventTime<T>>,
    ) -> Result<Self, SourceError> {
        let event_time = event_time.into();
        if topics.is_empty() {
            return Err(SourceError::NoTopics);
        }
        let timeout = Duration::from_secs(10);
        let consumer = metadata_client(&config)?;
        let mut partitions = BTreeMap::new();
        for topic in topics {
            // Short attempts, so a TLS or SASL failure ends the wait at once, with its reason.
            let deadline = std::time::Instant::now() + timeout;
            rdkafka::consumer::Consumer::context(&consumer).clear();
            let count = loop {
                let attempt = deadline.saturating_duration_since(std::time::Instant::now()).min(Duration::from_secs(1));
                match partition_count(&consumer, topic, attempt) {
                    Ok(count) => break count,
                    Err(source) => {
                        if let Some(reason) = crate::kafka::admin::security_failure(&consumer) {
                            return Err(SourceError::Security { brokers: config.brokers().to_owned(), reason });
                        }
                        if std::time::Instant::now() >= deadline {
                            return Err(SourceError::Client { brokers: config.brokers().to_owned(), source });
                        }
                    }
                }
            }
            .ok_or_else(|| SourceError::UnknownTopic { topic: (*topic).to_owned(), brokers: config.brokers().to_owned() })?;
            partitions.insert((*topic).to_owned(), count);
        }
        Ok(KafkaSource {
            config,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            partitions,
            start: StartFrom::Earliest,
            until_end: false,
            decoder,
            event_time,
            discovery_interval: Duration::from_secs(10),
            timeout,
            commit_group: None,
        })
    }

    /// Where to start reading (default: earliest).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Bounded mode: read each partition up to the end offset seen at start, then close.
    pub fn until_end(mut self, until_end: bool) -> Self {
        self.until_end = until_end;
        self
    }

    /// How often to look for new partitions (unbounded mode).
    pub fn discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery_interval = interval;
        self
    }

    /// Also commits positions to consumer group `group` (every 5 s and when the source closes), purely so that
    /// standard lag tools (`kafka-consumer-groups --describe`) show progress. The group is never joined and its
    /// offsets are never read back: resuming uses [`StartFrom::Resume`]. The positions committed are the
    /// committed ones ([`PartitionMetrics::committed`](crate::PartitionMetrics)): with sinks registered through
    /// [`SourceStreams::commits`](crate::SourceStreams), only up to records whose output the sinks have written.
    pub fn commit_positions_to(mut self, group: impl Into<String>) -> Self {
        self.commit_group = Some(group.into());
        self
    }

    /// The partition counts seen when the source was created.
    pub fn partition_counts(&self) -> &BTreeMap<String, i32> {
        &self.partitions
    }

    /// Builds the source operator in `scope`.
    pub fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, T> {
        let source = self.clone();
        let metrics_slot: Arc<Mutex<Option<SourceMetrics>>> = Arc::default();
        let slot = Arc::clone(&metrics_slot);
        let streams = partitioned_source(scope, "KafkaSource", options, move |index, peers, resume| {
            KafkaReader::new(source, index, peers, slot, resume).unwrap_or_else(|e| crate::error::stop(e))
        });
        *metrics_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(streams.metrics.clone());
        streams
    }
}

impl<T: Clone + 'static> Source for KafkaSource<T> {
    type Item = T;
    fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, T> {
        KafkaSource::build(self, scope, options)
    }
}
