//! The Kafka sink: a collection's consolidated changes, one completed time after another, exactly once.
//!
//! [`SinkKafka::sink_kafka`] writes, once the frontier has passed a time, the updates of that time consolidated
//! (a key whose changes cancel writes nothing), in time order. Records go to the partition Kafka's default
//! partitioner picks for their key ([`partition_for`]), each output partition written by one worker. Formats:
//! - [`SinkFormat::Upsert`]: key -> new value; a key whose values were all retracted gets a tombstone. Read back as
//!   a table (a compacted topic), it is the collection. Meant for collections with one value per key.
//! - [`SinkFormat::Changelog`]: every change as `{"value": ..., "diff": d, "time": t}` under its key.
//! - [`SinkFormat::Append`]: each addition as is (dead letters, events); retractions are not written.
//!
//! # Exactly once without transactions
//! Output is deterministic: sources give every record the same time on every replay, operators emit the same
//! updates at the same times, and the sink writes each time's updates in a fixed order (sorted by partition,
//! key and value). With [`Delivery::ExactlyOnce`] (the default) the sink waits for each batch to be acknowledged
//! (idempotent producer, `acks=all`), then records per partition `{"time": T, "offset": O}` in a compacted
//! progress topic: everything up to time `T` is in, and the partition's output ended at offset `O`. On start,
//! [`KafkaSinkBuilder::open`] reads the progress and each partition's end `E`, and the replayed output skips
//! every record up to time `T` and then the next `E - O` records: exactly what the previous run wrote after its
//! last progress record. A lost progress record only makes the skip longer, never wrong. The protocol, its
//! assumptions (one writer per output topic, a replay that regenerates the output from the same input) and the
//! failure cases are in `docs/exactly-once.md`.
//!
//! [`Delivery::AtLeastOnce`] skips all of that: records are handed to the producer and the time counts as done;
//! a restart writes everything again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::{AsCollection, VecCollection};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use serde::Serialize;
use timely::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{ProbeHandle, Stream};

use super::admin::{self, AdminError};
use super::config::KafkaConfig;
use super::partitioner::partition_for;
use crate::DeadLetter;

/// How changes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// Key -> latest value; a tombstone when a key's values are all retracted.
    #[default]
    Upsert,
    /// Every change as `{"value": <value>, "diff": <d>, "time": <t>}` (the value embedded as JSON if it is JSON,
    /// else as a string).
    Changelog,
    /// Each addition as is; retractions are not written (counted in a warning).
    Append,
}

/// What a reader of the output topic may see after a crash and restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Every change exactly once (see the module docs).
    #[default]
    ExactlyOnce,
    /// Every change at least once; faster: no waiting for acknowledgements per batch, no progress records.
    AtLeastOnce,
}

/// Why a sink could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A topic could not be created, checked or read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The recorded progress is past the end of an output partition.
    #[error(
        "output partition {topic}/{partition} ends at offset {end}, before the sink's recorded progress (offset {recorded}): the topic was recreated or truncated; delete the progress topic `{progress_topic}` or write to a new topic"
    )]
    Truncated {
        /// The output topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its end now.
        end: i64,
        /// The end the progress recorded.
        recorded: i64,
        /// The progress topic.
        progress_topic: String,
    },
}

/// How long the sink waits for acknowledgements before it gives up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

type Encode<T> = Arc<dyn Fn(&T) -> Vec<u8> + Send + Sync>;

/// Settings of a [`KafkaSink`], before [`open`](KafkaSinkBuilder::open) prepares the topics.
pub struct KafkaSinkBuilder<K, V> {
    config: KafkaConfig,
    topic: String,
    partitions: i32,
    replication: i32,
    format: SinkFormat,
    delivery: Delivery,
    progress_topic: Option<String>,
    key: Encode<K>,
    value: Encode<V>,
}

/// Where a partition's replayed output resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resume {
    /// Records at times up to this one are in the topic.
    done_through: Option<u64>,
    /// Then this many more.
    skip: u64,
}

struct Shared {
    config: KafkaConfig,
    topic: String,
    partitions: i32,
    format: SinkFormat,
    delivery: Delivery,
    progress_topic: String,
    resume: Vec<Resume>,
}

/// An opened Kafka sink for a collection of `(K, V)`: topics exist, progress is read. Cheap to clone; build it
/// once in `main` and hand it to every worker.
pub struct KafkaSink<K, V> {
    shared: Arc<Shared>,
    key: Encode<K>,
    value: Encode<V>,
}

impl<K, V> Clone for KafkaSink<K, V> {
    fn clone(&self) -> Self {
        KafkaSink { shared: Arc::clone(&self.shared), key: Arc::clone(&self.key), value: Arc::clone(&self.value) }
    }
}

impl<K: Serialize, V: Serialize> KafkaSink<K, V> {
    /// A sink writing keys and values as JSON to `topic`.
    pub fn json(config: KafkaConfig, topic: impl Into<String>) -> KafkaSinkBuilder<K, V> {
        KafkaSink::with_encoders(config, topic, |k: &K| to_json(k, "key"), |v: &V| to_json(v, "value"))
    }
}

fn to_json<T: Serialize>(x: &T, what: &str) -> Vec<u8> {
    // Plain data always serializes; only maps with non-string keys fail, a programming error.
    serde_json::to_vec(x).unwrap_or_else(|e| panic!("the Kafka sink cannot write this {what} as JSON: {e}"))
}

impl<K, V> KafkaSink<K, V> {
    /// A sink writing keys and values with the given encoders. Encodings must be deterministic (the same value
    /// always gives the same bytes), which exactly-once relies on.
    pub fn with_encoders(
        config: KafkaConfig,
        topic: impl Into<String>,
        key: impl Fn(&K) -> Vec<u8> + Send + Sync + 'static,
        value: impl Fn(&V) -> Vec<u8> + Send + Sync + 'static,
    ) -> KafkaSinkBuilder<K, V> {
        KafkaSinkBuilder {
            config,
            topic: topic.into(),
            partitions: 1,
            replication: 1,
            format: SinkFormat::Upsert,
            delivery: Delivery::ExactlyOnce,
            progress_topic: None,
            key: Arc::new(key),
            value: Arc::new(value),
        }
    }

    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The progress topic (exactly-once only).
    pub fn progress_topic(&self) -> &str {
        &self.shared.progress_topic
    }
}

impl<K, V> KafkaSinkBuilder<K, V> {
    /// Partitions of the output topic (default 1); a topic that exists with another count is an error.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Replication factor for topics the sink creates (default 1).
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// The output format (default [`SinkFormat::Upsert`]).
    pub fn format(mut self, format: SinkFormat) -> Self {
        self.format = format;
        self
    }

    /// The delivery guarantee (default [`Delivery::ExactlyOnce`]).
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// The compacted topic holding the sink's progress (default `<topic>.tributary-progress`).
    pub fn progress_topic(mut self, topic: impl Into<String>) -> Self {
        self.progress_topic = Some(topic.into());
        self
    }

    /// Creates the output topic (and the progress topic) if missing, checks partition counts, and reads where a
    /// previous run's output ends. Call it once before the dataflow starts, in every process.
    pub fn open(self) -> Result<KafkaSink<K, V>, SinkError> {
        let progress_topic = self.progress_topic.unwrap_or_else(|| format!("{}.tributary-progress", self.topic));
        admin::ensure_topic(&self.config, &self.topic, self.partitions, self.replication, &[])?;
        let mut resume = vec![Resume::default(); self.partitions as usize];
        if self.delivery == Delivery::ExactlyOnce {
            admin::ensure_topic(&self.config, &progress_topic, 1, self.replication, &[("cleanup.policy", "compact")])?;
            let progress = admin::read_table(&self.config, &progress_topic)?;
            let reader = admin::reader(&self.config)?;
            let ends = admin::partition_ends(&self.config, &reader, &self.topic, self.partitions)?;
            for (partition, end) in ends.into_iter().enumerate() {
                let recorded = progress
                    .get(progress_key(&self.topic, partition as i32).as_bytes())
                    .and_then(|v| serde_json::from_slice::<Progress>(v).ok());
                let (done_through, from) = match recorded {
                    Some(p) => (Some(p.time), p.offset),
                    None => (None, 0),
                };
                if end < from {
                    return Err(SinkError::Truncated {
                        topic: self.topic.clone(),
                        partition: partition as i32,
                        end,
                        recorded: from,
                        progress_topic: progress_topic.clone(),
                    });
                }
                resume[partition] = Resume { done_through, skip: (end - from) as u64 };
                if end > 0 {
                    tracing::info!(topic = self.topic, partition, end, ?done_through, skip = end - from, "resuming output");
                }
            }
        }
        let shared = Shared {
            config: self.config,
            topic: self.topic,
            partitions: self.partitions,
            format: self.format,
            delivery: self.delivery,
            progress_topic,
            resume,
        };
        Ok(KafkaSink { shared: Arc::new(shared), key: self.key, value: self.value })
    }
}

/// A progress record's value.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Progress {
    time: u64,
    offset: i64,
}

fn progress_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Writes a collection to Kafka.
pub trait SinkKafka<'scope, K, V> {
    /// Writes the collection's consolidated changes to the sink's topic, time by time (see the module docs). The
    /// returned probe passes a time once its output is written (acknowledged, for exactly-once).
    ///
    /// ```no_run
    /// use differential_dataflow::input::Input;
    /// use tributary_connectors::kafka::{KafkaConfig, KafkaSink, SinkKafka};
    ///
    /// let sink = KafkaSink::<String, i64>::json(KafkaConfig::new("127.0.0.1:9092")?, "word-counts").partitions(4).open()?;
    /// timely::execute_directly(move |worker| {
    ///     let probe = worker.dataflow::<u64, _, _>(|scope| {
    ///         let words = scope.new_collection_from(vec!["a".to_string(), "b".to_string(), "a".to_string()]).1;
    ///         let counts = words.count().map(|(word, n)| (word, n as i64));
    ///         counts.sink_kafka("WordCounts", &sink)
    ///     });
    ///     worker.step_while(|| !probe.done());
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn sink_kafka(self, name: &str, sink: &KafkaSink<K, V>) -> ProbeHandle<u64>;
}

/// An update on its way to the writer: `(partition, key bytes, value bytes)`.
type Encoded = (i32, Vec<u8>, Vec<u8>);

impl<'scope, K, V> SinkKafka<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn sink_kafka(self, name: &str, sink: &KafkaSink<K, V>) -> ProbeHandle<u64> {
        let (key, value, partitions) = (Arc::clone(&sink.key), Arc::clone(&sink.value), sink.shared.partitions);
        let encoded = self.inner.map(move |((k, v), time, diff)| {
            let key = key(&k);
            ((partition_for(&key, partitions), key, value(&v)), time, diff)
        });
        let shared = Arc::clone(&sink.shared);
        let name = name.to_owned();
        let by_partition = Exchange::new(|((partition, _, _), _, _): &(Encoded, u64, isize)| *partition as u64);
        encoded
            .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(by_partition, &name.clone(), move |_capability, info| {
                let mut writer = Writer::new(shared, name, info.global_id);
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<(Encoded, isize)>)> = BTreeMap::new();
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        for (record, time, diff) in data.drain(..) {
                            pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push((record, diff));
                        }
                    });
                    let mut wrote = false;
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (time, (capability, updates)) = entry.remove_entry();
                        writer.write(time, updates);
                        // Hold the time until the batch is acknowledged: the probe means "written".
                        writer.held.push(capability);
                        wrote = true;
                    }
                    if wrote || (frontier.is_empty() && !writer.finished) {
                        writer.complete(frontier.is_empty());
                    }
                }
            })
            .probe()
            .0
    }
}

impl KafkaSink<String, DeadLetter> {
    /// A sink for dead letters: each one appended under its origin (`source/partition/offset`) as the JSON of
    /// [`DeadLetter::to_json`] (reason, origin, original bytes).
    pub fn dead_letters(config: KafkaConfig, topic: impl Into<String>) -> KafkaSinkBuilder<String, DeadLetter> {
        KafkaSink::with_encoders(config, topic, |origin: &String| origin.as_bytes().to_vec(), DeadLetter::to_json)
            .format(SinkFormat::Append)
    }
}

/// Writes a stream of dead letters to Kafka.
pub trait SinkDeadLetters<'scope> {
    /// Appends each dead letter to the sink's topic, exactly once like [`SinkKafka::sink_kafka`].
    fn sink_dead_letters(self, name: &str, sink: &KafkaSink<String, DeadLetter>) -> ProbeHandle<u64>;
}

impl<'scope> SinkDeadLetters<'scope> for Stream<'scope, u64, Vec<DeadLetter>> {
    fn sink_dead_letters(self, name: &str, sink: &KafkaSink<String, DeadLetter>) -> ProbeHandle<u64> {
        self.unary::<CapacityContainerBuilder<Vec<((String, DeadLetter), u64, isize)>>, _, _, _>(Pipeline, "DeadLetterUpdates", |_, _| {
            |input, output| {
                input.for_each(|cap, data| {
                    let time = cap.least().copied().unwrap_or_default();
                    output.session(&cap).give_iterator(data.drain(..).map(|letter| ((letter.origin(), letter), time, 1)));
                })
            }
        })
        .as_collection()
        .sink_kafka(name, sink)
    }
}

/// Delivery reports: the first failure, and the next offset per output partition.
#[derive(Default)]
struct Deliveries {
    failure: Option<String>,
    next_offsets: HashMap<i32, i64>,
}

struct SinkContext {
    topic: String,
    deliveries: Mutex<Deliveries>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        super::config::log(level, facility, message);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(message) if message.topic() == self.topic => {
                let next = deliveries.next_offsets.entry(message.partition()).or_default();
                *next = (*next).max(message.offset() + 1);
            }
            Ok(_) => {}
            Err((error, message)) => {
                if deliveries.failure.is_none() {
                    deliveries.failure = Some(format!("{}/{}: {error}", message.topic(), message.partition()));
                }
            }
        }
    }
}

/// Crash points for tests, from `TRIBUTARY_FAILPOINT`: `sink-after-records=N` aborts the process once the N-th
/// record (and those before it) are stored, in the middle of a batch; `sink-before-progress=N` aborts after the
/// N-th acknowledged batch, before its progress record.
#[derive(Default)]
struct Failpoints {
    after_records: Option<u64>,
    before_progress: Option<u64>,
}

impl Failpoints {
    fn from_env() -> Self {
        let spec = std::env::var("TRIBUTARY_FAILPOINT").unwrap_or_default();
        let value = |name: &str| spec.split(',').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok());
        Failpoints { after_records: value("sink-after-records"), before_progress: value("sink-before-progress") }
    }
}

/// One worker's writer, for the output partitions routed to it.
struct Writer {
    shared: Arc<Shared>,
    name: String,
    producer: BaseProducer<SinkContext>,
    resume: HashMap<i32, Resume>,
    /// Partitions written since the last progress, with the latest time written to each.
    dirty: BTreeMap<i32, u64>,
    /// Capabilities for times written but not yet acknowledged.
    held: Vec<Capability<u64>>,
    failpoints: Failpoints,
    /// Whether the input is done and everything is flushed.
    finished: bool,
    sent: u64,
    batches: u64,
    retractions_ignored: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>, name: String, operator: usize) -> Self {
        let owned: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];
        let context = SinkContext { topic: shared.topic.clone(), deliveries: Mutex::default() };
        let producer = shared.config.client_config(owned).create_with_context(context).unwrap_or_else(|e| {
            panic!("Kafka sink {name} (operator {operator}): cannot create a producer for {}: {e}", shared.config.brokers())
        });
        Writer {
            shared,
            name,
            producer,
            resume: HashMap::new(),
            dirty: BTreeMap::new(),
            held: Vec::new(),
            failpoints: Failpoints::from_env(),
            finished: false,
            sent: 0,
            batches: 0,
            retractions_ignored: 0,
        }
    }

    /// Consolidates and writes the updates of one completed time.
    fn write(&mut self, time: u64, mut updates: Vec<(Encoded, isize)>) {
        updates.sort_unstable();
        let mut consolidated: Vec<(Encoded, isize)> = Vec::with_capacity(updates.len());
        for (record, diff) in updates {
            match consolidated.last_mut() {
                Some((last, total)) if *last == record => *total += diff,
                _ => consolidated.push((record, diff)),
            }
        }
        consolidated.retain(|(_, diff)| *diff != 0);
        let mut i = 0;
        while i < consolidated.len() {
            // One key's updates (sorted by partition, then key).
            let ((partition, key), mut j) = ((consolidated[i].0.0, &consolidated[i].0.1), i);
            while j < consolidated.len() && consolidated[j].0.0 == partition && &consolidated[j].0.1 == key {
                j += 1;
            }
            let group = &consolidated[i..j];
            let key = key.clone();
            match self.shared.format {
                SinkFormat::Upsert => {
                    let added: Vec<&Vec<u8>> = group.iter().filter(|(_, d)| *d > 0).map(|((_, _, v), _)| v).collect();
                    if added.is_empty() {
                        self.send(time, partition, &key, None);
                    }
                    for value in added {
                        self.send(time, partition, &key, Some(value));
                    }
                }
                SinkFormat::Changelog => {
                    for ((_, _, value), diff) in group {
                        let envelope = changelog_envelope(value, *diff, time);
                        self.send(time, partition, &key, Some(&envelope));
                    }
                }
                SinkFormat::Append => {
                    for ((_, _, value), diff) in group {
                        if *diff < 0 {
                            self.retractions_ignored += 1;
                        }
                        for _ in 0..(*diff).max(0) {
                            self.send(time, partition, &key, Some(value));
                        }
                    }
                }
            }
            i = j;
        }
        // Serve delivery reports once per time, not per record (a full queue is served in `send`).
        self.producer.poll(Duration::ZERO);
    }

    /// Hands one record to the producer, unless the previous run already wrote it.
    fn send(&mut self, time: u64, partition: i32, key: &[u8], value: Option<&Vec<u8>>) {
        let resume =
            self.resume.entry(partition).or_insert_with(|| self.shared.resume.get(partition as usize).copied().unwrap_or_default());
        if resume.done_through.is_some_and(|done| time <= done) {
            return;
        }
        if resume.skip > 0 {
            resume.skip -= 1;
            return;
        }
        let mut record = BaseRecord::to(&self.shared.topic).partition(partition).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("Kafka sink {}: cannot write to {}/{partition}: {error}", self.name, self.shared.topic),
            }
        }
        self.dirty.insert(partition, time);
        self.sent += 1;
        if self.failpoints.after_records == Some(self.sent) {
            // Crash in the middle of a batch whose first records the broker has stored.
            let _ = self.producer.flush(Duration::from_secs(30));
            tracing::error!("failpoint sink-after-records={}: aborting", self.sent);
            std::process::abort();
        }
    }

    /// Makes the written times count: with exactly-once, waits for the acknowledgements and records progress;
    /// at least once, only when the input is done (or the producer's queue is full).
    fn complete(&mut self, finished: bool) {
        if self.shared.delivery == Delivery::AtLeastOnce {
            self.producer.poll(Duration::ZERO);
            if finished {
                self.flush();
                self.finished = true;
            }
            self.held.clear();
            return;
        }
        if !self.dirty.is_empty() {
            self.flush();
            self.batches += 1;
            if self.failpoints.before_progress == Some(self.batches) {
                tracing::error!("failpoint sink-before-progress={}: aborting", self.batches);
                std::process::abort();
            }
            let next_offsets = self.producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).next_offsets.clone();
            for (partition, time) in std::mem::take(&mut self.dirty) {
                let Some(&offset) = next_offsets.get(&partition) else { continue };
                let key = progress_key(&self.shared.topic, partition);
                let value = serde_json::to_vec(&Progress { time, offset }).expect("progress serializes");
                let record = BaseRecord::to(&self.shared.progress_topic).partition(0).key(&key).payload(&value);
                if let Err((error, _)) = self.producer.send(record) {
                    // Progress only shortens the next start's skip; losing one is safe.
                    tracing::warn!(sink = self.name, "cannot record progress: {error}");
                }
            }
            self.producer.poll(Duration::ZERO);
        }
        if finished {
            self.flush();
            self.finished = true;
            if self.retractions_ignored > 0 {
                tracing::warn!(
                    sink = self.name,
                    "{} retraction(s) not written: the append format writes additions only",
                    self.retractions_ignored
                );
            }
        }
        self.held.clear();
    }

    /// Waits until every record handed to the producer is acknowledged (or failed).
    fn flush(&self) {
        // rdkafka's `flush` polls in steps of up to 100 ms and often sleeps the whole step; polling here returns
        // as soon as the last delivery report is in.
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        // A zero-timeout flush sends what is queued now instead of waiting out `linger.ms`.
        let _ = self.producer.flush(Duration::ZERO);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                panic!(
                    "Kafka sink {}: writing to {} was not acknowledged within {FLUSH_TIMEOUT:?}; check the brokers, then restart the job (exactly-once output resumes where it ends)",
                    self.name, self.shared.topic
                );
            }
            self.producer.poll(Duration::from_millis(1));
        }
        if let Some(failure) = self.producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).failure.take() {
            panic!(
                "Kafka sink {}: a record was not delivered ({failure}); restart the job (exactly-once output resumes where it ends)",
                self.name
            );
        }
    }
}

/// `{"value": <value>, "diff": d, "time": t}`, the value embedded as JSON when it is JSON.
fn changelog_envelope(value: &[u8], diff: isize, time: u64) -> Vec<u8> {
    let embedded = match serde_json::from_slice::<&serde_json::value::RawValue>(value) {
        Ok(raw) => raw.get().to_owned(),
        Err(_) => serde_json::to_string(&String::from_utf8_lossy(value)).expect("a string serializes"),
    };
    format!("{{\"value\":{embedded},\"diff\":{diff},\"time\":{time}}}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_envelopes_embed_json_and_quote_the_rest() {
        assert_eq!(changelog_envelope(b"{\"n\":1}", -1, 7), b"{\"value\":{\"n\":1},\"diff\":-1,\"time\":7}".to_vec());
        assert_eq!(changelog_envelope(b"plain \"text\"", 2, 0), b"{\"value\":\"plain \\\"text\\\"\",\"diff\":2,\"time\":0}".to_vec());
    }
}
