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

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, error::KafkaError};
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;

use super::config::{ConfigError, KafkaConfig};
use super::record::{Decoder, EventTime, KafkaRecord};
use crate::source::{
    Arrivals, PartitionKey, PartitionReader, Polled, ReadStatus, Source, SourceMetrics, SourceOptions, SourceResume, SourceStreams,
    partitioned_source,
};

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
    /// A source over `topics`, decoding with `decoder` and taking event time from `event_time`.
    ///
    /// Connects to the brokers to read the topics' partition counts; fails if a topic does not exist.
    pub fn new(config: KafkaConfig, topics: &[&str], decoder: Decoder<T>, event_time: EventTime<T>) -> Result<Self, SourceError> {
        if topics.is_empty() {
            return Err(SourceError::NoTopics);
        }
        let timeout = Duration::from_secs(10);
        let consumer = metadata_client(&config)?;
        let mut partitions = BTreeMap::new();
        for topic in topics {
            let count = partition_count(&consumer, topic, timeout)
                .map_err(|source| SourceError::Client { brokers: config.brokers().to_owned(), source })?
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

/// 32-bit FNV-1a: a stable hash, the same in every process and build.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c9dc5u32, |hash, byte| (hash ^ byte as u32).wrapping_mul(0x01000193))
}

/// The worker that reads partition `partition` of `topic` among `peers` workers.
///
/// ```
/// use tributary_connectors::kafka::owner;
/// let workers: Vec<usize> = (0..4).map(|p| owner("orders", p, 4)).collect();
/// let mut sorted = workers.clone();
/// sorted.sort();
/// assert_eq!(sorted, vec![0, 1, 2, 3], "consecutive partitions of a topic go to distinct workers");
/// ```
pub fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    ((fnv1a(topic) as u64 + partition as u64) % peers as u64) as usize
}

/// The owner of a partition discovered after start: as [`owner`], unless that worker owned nothing at start.
fn late_owner(topic: &str, partition: i32, active: &[usize], peers: usize) -> Option<usize> {
    let preferred = owner(topic, partition, peers);
    if active.contains(&preferred) {
        return Some(preferred);
    }
    (!active.is_empty()).then(|| active[((fnv1a(topic) as u64 + partition as u64) % active.len() as u64) as usize])
}

/// Routes librdkafka's logs into `tracing` and keeps the latest end offsets from its statistics.
struct Context {
    ends: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        super::config::log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    ends.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ConsumerContext for Context {}

/// How often positions are committed for lag reporting.
const COMMIT_EVERY: Duration = Duration::from_secs(5);

impl<T> Drop for KafkaReader<T> {
    fn drop(&mut self) {
        if self.next_commit.is_some() {
            self.commit_positions(CommitMode::Sync);
        }
    }
}

/// The settings the source owns, applied over the user's.
const CONSUMER_SETTINGS: &[(&str, &str)] = &[
    // librdkafka wants a group id for a consumer handle; with `assign` and no commits it joins no group.
    ("group.id", "tributary-source"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    // Never jump silently: a position retention has overtaken (or a recreated topic) is an error that stops the
    // job with a message, not a replay from elsewhere.
    ("auto.offset.reset", "error"),
    ("enable.partition.eof", "false"),
];

fn metadata_client(config: &KafkaConfig) -> Result<BaseConsumer, SourceError> {
    config
        .client_config(CONSUMER_SETTINGS)
        .create::<BaseConsumer>()
        .map_err(|source| SourceError::Client { brokers: config.brokers().to_owned(), source })
}

/// The partition count of `topic`, or `None` if it does not exist.
fn partition_count<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, timeout: Duration) -> Result<Option<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        let count = t.partitions().len() as i32;
        (t.error().is_none() && count > 0).then_some(count)
    }))
}

struct KafkaReader<T> {
    consumer: Arc<BaseConsumer<Context>>,
    decoder: Decoder<T>,
    event_time: EventTime<T>,
    /// This worker's partitions, in the order they were added: the reader's partition index.
    partitions: Vec<(String, i32)>,
    index: HashMap<(String, i32), usize>,
    restored: Vec<Option<u64>>,
    /// The offset reading of each partition started at, resolved.
    starts: Vec<u64>,
    /// The next offset to read of each partition, as far as records have come.
    positions: Vec<u64>,
    /// Each partition's end as last seen in librdkafka's statistics (for backlog and lag).
    known_ends: Vec<Option<i64>>,
    /// Bounded mode: the end offset of each partition seen at start.
    ends: Vec<Option<i64>>,
    ended: Vec<bool>,
    /// Each partition's own queue, so backpressure can read some partitions and leave the others in
    /// librdkafka's bounded prefetch queue (pausing would refetch, which some brokers do not do exactly).
    queues: Vec<Option<PartitionQueue<Context>>>,
    paused: Vec<bool>,
    /// Where the round-robin over partition queues continues.
    next_queue: usize,
    /// Partitions found already at their end when assigned, to report on the first poll.
    pending_ends: Vec<usize>,
    bounded: bool,
    worker: usize,
    peers: usize,
    active: Vec<usize>,
    discovered: Option<Receiver<BTreeMap<String, i32>>>,
    known: BTreeMap<String, i32>,
    stats_ends: Arc<Mutex<HashMap<(String, i32), i64>>>,
    metrics: Arc<Mutex<Option<SourceMetrics>>>,
    next_stats: Instant,
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// Commit positions to the configured group (for lag tools), next at this time.
    next_commit: Option<Instant>,
}

impl<T> KafkaReader<T> {
    /// Commits the committed positions (see [`PartitionMetrics::committed`](crate::PartitionMetrics)) to the
    /// lag-reporting group: with sinks registered, only positions whose records' output is written.
    fn commit_positions(&self, mode: CommitMode) {
        let committed: Vec<u64> = match self.metrics.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(metrics) => metrics.snapshot().iter().map(|m| m.committed).collect(),
            None => return,
        };
        let mut list = TopicPartitionList::new();
        for (i, (topic, p)) in self.partitions.iter().enumerate() {
            let Some(&offset) = committed.get(i).filter(|c| **c > 0) else { continue };
            if let Err(e) = list.add_partition_offset(topic, *p, Offset::Offset(offset as i64)) {
                tracing::warn!(topic, partition = p, "cannot list a position to commit: {e}");
            }
        }
        if list.count() > 0
            && let Err(e) = self.consumer.commit(&list, mode)
        {
            tracing::warn!("cannot commit positions for lag reporting: {e}");
        }
    }
}

impl<T: Clone + 'static> KafkaReader<T> {
    fn new(
        source: KafkaSource<T>,
        worker: usize,
        peers: usize,
        metrics: Arc<Mutex<Option<SourceMetrics>>>,
        resume: &SourceResume,
    ) -> Result<Self, SourceError> {
        let stats_ends = Arc::default();
        let mut config = source.config.client_config(CONSUMER_SETTINGS);
        if config.get("statistics.interval.ms").is_none() {
            config.set("statistics.interval.ms", "1000");
        }
        // librdkafka's prefetch limit (64 MiB of payload by default) applies to each partition queue the reader
        // splits off, and backpressure lets paused partitions' queues fill up to it: a smaller default keeps a
        // worker's memory bounded with many partitions. Set it to override.
        if config.get("queued.max.messages.kbytes").is_none() {
            config.set("queued.max.messages.kbytes", "16384");
        }
        if let Some(group) = &source.commit_group {
            config.set("group.id", group);
        }
        let consumer = config
            .create_with_context::<_, BaseConsumer<Context>>(Context { ends: Arc::clone(&stats_ends) })
            .map_err(|source_error| SourceError::Client { brokers: source.config.brokers().to_owned(), source: source_error })?;
        let consumer = Arc::new(consumer);
        let active: Vec<usize> = (0..peers)
            .filter(|w| source.partitions.iter().any(|(topic, count)| (0..*count).any(|p| owner(topic, p, peers) == *w)))
            .collect();
        let mut reader = KafkaReader {
            consumer,
            decoder: source.decoder.clone(),
            event_time: source.event_time.clone(),
            partitions: Vec::new(),
            index: HashMap::new(),
            restored: Vec::new(),
            starts: Vec::new(),
            positions: Vec::new(),
            known_ends: Vec::new(),
            ends: Vec::new(),
            ended: Vec::new(),
            queues: Vec::new(),
            paused: Vec::new(),
            next_queue: 0,
            pending_ends: Vec::new(),
            bounded: source.until_end,
            worker,
            peers,
            active,
            discovered: None,
            known: source.partitions.clone(),
            stats_ends,
            metrics,
            next_stats: Instant::now(),
            headers: Vec::new(),
            next_commit: source.commit_group.as_ref().map(|_| Instant::now() + COMMIT_EVERY),
        };
        let mine: Vec<(String, i32)> = source
            .partitions
            .iter()
            .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
            .filter(|(topic, p)| owner(topic, *p, peers) == worker)
            .collect();
        reader.add(&mine, &source.start, source.timeout, resume).map_err(|e| match e {
            AddError::Kafka(e) => SourceError::Client { brokers: source.config.brokers().to_owned(), source: e },
            AddError::Source(e) => e,
        })?;
        if !source.until_end && !reader.partitions.is_empty() {
            reader.discovered = Some(spawn_discovery(Arc::clone(&reader.consumer), source.topics.clone(), source.discovery_interval));
        }
        tracing::info!(worker, partitions = ?reader.partitions, bounded = source.until_end, "Kafka source assigned");
        Ok(reader)
    }

    /// Resolves start offsets for `new` partitions and assigns them. A partition the resumed commit knows is read
    /// from where the job first read it (a replay), after checking that its records are all still there.
    fn add(&mut self, new: &[(String, i32)], start: &StartFrom, timeout: Duration, resume: &SourceResume) -> Result<(), AddError> {
        if new.is_empty() {
            return Ok(());
        }
        let mut starts: Vec<Offset> = Vec::with_capacity(new.len());
        let mut restored: Vec<Option<u64>> = vec![None; new.len()];
        match start {
            StartFrom::Earliest => starts.resize(new.len(), Offset::Beginning),
            StartFrom::Latest => starts.resize(new.len(), Offset::End),
            StartFrom::Timestamp(ts) => {
                let mut query = TopicPartitionList::new();
                for (topic, p) in new {
                    query.add_partition_offset(topic, *p, Offset::Offset(*ts))?;
                }
                let found = self.consumer.offsets_for_times(query, timeout)?;
                for (topic, p) in new {
                    let offset = found.find_partition(topic, *p).map(|e| e.offset()).unwrap_or(Offset::End);
                    // No record at or after the timestamp: start at the end.
                    starts.push(match offset {
                        Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                        _ => Offset::End,
                    });
                }
            }
            StartFrom::Offsets(map) => {
                starts.extend(new.iter().map(|(t, p)| map.get(&(t.clone(), *p)).map_or(Offset::Beginning, |o| Offset::Offset(*o))))
            }
            StartFrom::Resume(positions) => {
                for (i, (topic, p)) in new.iter().enumerate() {
                    match positions.iter().find(|pos| &pos.topic == topic && pos.partition == *p) {
                        Some(pos) => {
                            starts.push(Offset::Offset(pos.offset));
                            restored[i] = Some(pos.watermark);
                        }
                        None => starts.push(Offset::Beginning),
                    }
                }
            }
        }
        // Everything that can fail comes first: the reader's per-partition state changes only once the new
        // partitions are assigned, so a failed attempt leaves it as it was and can be retried.
        let mut assignment = TopicPartitionList::new();
        let mut added = Vec::with_capacity(new.len());
        for (i, (topic, p)) in new.iter().enumerate() {
            let (low, high) = self.consumer.fetch_watermarks(topic, *p, timeout)?;
            let key = PartitionKey { source: "KafkaSource".into(), origin: topic.clone(), partition: *p };
            if let Some(stored) = resume.partition(&key) {
                if low > stored.start as i64 {
                    return Err(AddError::Source(SourceError::Retention {
                        topic: topic.clone(),
                        partition: *p,
                        start: stored.start,
                        log_start: low,
                    }));
                }
                if high < stored.position as i64 {
                    return Err(AddError::Source(SourceError::Truncated {
                        topic: topic.clone(),
                        partition: *p,
                        position: stored.position,
                        end: high,
                    }));
                }
                starts[i] = Offset::Offset(stored.start as i64);
            }
            let first = match starts[i] {
                Offset::Beginning => low,
                Offset::Offset(o) => o.max(low),
                _ => high,
            };
            if let Offset::Offset(o) = starts[i]
                && o < low
            {
                return Err(AddError::Source(SourceError::Retention {
                    topic: topic.clone(),
                    partition: *p,
                    start: o as u64,
                    log_start: low,
                }));
            }
            let done = self.bounded && first >= high;
            if !done {
                assignment.add_partition_offset(topic, *p, Offset::Offset(first))?;
            }
            added.push((topic, *p, first, high, done, restored[i]));
        }
        self.consumer.incremental_assign(&assignment)?;
        for (topic, p, first, high, done, restored) in added {
            let index = self.partitions.len();
            self.starts.push(first.max(0) as u64);
            self.positions.push(first.max(0) as u64);
            self.known_ends.push(Some(high));
            self.partitions.push((topic.clone(), p));
            self.index.insert((topic.clone(), p), index);
            self.restored.push(restored);
            self.ends.push(self.bounded.then_some(high));
            self.ended.push(done);
            self.paused.push(false);
            if done {
                self.pending_ends.push(index);
            }
            self.queues.push(if done { None } else { self.consumer.split_partition_queue(topic, p) });
        }
        Ok(())
    }

    fn discover_partitions(&mut self) {
        let Some(receiver) = &self.discovered else { return };
        let mut latest = None;
        while let Ok(counts) = receiver.try_recv() {
            latest = Some(counts);
        }
        let Some(counts) = latest else { return };
        let mut new = Vec::new();
        let mut grown = Vec::new();
        for (topic, count) in counts {
            let known = self.known.get(&topic).copied().unwrap_or(0);
            for p in known..count {
                if late_owner(&topic, p, &self.active, self.peers) == Some(self.worker) {
                    new.push((topic.clone(), p));
                }
            }
            if count > known {
                grown.push((topic, known, count));
            }
        }
        // New partitions are read from their beginning. Only once they are assigned do they count as known: a
        // failed attempt (the broker busy, say) is retried at the next discovery.
        match self.add(&new, &StartFrom::Earliest, Duration::from_secs(5), &SourceResume::default()) {
            Ok(()) => {
                for (topic, from, to) in grown {
                    tracing::info!(topic, from, to, "partitions added");
                    self.known.insert(topic, to);
                }
            }
            Err(AddError::Kafka(e)) => tracing::warn!("cannot assign new partitions {new:?} yet (retried at the next discovery): {e}"),
            Err(AddError::Source(e)) => tracing::warn!("cannot assign new partitions {new:?} yet (retried at the next discovery): {e}"),
        }
    }

    fn finish_partition(&mut self, partition: usize, out: &mut Vec<Polled<T>>) {
        self.ended[partition] = true;
        self.queues[partition] = None;
        out.push(Polled::End { partition });
        let (topic, p) = &self.partitions[partition];
        let mut list = TopicPartitionList::new();
        if list.add_partition(topic, *p).set_offset(Offset::Invalid).is_ok()
            && let Err(e) = self.consumer.incremental_unassign(&list)
        {
            tracing::warn!(topic, partition = p, "cannot unassign a finished partition: {e}");
        }
    }

    /// Decodes one record of `partition` into `out`; returns whether it was a record of the partition's range.
    fn accept(&mut self, partition: usize, message: BorrowedMessage<'_>, out: &mut Vec<Polled<T>>, arrivals: &mut Arrivals<'_>) -> bool {
        let offset = message.offset();
        if self.ended[partition] {
            return false;
        }
        self.headers.clear();
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                self.headers.push((header.key.to_owned(), header.value.map(<[u8]>::to_vec)));
            }
        }
        let headers: Vec<(&str, Option<&[u8]>)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        let record = KafkaRecord {
            topic: message.topic(),
            partition: message.partition(),
            offset,
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload(),
            headers: &headers,
        };
        let decoded = (self.decoder.0)(&record).and_then(|value| self.event_time.of(&record, &value).map(|et| (value, et)));
        out.push(
            arrivals.decoded(partition, offset as u64, decoded, || (record.key.map(<[u8]>::to_vec), record.value.map(<[u8]>::to_vec))),
        );
        self.positions[partition] = self.positions[partition].max(offset as u64 + 1);
        drop(headers);
        drop(message);
        if self.ends[partition].is_some_and(|end| offset + 1 >= end) {
            self.finish_partition(partition, out);
        }
        true
    }

    fn publish_ends(&mut self) {
        let now = Instant::now();
        if now < self.next_stats {
            return;
        }
        self.next_stats = now + Duration::from_secs(1);
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(metrics) = metrics.as_ref() else { return };
        let ends = self.stats_ends.lock().unwrap_or_else(|e| e.into_inner());
        for (i, key) in self.partitions.iter().enumerate() {
            if let Some(&end) = ends.get(key) {
                self.known_ends[i] = Some(end);
            }
            if let Some(end) = self.known_ends[i].or(self.ends[i]) {
                metrics.set_end(i, end.max(0) as u64);
            }
        }
    }
}

/// Why partitions could not be added.
enum AddError {
    Kafka(KafkaError),
    Source(SourceError),
}

impl From<KafkaError> for AddError {
    fn from(e: KafkaError) -> Self {
        AddError::Kafka(e)
    }
}

/// A consumer error: logged, unless it means the position is gone, which stops the job (reading on from
/// elsewhere would lose or repeat records).
fn consumer_error(e: &KafkaError) {
    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset) {
        crate::error::stop(SourceError::PositionGone { reason: e.to_string() });
    }
    tracing::warn!("Kafka consumer error: {e}");
}

fn spawn_discovery(consumer: Arc<BaseConsumer<Context>>, topics: Vec<String>, interval: Duration) -> Receiver<BTreeMap<String, i32>> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("tributary:kafka-discovery".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            let mut counts = BTreeMap::new();
            for topic in &topics {
                match partition_count(&consumer, topic, Duration::from_secs(5)) {
                    Ok(Some(count)) => {
                        counts.insert(topic.clone(), count);
                    }
                    Ok(None) => tracing::warn!(topic, "topic no longer listed by the brokers"),
                    Err(e) => tracing::warn!(topic, "partition discovery failed: {e}"),
                }
            }
            if sender.send(counts).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start partition discovery: {e}; new partitions will not be picked up");
    }
    receiver
}

impl<T: Clone + 'static> PartitionReader for KafkaReader<T> {
    type Item = T;

    fn partitions(&self) -> usize {
        self.partitions.len()
    }

    fn origin(&self, partition: usize) -> (&str, i32) {
        let (topic, p) = &self.partitions[partition];
        (topic, *p)
    }

    fn restored_watermark(&self, partition: usize) -> Option<u64> {
        self.restored[partition]
    }

    fn start_offset(&self, partition: usize) -> u64 {
        self.starts[partition]
    }

    fn backlog(&self, partition: usize) -> bool {
        !self.ended[partition] && self.known_ends[partition].is_some_and(|end| end > self.positions[partition] as i64)
    }

    fn discover(&mut self) {
        self.discover_partitions();
    }

    fn pause(&mut self, paused: &[bool]) {
        // A paused partition's records wait in its own queue; librdkafka stops fetching once that is full.
        for (i, flag) in self.paused.iter_mut().enumerate() {
            *flag = paused.get(i).copied().unwrap_or(false);
        }
    }

    fn poll(&mut self, budget: usize, out: &mut Vec<Polled<T>>, arrivals: &mut Arrivals<'_>) -> ReadStatus {
        if self.partitions.is_empty() {
            return ReadStatus::Finished;
        }
        for partition in std::mem::take(&mut self.pending_ends) {
            out.push(Polled::End { partition });
        }
        self.publish_ends();
        if let Some(at) = self.next_commit
            && Instant::now() >= at
        {
            self.commit_positions(CommitMode::Async);
            self.next_commit = Some(Instant::now() + COMMIT_EVERY);
        }
        let mut read = 0;
        // The main queue carries events (logs, statistics) and, for partitions not split off, records.
        let consumer = Arc::clone(&self.consumer);
        while read < budget {
            let Some(result) = consumer.poll(Duration::ZERO) else { break };
            match result {
                Ok(message) => {
                    let Some(&partition) = self.index.get(&(message.topic().to_owned(), message.partition())) else { continue };
                    if self.accept(partition, message, out, arrivals) {
                        read += 1;
                    }
                }
                Err(e) => consumer_error(&e),
            }
        }
        // Then the partitions' own queues, round robin, skipping paused ones.
        let n = self.queues.len();
        let mut empty_in_a_row = 0;
        while read < budget && empty_in_a_row < n && n > 0 {
            let partition = self.next_queue % n;
            self.next_queue = (partition + 1) % n;
            if self.paused[partition] || self.ended[partition] {
                empty_in_a_row += 1;
                continue;
            }
            let Some(queue) = self.queues[partition].take() else {
                empty_in_a_row += 1;
                continue;
            };
            match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    empty_in_a_row = 0;
                    if self.accept(partition, message, out, arrivals) {
                        read += 1;
                    }
                }
                Some(Err(e)) => {
                    empty_in_a_row += 1;
                    consumer_error(&e);
                }
                None => empty_in_a_row += 1,
            }
            if !self.ended[partition] {
                self.queues[partition] = Some(queue);
            }
        }
        if self.bounded && self.ended.iter().all(|e| *e) {
            ReadStatus::Finished
        } else if read == budget {
            ReadStatus::More
        } else {
            ReadStatus::Wait(Duration::from_millis(5))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_partitions_go_to_workers_that_hold_capabilities() {
        assert_eq!(late_owner("t", 3, &[0, 1, 2, 3], 4), Some(owner("t", 3, 4)));
        let active = [1, 3];
        for p in 0..16 {
            let w = late_owner("t", p, &active, 4).unwrap();
            assert!(active.contains(&w));
        }
        assert_eq!(late_owner("t", 0, &[], 4), None);
    }
}
