//! The Kafka sink: a collection's consolidated changes, one completed time after another, exactly once.
//!
//! [`SinkKafka::sink_kafka`] writes, once the frontier has passed a time, the updates of that time consolidated
//! (a key whose changes cancel writes nothing), in time order, each record stamped with its time. Records go to
//! the partition Kafka's default partitioner picks for their key ([`partition_for`]), each output partition
//! written by one worker. Formats:
//! - [`SinkFormat::Upsert`]: key -> new value; a key whose values were all retracted gets a tombstone. Read back as
//!   a table (a compacted topic), it is the collection. Meant for collections with one value per key.
//! - [`SinkFormat::Changelog`]: every change as `{"value": ..., "diff": d, "time": t}` under its key.
//! - [`SinkFormat::Append`]: each addition as is (dead letters, events); retractions are not written.
//!
//! # Exactly once without transactions
//! A sink belongs to a [`Job`]: the job's commits record, per output partition, the offset up to which the topic
//! holds the output of a completed time (see [`crate::job`]). The sink writes with an idempotent producer and
//! reports a partition's position once Kafka has acknowledged it. On a restart each writer reads what its
//! partitions hold after the committed offset (what an interrupted or provisional run wrote) and reconciles
//! with it ([`reconcile`]): nothing is written twice, and what a provisional run wrote wrongly is corrected.
//! Times that a stopped job left unfinished are not written at all; times a bounded run left unfinished
//! (some partition had not caught up in event time) are written as provisional results and corrected later.
//! The protocol, its assumptions and the failure table are in `docs/exactly-once.md`.
//!
//! Records too large for the topic are not sent: they come back on [`Written::refused`] as dead letters, so one
//! bad record never stops (or crash-loops) the job.
//!
//! [`Delivery::AtLeastOnce`] skips reconciliation: records are handed to the producer and the time counts as
//! done; a restart writes everything again. Failed deliveries stop the job in both modes.

mod format;
mod reconcile;

/// Encoders for [`KafkaSink::with_encoders`] beyond JSON: text as its UTF-8 bytes, any `Display` value as its
/// text (`42` for a count). All are deterministic, which exactly-once relies on.
///
/// ```
/// use tributary_connectors::kafka::encode;
/// assert_eq!(encode::utf8(&"word".to_string()), b"word");
/// assert_eq!(encode::display(&42i64), b"42");
/// ```
pub mod encode {
    /// A string's UTF-8 bytes.
    pub fn utf8<T: AsRef<str> + ?Sized>(text: &T) -> Vec<u8> {
        text.as_ref().as_bytes().to_vec()
    }

    /// A value's `Display` text.
    pub fn display<T: std::fmt::Display + ?Sized>(value: &T) -> Vec<u8> {
        value.to_string().into_bytes()
    }
}
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::{AsCollection, VecCollection};
use rdkafka::error::KafkaError;
use serde::Serialize;
use timely::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{ProbeHandle, Stream};

use self::writer::{Encoded, Writer};
use super::admin::{self, AdminError};
use super::commit_log::CommitLog;
use super::config::KafkaConfig;
use super::partitioner::partition_for;
use crate::job::{Job, SinkPosition};
use crate::source::Control;
use crate::{DeadLetter, Reason};

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
    /// Every change at least once; faster: no waiting for acknowledgements per time, no reconciliation.
    AtLeastOnce,
}

/// Why a sink could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A topic could not be created, checked or read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The job's commit is past the end of an output partition.
    #[error(
        "output partition {topic}/{partition} ends at offset {end}, before the job's last commit (offset {recorded}, in the commit log `{commit_log}`): the topic was recreated or truncated; write to a new topic with a new commit log"
    )]
    Truncated {
        /// The output topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its end now.
        end: i64,
        /// The end the commit recorded.
        recorded: i64,
        /// The commit log.
        commit_log: String,
    },
    /// The producer could not be created.
    #[error("Kafka sink {sink}: cannot create a producer for {brokers}: {source}; check --brokers and the client settings")]
    Producer {
        /// The sink's name.
        sink: String,
        /// The brokers.
        brokers: String,
        /// rdkafka's error.
        source: Box<KafkaError>,
    },
    /// The end of an output partition could not be read when the sink started.
    #[error(
        "Kafka sink {sink}: cannot read the end of {topic}/{partition}: {source}; check that the brokers are reachable, then restart the job"
    )]
    ReadEnd {
        /// The sink's name.
        sink: String,
        /// The output topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// rdkafka's error.
        source: Box<KafkaError>,
    },
    /// What was written after the job's last commit could not be read back to reconcile it.
    #[error(
        "Kafka sink {sink}: cannot read what was written to {topic}/{partition} after the last commit: {reason}; check that the brokers are reachable, then restart the job"
    )]
    Reconcile {
        /// The sink's name.
        sink: String,
        /// The output topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What failed.
        reason: String,
    },
    /// The producer refused a record outright.
    #[error("Kafka sink {sink}: cannot write to {topic}/{partition}: {source}")]
    Write {
        /// The sink's name.
        sink: String,
        /// The output topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// rdkafka's error.
        source: Box<KafkaError>,
    },
    /// Records were not acknowledged within the delivery timeout and the flush margin.
    #[error(
        "Kafka sink {sink}: writing to {topic} was not acknowledged within {timeout:?}; check the brokers, then restart the job (exactly-once output resumes where it ends)"
    )]
    NotAcknowledged {
        /// The sink's name.
        sink: String,
        /// The output topic.
        topic: String,
        /// How long the sink waited.
        timeout: Duration,
    },
    /// A record was not delivered: the brokers were unreachable past `message.timeout.ms`, or refused it.
    #[error(
        "Kafka sink {sink}: a record was not delivered ({failure}){fatal}; the brokers were unreachable for longer than message.timeout.ms, or refused the record: restart the job once they are back (exactly-once output resumes where it ends; at least once, it is written again)"
    )]
    NotDelivered {
        /// The sink's name.
        sink: String,
        /// The delivery report's error.
        failure: String,
        /// The producer's fatal error, if it has one (` (fatal: ...)`), else empty.
        fatal: String,
    },
    /// A delivery report showed an offset the sink did not expect: another client writes to the topic.
    #[error(
        "Kafka sink {sink}: {detail}: something else writes to this topic, or the broker misreported a retried batch's offsets; an exactly-once output topic must have this job as its only writer; restart the job (what was written since the last commit is reconciled)"
    )]
    OtherWriter {
        /// The sink's name.
        sink: String,
        /// What the delivery report showed.
        detail: String,
    },
    /// A key or value could not be encoded (e.g. a map with non-string keys as JSON).
    #[error("the Kafka sink cannot write this {what} as JSON: {reason}; give the sink an encoder for it (KafkaSink::with_encoders)")]
    Encode {
        /// Key or value.
        what: String,
        /// The encoder's error.
        reason: String,
    },
}

/// librdkafka's default `message.timeout.ms`.
const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// What a record costs beyond its key and value (batch framing, the changelog envelope), for the size check.
const RECORD_OVERHEAD: usize = 512;

type Encode<T> = Arc<dyn Fn(&T) -> Vec<u8> + Send + Sync>;

/// Settings of a [`KafkaSink`], before [`open`](KafkaSinkBuilder::open) prepares the topic.
pub struct KafkaSinkBuilder<K, V> {
    config: KafkaConfig,
    topic: String,
    partitions: i32,
    replication: i32,
    format: SinkFormat,
    delivery: Option<Delivery>,
    key: Encode<K>,
    value: Encode<V>,
}

struct Shared {
    config: KafkaConfig,
    topic: String,
    partitions: i32,
    format: SinkFormat,
    delivery: Delivery,
    /// Per partition, the job's committed position.
    positions: Vec<SinkPosition>,
    /// The job's commit log topic, for messages.
    commit_log: String,
    /// Records larger than this (key + value) are refused.
    max_record_bytes: usize,
    /// How long the producer retries a record before it fails.
    delivery_timeout: Duration,
    /// Upsert records carry their key's pre-image (the job takes checkpoints; see `reconcile::PRE_IMAGE`).
    pre_images: bool,
}

/// An opened Kafka sink for a collection of `(K, V)`: the topic exists, the job's position in it is known. Cheap
/// to clone; build it once in `main` and hand it to every worker.
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
        KafkaSink::with_encoders(config, topic, |k: &K| format::to_json(k, "key"), |v: &V| format::to_json(v, "value"))
    }
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
            delivery: None,
            key: Arc::new(key),
            value: Arc::new(value),
        }
    }

    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The largest key plus value the sink writes; larger records are refused (see [`Written::refused`]).
    pub fn max_record_bytes(&self) -> usize {
        self.shared.max_record_bytes
    }
}

impl<K, V> KafkaSinkBuilder<K, V> {
    /// Partitions of the output topic (default 1); a topic that exists with another count is an error.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Replication factor for a topic the sink creates (default 1).
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// The output format (default [`SinkFormat::Upsert`]).
    pub fn format(mut self, format: SinkFormat) -> Self {
        self.format = format;
        self
    }

    /// The delivery guarantee (default: the commit log's, see [`CommitLog::with_delivery`], which is
    /// [`Delivery::ExactlyOnce`] unless set).
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Creates the output topic if missing, checks its partition count and the job's commit against it, and
    /// learns the largest record it takes. Call it once before the dataflow starts, in every process, with the
    /// job's commit log.
    pub fn open(self, log: &CommitLog) -> Result<KafkaSink<K, V>, SinkError> {
        let delivery = self.delivery.unwrap_or(log.delivery());
        admin::ensure_topic(&self.config, &self.topic, self.partitions, self.replication, &[])?;
        let commit = log.latest();
        let positions: Vec<SinkPosition> = (0..self.partitions)
            .map(|p| {
                commit.and_then(|c| c.sink(&self.topic, p)).cloned().unwrap_or(SinkPosition {
                    topic: self.topic.clone(),
                    partition: p,
                    offset: 0,
                    base: None,
                })
            })
            .collect();
        if delivery == Delivery::ExactlyOnce {
            let reader = admin::reader(&self.config)?;
            let ends = admin::partition_ends(&self.config, &reader, &self.topic, self.partitions)?;
            for (position, end) in positions.iter().zip(ends) {
                if end < position.offset {
                    return Err(SinkError::Truncated {
                        topic: self.topic.clone(),
                        partition: position.partition,
                        end,
                        recorded: position.offset,
                        commit_log: log.topic().to_owned(),
                    });
                }
            }
        }
        tracing::debug!(topic = self.topic, "sink: topic checked");
        let client_limit = self.config.setting("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(1_000_000usize);
        let topic_limit = admin::max_message_bytes(&self.config, &self.topic).unwrap_or(1_048_588);
        let max_record_bytes = client_limit.min(topic_limit).saturating_sub(RECORD_OVERHEAD);
        tracing::debug!(topic = self.topic, max_record_bytes, "sink: record size limit");
        let delivery_timeout = self
            .config
            .setting("message.timeout.ms")
            .or(self.config.setting("delivery.timeout.ms"))
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_DELIVERY_TIMEOUT, Duration::from_millis);
        let shared = Shared {
            config: self.config,
            topic: self.topic,
            partitions: self.partitions,
            format: self.format,
            delivery,
            positions,
            commit_log: log.topic().to_owned(),
            max_record_bytes,
            delivery_timeout,
            pre_images: log.checkpoint_settings().is_some(),
        };
        Ok(KafkaSink { shared: Arc::new(shared), key: self.key, value: self.value })
    }
}

/// What a sink returns into the dataflow.
pub struct Written<'scope> {
    /// Passes a time once its output is written (acknowledged, for exactly-once).
    pub probe: ProbeHandle<u64>,
    /// Records the topic would refuse (larger than it takes), as dead letters at their times: send them to a
    /// dead-letter sink.
    pub refused: Stream<'scope, u64, Vec<DeadLetter>>,
}

/// Writes a collection to Kafka.
pub trait SinkKafka<'scope, K, V> {
    /// Writes the collection's consolidated changes to the sink's topic, time by time (see the module docs), as
    /// part of `job`.
    ///
    /// # Panics
    ///
    /// If `job` is already finished ([`Job::finish`](crate::Job::finish)): a sink added then would not gate the
    /// commits. Add every sink before finishing the job.
    ///
    /// ```no_run
    /// use differential_dataflow::input::Input;
    /// use tributary_connectors::kafka::{CommitLog, KafkaConfig, KafkaSink, SinkKafka};
    ///
    /// let config = KafkaConfig::new("127.0.0.1:9092")?;
    /// let log = CommitLog::open(config.clone(), "word-counts.commits")?;
    /// let sink = KafkaSink::<String, i64>::json(config, "word-counts").partitions(4).open(&log)?;
    /// timely::execute_directly(move |worker| {
    ///     let probe = worker.dataflow::<u64, _, _>(|scope| {
    ///         let job = log.job(scope);
    ///         let words = scope.new_collection_from(vec!["a".to_string(), "b".to_string(), "a".to_string()]).1;
    ///         let counts = words.count().map(|(word, n)| (word, n as i64));
    ///         counts.sink_kafka("WordCounts", &sink, &job).probe
    ///     });
    ///     worker.step_while(|| !probe.done());
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn sink_kafka(self, name: &str, sink: &KafkaSink<K, V>, job: &Job<'scope>) -> Written<'scope>;
}

impl<'scope, K, V> SinkKafka<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn sink_kafka(self, name: &str, sink: &KafkaSink<K, V>, job: &Job<'scope>) -> Written<'scope> {
        let (encoded, refused) = encode(self.inner, sink, name);
        let shared = Arc::clone(&sink.shared);
        let name = name.to_owned();
        let scope = job.scope();
        let by_partition = Exchange::new(|((partition, _, _), _, _): &(Encoded, u64, isize)| *partition as u64);
        let progress = encoded.binary_frontier::<Vec<Control>, CapacityContainerBuilder<Vec<SinkPosition>>, _, _, _, _>(
            job.controls(),
            by_partition,
            Pipeline,
            &name.clone(),
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let mut writer = Writer::new(shared, name, scope.index(), scope.peers());
                // Held at the input frontier, for writes that no input time carries (reconciliation).
                let mut frontier_capability = Some(capability);
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<(Encoded, isize)>)> = BTreeMap::new();
                move |(input, input_frontier), (controls, control_frontier), output| {
                    input.for_each(|cap, data| {
                        for (record, time, diff) in data.drain(..) {
                            pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push((record, diff));
                        }
                    });
                    controls.for_each(|_cap, messages| {
                        for message in messages.drain(..) {
                            if let Control::Drain { horizon, mode } = message {
                                writer.drain(horizon, mode);
                            }
                        }
                    });
                    let complete = |time: &u64| !input_frontier.less_equal(time) && !control_frontier.less_equal(time);
                    while let Some(entry) = pending.first_entry() {
                        if !complete(entry.key()) {
                            break;
                        }
                        let (time, (capability, updates)) = entry.remove_entry();
                        writer.write(time, capability, updates);
                    }
                    let frontier =
                        input_frontier.frontier().first().copied().into_iter().chain(control_frontier.frontier().first().copied()).min();
                    match (frontier, frontier_capability.as_mut()) {
                        (Some(frontier), Some(held)) => {
                            if frontier > *held.time() {
                                held.downgrade(&frontier);
                            }
                            writer.advance(frontier, held);
                        }
                        (None, Some(_)) if !writer.finished => writer.finish(),
                        _ => {}
                    }
                    writer.acknowledged(|capability, reports| output.session(capability).give_iterator(reports.into_iter()));
                    if frontier.is_none() && writer.finished {
                        frontier_capability = None;
                    }
                    if writer.waiting() {
                        activator.activate_after(Duration::from_millis(1));
                    }
                }
            },
        );
        let (probe, progress) = progress.probe();
        job.add_sink(progress, probe.clone());
        job.route_refused(refused.clone());
        Written { probe, refused }
    }
}

/// Encodes each update, routes it to its partition, and splits off the records too large for the topic (as dead
/// letters at the update's time, so the same on every replay).
fn encode<'scope, K, V>(
    updates: Stream<'scope, u64, Vec<((K, V), u64, isize)>>,
    sink: &KafkaSink<K, V>,
    name: &str,
) -> (Stream<'scope, u64, Vec<(Encoded, u64, isize)>>, Stream<'scope, u64, Vec<DeadLetter>>)
where
    K: ExchangeData,
    V: ExchangeData,
{
    let (key, value) = (Arc::clone(&sink.key), Arc::clone(&sink.value));
    let (partitions, limit, topic) = (sink.shared.partitions, sink.shared.max_record_bytes, sink.shared.topic.clone());
    let mut builder = OperatorBuilder::new(format!("{name}Encode"), updates.scope());
    let mut input = builder.new_input(updates, Pipeline);
    let (ok_output, ok) = builder.new_output::<Vec<(Encoded, u64, isize)>>();
    let (refused_output, refused) = builder.new_output::<Vec<DeadLetter>>();
    let mut ok_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(ok_output);
    let mut refused_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(refused_output);
    builder.build(move |_| {
        move |_frontiers| {
            let mut ok_handle = ok_output.activate();
            let mut refused_handle = refused_output.activate();
            input.for_each(|cap, data| {
                let mut ok_session = ok_handle.session(&cap);
                for ((k, v), time, diff) in data.drain(..) {
                    let key = key(&k);
                    let value = value(&v);
                    let partition = partition_for(&key, partitions);
                    if key.len() + value.len() <= limit {
                        ok_session.give(((partition, key, value), time, diff));
                    } else if diff > 0 {
                        let reason = Reason::Refused {
                            reason: format!(
                                "a record of {} bytes is larger than the {limit} bytes the topic takes (max.message.bytes)",
                                key.len() + value.len()
                            ),
                        };
                        let letter =
                            DeadLetter { source: topic.clone(), partition, offset: time, reason, key: Some(key), payload: Some(value) };
                        refused_handle.session(&cap.delayed(&time, 1)).give(letter);
                    }
                }
            });
        }
    });
    (ok, refused)
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
    fn sink_dead_letters(self, name: &str, sink: &KafkaSink<String, DeadLetter>, job: &Job<'scope>) -> Written<'scope>;
}

impl<'scope> SinkDeadLetters<'scope> for Stream<'scope, u64, Vec<DeadLetter>> {
    fn sink_dead_letters(self, name: &str, sink: &KafkaSink<String, DeadLetter>, job: &Job<'scope>) -> Written<'scope> {
        // A dead letter keeps as much of its record's bytes as the topic takes: it is never refused itself.
        let limit = sink.shared.max_record_bytes.saturating_sub(1024);
        let fitted = KafkaSink {
            shared: Arc::clone(&sink.shared),
            key: Arc::clone(&sink.key),
            value: Arc::new(move |letter: &DeadLetter| letter.to_json_within(limit)),
        };
        self.unary::<CapacityContainerBuilder<Vec<((String, DeadLetter), u64, isize)>>, _, _, _>(Pipeline, "DeadLetterUpdates", |_, _| {
            |input, output| {
                input.for_each(|cap, data| {
                    let time = cap.least().copied().unwrap_or_default();
                    output.session(&cap).give_iterator(data.drain(..).map(|letter| ((letter.origin(), letter), time, 1)));
                })
            }
        })
        .as_collection()
        .sink_kafka(name, &fitted, job)
    }
}
