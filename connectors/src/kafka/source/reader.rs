//! The reader behind [`KafkaSource`](super::KafkaSource) on one worker: its partitions' state (one
//! [`Assigned`] each), assigning them at their start positions, and reading them in turn (each from its own queue,
//! so backpressure can hold some back).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::Receiver;
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

use super::assignment::{late_owner, owner, spawn_discovery};
use super::start::requested_starts;
use super::{KafkaSource, SourceError, StartFrom};
use crate::kafka::config::KafkaConfig;
use crate::kafka::record::{Decoder, EventTime, KafkaRecord};
use crate::source::{Arrivals, PartitionKey, PartitionReader, Polled, ReadStatus, SourceMetrics, SourceResume};

/// Routes librdkafka's logs into `tracing` and keeps the latest end offsets from its statistics.
struct Context {
    ends: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::config::log(level, facility, message);
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

/// A client for the source's metadata requests; it keeps the latest TLS or SASL failure, to name it.
pub(super) fn metadata_client(config: &KafkaConfig) -> Result<crate::kafka::admin::Reader, SourceError> {
    config
        .client_config(CONSUMER_SETTINGS)
        .create_with_context(crate::kafka::admin::AdminContext::default())
        .map_err(|source| SourceError::Client { brokers: config.brokers().to_owned(), source })
}

/// One partition a worker reads: where it is and how reading it goes.
struct Assigned {
    topic: String,
    partition: i32,
    /// The watermark a resumed commit gave it.
    restored: Option<u64>,
    /// The offset the job first read it from, resolved (a replay starts here).
    start: u64,
    /// The offset this run reads from: the start, or after a restored checkpoint.
    first: u64,
    /// The next offset to read, as far as records have come.
    position: u64,
    /// Its end as last seen in librdkafka's statistics (for backlog and lag).
    known_end: Option<i64>,
    /// Bounded mode: its end offset seen at start.
    end: Option<i64>,
    ended: bool,
    /// Its own queue, so backpressure can read some partitions and leave the others in librdkafka's bounded
    /// prefetch queue (pausing would refetch, which some brokers do not do exactly). `None` once ended.
    queue: Option<PartitionQueue<Context>>,
    paused: bool,
}

pub(super) struct KafkaReader<T> {
    consumer: Arc<BaseConsumer<Context>>,
    decoder: Decoder<T>,
    event_time: EventTime<T>,
    /// This worker's partitions, in the order they were added: the reader's partition index.
    partitions: Vec<Assigned>,
    index: HashMap<(String, i32), usize>,
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
        for (i, Assigned { topic, partition: p, .. }) in self.partitions.iter().enumerate() {
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
    pub(super) fn new(
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
        let assigned: Vec<(&str, i32)> = reader.partitions.iter().map(|a| (a.topic.as_str(), a.partition)).collect();
        tracing::info!(worker, partitions = ?assigned, bounded = source.until_end, "Kafka source assigned");
        Ok(reader)
    }

    /// Resolves start offsets for `new` partitions and assigns them. A partition the resumed commit knows is read
    /// from where the job first read it (a replay), after checking that its records are all still there.
    fn add(&mut self, new: &[(String, i32)], start: &StartFrom, timeout: Duration, resume: &SourceResume) -> Result<(), AddError> {
        if new.is_empty() {
            return Ok(());
        }
        let (mut starts, restored) = requested_starts(&self.consumer, new, start, timeout)?;
        // Everything that can fail comes first: the reader's per-partition state changes only once the new
        // partitions are assigned, so a failed attempt leaves it as it was and can be retried.
        let mut assignment = TopicPartitionList::new();
        let mut added = Vec::with_capacity(new.len());
        for (i, (topic, p)) in new.iter().enumerate() {
            let (low, high) = self.consumer.fetch_watermarks(topic, *p, timeout)?;
            let key = PartitionKey { source: "KafkaSource".into(), origin: topic.clone(), partition: *p };
            let mut recorded_start = None;
            if let Some(stored) = resume.partition(&key) {
                // A restored checkpoint reads only the records after it: those before may be gone.
                let needed = resume.checkpoint_point(&key).map_or(stored.start, |point| point.offset);
                if low > needed as i64 {
                    return Err(AddError::Source(SourceError::Retention {
                        topic: topic.clone(),
                        partition: *p,
                        start: needed,
                        log_start: low,
                    }));
                }
                recorded_start = Some(stored.start);
                if high < stored.position as i64 {
                    return Err(AddError::Source(SourceError::Truncated {
                        topic: topic.clone(),
                        partition: *p,
                        position: stored.position,
                        end: high,
                    }));
                }
                starts[i] = Offset::Offset(needed as i64);
            }
            let first = match starts[i] {
                Offset::Beginning => low,
                Offset::Offset(o) => o.max(low),
                _ => high,
            };
            if let Offset::Offset(o) = starts[i]
                && o < low
            {
                return Err(AddError::Source(SourceError::StartGone { topic: topic.clone(), partition: *p, requested: o, log_start: low }));
            }
            let done = self.bounded && first >= high;
            if !done {
                assignment.add_partition_offset(topic, *p, Offset::Offset(first))?;
            }
            added.push((topic, *p, first, high, done, restored[i], recorded_start));
        }
        self.consumer.incremental_assign(&assignment)?;
        for (topic, partition, first, high, done, restored, recorded_start) in added {
            let index = self.partitions.len();
            self.index.insert((topic.clone(), partition), index);
            if done {
                self.pending_ends.push(index);
            }
            self.partitions.push(Assigned {
                topic: topic.clone(),
                partition,
                restored,
                start: recorded_start.unwrap_or(first.max(0) as u64),
                first: first.max(0) as u64,
                position: first.max(0) as u64,
                known_end: Some(high),
                end: self.bounded.then_some(high),
                ended: done,
                queue: if done { None } else { self.consumer.split_partition_queue(topic, partition) },
                paused: false,
            });
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
        let assigned = &mut self.partitions[partition];
        assigned.ended = true;
        assigned.queue = None;
        out.push(Polled::End { partition });
        let (topic, p) = (&assigned.topic, &assigned.partition);
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
        if self.partitions[partition].ended {
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
        let assigned = &mut self.partitions[partition];
        assigned.position = assigned.position.max(offset as u64 + 1);
        let at_end = assigned.end.is_some_and(|end| offset + 1 >= end);
        drop(headers);
        drop(message);
        if at_end {
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
        for (i, assigned) in self.partitions.iter_mut().enumerate() {
            if let Some(&end) = ends.get(&(assigned.topic.clone(), assigned.partition)) {
                assigned.known_end = Some(end);
            }
            if let Some(end) = assigned.known_end.or(assigned.end) {
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

impl<T: Clone + 'static> PartitionReader for KafkaReader<T> {
    type Item = T;

    fn partitions(&self) -> usize {
        self.partitions.len()
    }

    fn origin(&self, partition: usize) -> (&str, i32) {
        let assigned = &self.partitions[partition];
        (&assigned.topic, assigned.partition)
    }

    fn restored_watermark(&self, partition: usize) -> Option<u64> {
        self.partitions[partition].restored
    }

    fn start_offset(&self, partition: usize) -> u64 {
        self.partitions[partition].start
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn first_offset(&self, partition: usize) -> u64 {
        self.partitions[partition].first
    }

    fn backlog(&self, partition: usize) -> bool {
        let assigned = &self.partitions[partition];
        !assigned.ended && assigned.known_end.is_some_and(|end| end > assigned.position as i64)
    }

    fn discover(&mut self) {
        self.discover_partitions();
    }

    fn pause(&mut self, paused: &[bool]) {
        // A paused partition's records wait in its own queue; librdkafka stops fetching once that is full.
        for (i, assigned) in self.partitions.iter_mut().enumerate() {
            assigned.paused = paused.get(i).copied().unwrap_or(false);
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
        let n = self.partitions.len();
        let mut empty_in_a_row = 0;
        while read < budget && empty_in_a_row < n && n > 0 {
            let partition = self.next_queue % n;
            self.next_queue = (partition + 1) % n;
            let assigned = &mut self.partitions[partition];
            if assigned.paused || assigned.ended {
                empty_in_a_row += 1;
                continue;
            }
            let Some(queue) = assigned.queue.take() else {
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
            if !self.partitions[partition].ended {
                self.partitions[partition].queue = Some(queue);
            }
        }
        if self.bounded && self.partitions.iter().all(|a| a.ended) {
            ReadStatus::Finished
        } else if read == budget {
            ReadStatus::More
        } else {
            ReadStatus::Wait(Duration::from_millis(5))
        }
    }
}
