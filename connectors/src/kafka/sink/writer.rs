//! One worker's writer for the output partitions routed to it: consolidates each completed time, reconciles
//! with what an earlier run wrote after the last commit, hands records to an idempotent producer, and reports a
//! partition's position to the job once Kafka has acknowledged everything before it.
//!
//! The producer never blocks the worker on acknowledgements: each written time's capability is held until its
//! records are acknowledged, then its positions go out at that time and the capability is released. Offsets
//! are counted, not taken from delivery reports (some brokers report none for a retried batch): the partition's
//! end when the writer started plus the records acknowledged since, which the idempotent producer with the
//! gapless guarantee makes exact; a delivery report with another offset means another writer, and stops the job.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use timely::dataflow::operators::Capability;

use super::format::{embed, envelope};
use super::reconcile::{Out, Suffix};
use super::{Delivery, Shared, SinkError, SinkFormat};
use crate::error::stop;
use crate::job::SinkPosition;
use crate::kafka::admin::{self, REQUEST_TIMEOUT};
use crate::source::DrainMode;

/// An update on its way to the writer: `(partition, key bytes, value bytes)`.
pub(super) type Encoded = (i32, Vec<u8>, Vec<u8>);

/// How long the final flush may wait beyond the producer's own delivery timeout.
const FLUSH_MARGIN: Duration = Duration::from_secs(30);

struct Part {
    /// The partition's end when this writer started: what it writes comes after.
    start: i64,
    /// Records handed to the producer so far.
    sent: u64,
    /// The time the commit's position for the partition is consistent with.
    base: Option<u64>,
    suffix: Suffix,
}

struct Pending {
    capability: Capability<u64>,
    /// Per partition, how many records must be acknowledged.
    required: Vec<(i32, u64)>,
    /// The positions to report once they are.
    reports: Vec<SinkPosition>,
}

/// Delivery reports, per partition: records acknowledged, and the first failure.
#[derive(Default)]
struct Deliveries {
    failure: Option<String>,
    acked: HashMap<i32, u64>,
    starts: HashMap<i32, i64>,
    other_writer: Option<String>,
}

pub(super) struct SinkContext {
    topic: String,
    deliveries: Mutex<Deliveries>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::config::log(level, facility, message);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(message) if message.topic() == self.topic => {
                let partition = message.partition();
                let acked = deliveries.acked.get(&partition).copied().unwrap_or(0);
                let expected = deliveries.starts.get(&partition).copied().unwrap_or(0) + acked as i64;
                // A retried batch may come back without an offset (-1); any offset given must be ours.
                if message.offset() >= 0 && message.offset() != expected && deliveries.other_writer.is_none() {
                    deliveries.other_writer = Some(format!(
                        "{}/{partition}: a record landed at offset {} where this sink expected {expected}",
                        message.topic(),
                        message.offset()
                    ));
                }
                deliveries.acked.insert(partition, acked + 1);
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

/// Crash points for tests, from `TRIBUTARY_FAILPOINT`: `sink-after-records=N` aborts the process once this
/// writer has handed the N-th record (and those before it) to the producer, in the middle of a batch;
/// `sink-before-progress=N` aborts after the writer's N-th acknowledged batch, before its position is reported.
/// Counted per writer (one per worker and sink). `worker=W` among them aims the crash at global worker `W`
/// alone, so at the one process that runs it (`W / workers per process`); without it every writer crashes.
/// Only with the `failpoints` feature (the workspace's tests and examples enable it); without it the variable
/// is ignored.
#[derive(Default)]
struct Failpoints {
    after_records: Option<u64>,
    before_progress: Option<u64>,
}

impl Failpoints {
    #[cfg(not(feature = "failpoints"))]
    fn from_env(_worker: usize) -> Self {
        Failpoints::default()
    }

    #[cfg(feature = "failpoints")]
    fn from_env(worker: usize) -> Self {
        Self::parse(&std::env::var("TRIBUTARY_FAILPOINT").unwrap_or_default(), worker)
    }

    /// The crash points of `spec` that apply to global worker `worker`.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn parse(spec: &str, worker: usize) -> Self {
        let value = |name: &str| spec.split(',').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok());
        if value("worker").is_some_and(|aimed| aimed != worker as u64) {
            return Failpoints::default();
        }
        Failpoints { after_records: value("sink-after-records"), before_progress: value("sink-before-progress") }
    }
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    name: String,
    producer: BaseProducer<SinkContext>,
    parts: BTreeMap<i32, Part>,
    pending: VecDeque<Pending>,
    /// The earliest horizon of a drain that abandons times (nothing at or after it is written).
    abandon_from: Option<u64>,
    /// The latest time written.
    last_time: u64,
    failpoints: Failpoints,
    sent: u64,
    /// `tributary_sink_records_total` of this sink and topic.
    sent_metric: prometheus_client::metrics::counter::Counter,
    acked_batches: u64,
    retractions_ignored: u64,
    /// Records to write, reused.
    out: Vec<Out>,
    /// The pre-image of the key whose records are in `out` (upsert, exactly once): see `reconcile::PRE_IMAGE`.
    pre_image: Option<Option<Vec<u8>>>,
    pub(super) finished: bool,
}

impl Writer {
    /// A writer for the partitions `p` with `p % peers == index`; reads what was written after the last commit.
    pub(super) fn new(shared: Arc<Shared>, name: String, index: usize, peers: usize) -> Self {
        let mut owned: Vec<(&str, &str)> = vec![("enable.idempotence", "true"), ("acks", "all")];
        if shared.delivery == Delivery::ExactlyOnce {
            // A batch that fails for good must stop the producer, not leave a hole with later batches stored.
            owned.push(("enable.gapless.guarantee", "true"));
        }
        let context = SinkContext { topic: shared.topic.clone(), deliveries: Mutex::default() };
        let producer: BaseProducer<SinkContext> =
            shared.config.client_config(&owned).create_with_context(context).unwrap_or_else(|source| {
                stop(SinkError::Producer { sink: name.clone(), brokers: shared.config.brokers().to_owned(), source: Box::new(source) })
            });
        let reader = admin::reader(&shared.config).unwrap_or_else(|e| stop(SinkError::Admin(e)));
        let mut parts = BTreeMap::new();
        for partition in (0..shared.partitions).filter(|p| *p as usize % peers == index) {
            let (_, end) = reader.fetch_watermarks(&shared.topic, partition, REQUEST_TIMEOUT).unwrap_or_else(|source| {
                stop(SinkError::ReadEnd { sink: name.clone(), topic: shared.topic.clone(), partition, source: Box::new(source) })
            });
            let mut base = None;
            let mut suffix = Suffix::default();
            if shared.delivery == Delivery::ExactlyOnce {
                let position = &shared.positions[partition as usize];
                base = position.base;
                if end < position.offset {
                    stop(SinkError::Truncated {
                        topic: shared.topic.clone(),
                        partition,
                        end,
                        recorded: position.offset,
                        commit_log: shared.commit_log.clone(),
                    });
                }
                suffix = Suffix::read(&reader, &shared.topic, partition, (position.offset, end), shared.format, base, shared.pre_images)
                    .unwrap_or_else(|reason| {
                        stop(SinkError::Reconcile { sink: name.clone(), topic: shared.topic.clone(), partition, reason })
                    });
                if suffix.records > 0 {
                    tracing::info!(
                        topic = shared.topic,
                        partition,
                        records = suffix.records,
                        from = position.offset,
                        "reconciling output written after the last commit"
                    );
                }
            }
            producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).starts.insert(partition, end);
            parts.insert(partition, Part { start: end, sent: 0, base, suffix });
        }
        let labels = crate::metrics::labels(&[("sink", &name), ("topic", &shared.topic)]);
        let sent_metric = crate::metrics::metrics().sink_records.get_or_create(&labels).clone();
        Writer {
            shared,
            name,
            producer,
            parts,
            pending: VecDeque::new(),
            abandon_from: None,
            last_time: 0,
            failpoints: Failpoints::from_env(index),
            sent: 0,
            sent_metric,
            acked_batches: 0,
            retractions_ignored: 0,
            out: Vec::new(),
            pre_image: None,
            finished: false,
        }
    }

    /// A source drained: at or after `horizon` times are provisional (written) or abandoned (not written).
    pub(super) fn drain(&mut self, horizon: u64, mode: DrainMode) {
        if mode == DrainMode::Abandon {
            self.abandon_from = Some(self.abandon_from.map_or(horizon, |h| h.min(horizon)));
        }
    }

    /// Consolidates and writes the updates of one completed time, holding `capability` until they are
    /// acknowledged.
    pub(super) fn write(&mut self, time: u64, capability: Capability<u64>, mut updates: Vec<(Encoded, isize)>) {
        if self.abandon_from.is_some_and(|h| time >= h) {
            return;
        }
        self.last_time = self.last_time.max(time);
        updates.sort_unstable();
        let mut consolidated: Vec<(Encoded, isize)> = Vec::with_capacity(updates.len());
        for (record, diff) in updates {
            match consolidated.last_mut() {
                Some((last, total)) if *last == record => *total += diff,
                _ => consolidated.push((record, diff)),
            }
        }
        consolidated.retain(|(_, diff)| *diff != 0);
        let mut touched = BTreeSet::new();
        let mut i = 0;
        while i < consolidated.len() {
            // One key's updates (sorted by partition, then key).
            let (partition, key) = (consolidated[i].0.0, &consolidated[i].0.1);
            let mut j = i;
            while j < consolidated.len() && consolidated[j].0.0 == partition && &consolidated[j].0.1 == key {
                j += 1;
            }
            let group: Vec<(&[u8], isize)> = consolidated[i..j].iter().map(|((_, _, v), d)| (v.as_slice(), *d)).collect();
            self.key(time, partition, key, &group);
            self.flush_out(partition);
            touched.insert(partition);
            i = j;
        }
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        for partition in parts {
            let Some(part) = self.parts.get_mut(&partition) else { continue };
            if !part.suffix.is_resolved() {
                part.suffix.resolve_through(time, part.base, &mut self.out);
                touched.insert(partition);
            }
            self.flush_out(partition);
        }
        // Serve delivery reports once per time, not per record (a full queue is served in `send`).
        self.producer.poll(Duration::ZERO);
        self.hold(capability, time, touched);
    }

    /// All times before `frontier` are complete: resolves suffix keys whose time has passed, writing at
    /// `capability` (held at the frontier).
    pub(super) fn advance(&mut self, frontier: u64, capability: &Capability<u64>) {
        let Some(done) = frontier.checked_sub(1) else { return };
        if self.abandon_from.is_some_and(|h| frontier >= h) {
            return;
        }
        let mut touched = BTreeSet::new();
        let parts: Vec<i32> = self.parts.iter().filter(|(_, p)| !p.suffix.is_resolved()).map(|(p, _)| *p).collect();
        for partition in parts {
            let Some(part) = self.parts.get_mut(&partition) else { continue };
            part.suffix.resolve_through(done, part.base, &mut self.out);
            let changed = !self.out.is_empty() || part.suffix.is_resolved();
            self.flush_out(partition);
            if changed {
                touched.insert(partition);
            }
        }
        if !touched.is_empty() {
            self.hold(capability.clone(), done, touched);
        }
    }

    /// One key's consolidated updates at `time` in `partition`.
    fn key(&mut self, time: u64, partition: i32, key: &[u8], updates: &[(&[u8], isize)]) {
        let format = self.shared.format;
        #[allow(clippy::panic, reason = "the writers' exchange routes partition p to writer p % peers, the one that owns it")]
        let Some(part) = self.parts.get_mut(&partition) else {
            panic!("Kafka sink {}: partition {partition} reached a writer that does not own it", self.name)
        };
        let after_base = part.base.is_none_or(|b| time > b);
        if part.suffix.holds(key) {
            match format {
                SinkFormat::Upsert => part.suffix.upsert(time, part.base, key, updates, &mut self.out),
                SinkFormat::Changelog => part.suffix.changelog(time, part.base, key, updates, &mut self.out),
                SinkFormat::Append => {}
            }
            return;
        }
        if !after_base {
            return;
        }
        match format {
            SinkFormat::Upsert => {
                let added: Vec<&[u8]> = updates.iter().filter(|(_, d)| *d > 0).map(|(v, _)| *v).collect();
                if self.shared.delivery == Delivery::ExactlyOnce && self.shared.pre_images {
                    let removed: Vec<&[u8]> = updates.iter().filter(|(_, d)| *d < 0).map(|(v, _)| *v).collect();
                    // A key that had no value carries no header (most records: tansu stores headers unindexed).
                    self.pre_image = match removed.as_slice() {
                        [] => None,
                        [only] => Some(Some(only.to_vec())),
                        _ => Some(None),
                    };
                }
                if added.is_empty() {
                    self.out.push((key.to_vec(), None, time));
                }
                self.out.extend(added.into_iter().map(|v| (key.to_vec(), Some(v.to_vec()), time)));
            }
            SinkFormat::Changelog => {
                for (value, diff) in updates {
                    self.out.push((key.to_vec(), Some(envelope(&embed(value), *diff, time)), time));
                }
            }
            SinkFormat::Append => {
                for (value, diff) in updates {
                    if *diff < 0 {
                        self.retractions_ignored += 1;
                    }
                    for _ in 0..(*diff).max(0) {
                        if !part.suffix.appended(key, value) {
                            self.out.push((key.to_vec(), Some(value.to_vec()), time));
                        }
                    }
                }
            }
        }
    }

    /// Sends the records collected for `partition`.
    fn flush_out(&mut self, partition: i32) {
        let out = std::mem::take(&mut self.out);
        let pre_image = self.pre_image.take();
        for (key, value, time) in &out {
            self.send(partition, key, value.as_deref(), *time, pre_image.as_ref());
        }
        self.out = out;
        self.out.clear();
    }

    /// Holds `capability` until the records sent so far to `touched` are acknowledged; then reports the
    /// positions of those of them that are consistent (every suffix key resolved) as of `time`.
    fn hold(&mut self, capability: Capability<u64>, time: u64, touched: BTreeSet<i32>) {
        if self.shared.delivery == Delivery::AtLeastOnce {
            self.check_failures();
            return;
        }
        let mut required = Vec::new();
        let mut reports = Vec::new();
        for partition in touched {
            let part = &self.parts[&partition];
            required.push((partition, part.sent));
            if part.suffix.is_resolved() {
                reports.push(SinkPosition {
                    topic: self.shared.topic.clone(),
                    partition,
                    offset: part.start + part.sent as i64,
                    base: Some(time),
                });
            }
        }
        if !required.is_empty() {
            self.pending.push_back(Pending { capability, required, reports });
        }
    }

    /// Hands one record to the producer.
    fn send(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>, time: u64, pre_image: Option<&Option<Vec<u8>>>) {
        let mut record =
            BaseRecord::<[u8], [u8]>::to(&self.shared.topic).partition(partition).key(key).timestamp(time.min(i64::MAX as u64) as i64);
        if let Some(pre) = pre_image {
            let header = rdkafka::message::Header { key: super::reconcile::PRE_IMAGE, value: pre.as_deref() };
            record = record.headers(rdkafka::message::OwnedHeaders::new().insert(header));
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                    self.check_failures();
                }
                Err((source, _)) => stop(SinkError::Write {
                    sink: self.name.clone(),
                    topic: self.shared.topic.clone(),
                    partition,
                    source: Box::new(source),
                }),
            }
        }
        if let Some(part) = self.parts.get_mut(&partition) {
            part.sent += 1;
        }
        self.sent += 1;
        self.sent_metric.inc();
        if self.failpoints.after_records == Some(self.sent) {
            // Crash in the middle of a batch whose first records the broker has stored.
            let _ = self.producer.flush(Duration::from_secs(30));
            tracing::error!("failpoint sink-after-records={}: aborting", self.sent);
            std::process::abort();
        }
    }

    /// Serves delivery reports; hands back the positions of every held time whose records are all
    /// acknowledged, releasing its capability.
    pub(super) fn acknowledged(&mut self, mut report: impl FnMut(&Capability<u64>, Vec<SinkPosition>)) {
        self.producer.poll(Duration::ZERO);
        self.check_failures();
        if self.pending.is_empty() {
            return;
        }
        let acked = self.producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).acked.clone();
        while let Some(front) = self.pending.front() {
            if !front.required.iter().all(|(p, n)| acked.get(p).copied().unwrap_or(0) >= *n) {
                break;
            }
            let Some(done) = self.pending.pop_front() else { break };
            self.acked_batches += 1;
            if self.failpoints.before_progress == Some(self.acked_batches) {
                tracing::error!("failpoint sink-before-progress={}: aborting", self.acked_batches);
                std::process::abort();
            }
            if !done.reports.is_empty() {
                report(&done.capability, done.reports);
            }
        }
    }

    /// Whether times are held for acknowledgements.
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty() || (self.shared.delivery == Delivery::AtLeastOnce && self.producer.in_flight_count() > 0)
    }

    /// The input is done: resolves what is left of the suffix (unless the job stopped), and waits until every
    /// record is acknowledged.
    pub(super) fn finish(&mut self) {
        if self.abandon_from.is_none() {
            let parts: Vec<i32> = self.parts.keys().copied().collect();
            for partition in parts {
                let Some(part) = self.parts.get_mut(&partition) else { continue };
                part.suffix.resolve_all(self.last_time, &mut self.out);
                self.flush_out(partition);
            }
        }
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

    /// Waits until every record handed to the producer is acknowledged (or failed).
    fn flush(&self) {
        let timeout = self.shared.delivery_timeout + FLUSH_MARGIN;
        let deadline = Instant::now() + timeout;
        // A zero-timeout flush sends what is queued now instead of waiting out `linger.ms`.
        let _ = self.producer.flush(Duration::ZERO);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                stop(SinkError::NotAcknowledged { sink: self.name.clone(), topic: self.shared.topic.clone(), timeout });
            }
            self.producer.poll(Duration::from_millis(1));
        }
        self.check_failures();
    }

    /// Stops the job if a record was not delivered, or another writer wrote to the topic.
    fn check_failures(&self) {
        let mut deliveries = self.producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(failure) = deliveries.failure.take() {
            let fatal =
                self.producer.client().fatal_error().map(|(code, reason)| format!(" (fatal: {code:?}: {reason})")).unwrap_or_default();
            stop(SinkError::NotDelivered { sink: self.name.clone(), failure: failure.to_string(), fatal });
        }
        if let Some(other) = deliveries.other_writer.take() {
            stop(SinkError::OtherWriter { sink: self.name.clone(), detail: other.to_string() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Failpoints;

    #[test]
    fn a_failpoint_aimed_at_a_worker_applies_to_that_worker_alone() {
        let everywhere = Failpoints::parse("sink-after-records=5", 3);
        assert_eq!((everywhere.after_records, everywhere.before_progress), (Some(5), None));
        let aimed = Failpoints::parse("sink-before-progress=2,worker=1", 1);
        assert_eq!((aimed.after_records, aimed.before_progress), (None, Some(2)));
        let elsewhere = Failpoints::parse("sink-after-records=5,worker=1", 0);
        assert_eq!((elsewhere.after_records, elsewhere.before_progress), (None, None));
    }
}
