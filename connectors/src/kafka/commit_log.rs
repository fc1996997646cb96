//! The job's commit log on Kafka: a compacted one-partition topic with one record per commit, key `commit`.
//!
//! Opening reads only its tail (the last few records), so a restart takes the same time however old the job is.
//! Commits are written by the job's coordinator with an idempotent producer (`acks=all`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::admin::{self, AdminError, REQUEST_TIMEOUT};
use super::config::KafkaConfig;
use super::sink::Delivery;
use crate::job::Commit;

/// The key of every commit record.
const KEY: &[u8] = b"commit";
/// How many records from the end opening reads, at most, to find the latest readable commit.
const TAIL: i64 = 16;
/// The largest commit record (per-partition state of many partitions).
const MAX_COMMIT_BYTES: &str = "16777216";

/// Why a commit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitLogError {
    /// The topic could not be created or read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The tail of the log holds records that are not commits.
    #[error(
        "the commit log `{topic}` ends with records that are not Tributary commits ({reason}); it must be written by this job only: give the job its own commit log topic"
    )]
    Foreign {
        /// The topic.
        topic: String,
        /// What was wrong with the last record.
        reason: String,
    },
}

/// A job's commit log, opened: its latest commit is read. Cheap to clone; open it once in `main`, in every
/// process, before the cluster starts (every process must resume from the same commit), and build each worker's
/// [`Job`](crate::job::Job) from it with [`CommitLog::job`].
#[derive(Clone)]
pub struct CommitLog {
    inner: Arc<Inner>,
    interval: Duration,
    delivery: Delivery,
    checkpoints: Option<Arc<CheckpointSettings>>,
}

/// Where a job keeps its checkpoints, how often it takes them, and the one a restart restores.
#[derive(Debug)]
pub(crate) struct CheckpointSettings {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) interval: Duration,
    /// The newest checkpoint the latest commit names whose every part is there and verified.
    pub(crate) restored: Option<(crate::job::CheckpointRef, tributary_operators::checkpoint::Restored)>,
}

struct Inner {
    config: KafkaConfig,
    topic: String,
    latest: Option<(i64, Commit)>,
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let latest = self.inner.latest.as_ref().map(|(offset, c)| (offset, c.run, c.time));
        f.debug_struct("CommitLog").field("topic", &self.inner.topic).field("latest (offset, run, time)", &latest).finish()
    }
}

impl CommitLog {
    /// How often a running job commits by default.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

    /// Opens the commit log in `topic` (created, compacted, if missing) and reads the latest commit.
    pub fn open(config: KafkaConfig, topic: impl Into<String>) -> Result<CommitLog, CommitLogError> {
        let topic = topic.into();
        admin::ensure_topic(&config, &topic, 1, 1, &[("cleanup.policy", "compact"), ("max.message.bytes", MAX_COMMIT_BYTES)])?;
        let latest = read_latest(&config, &topic)?;
        match &latest {
            Some((offset, commit)) => {
                tracing::info!(topic, offset, run = commit.run, time = commit.time, "resuming from the job's last commit")
            }
            None => tracing::info!(topic, "no commit yet: the job starts from the beginning"),
        }
        Ok(CommitLog {
            inner: Arc::new(Inner { config, topic, latest }),
            interval: Self::DEFAULT_INTERVAL,
            delivery: Delivery::ExactlyOnce,
            checkpoints: None,
        })
    }

    /// Takes checkpoints of the job's state into `dir` every `interval`, and restores the newest usable one the
    /// latest commit names: every worker's part is read and verified here (call it in `main`, in every process,
    /// before the cluster starts). A part that is missing or corrupt falls back to the previous checkpoint, and
    /// finally to a replay from the start, with a warning saying why.
    pub fn with_checkpoints(mut self, dir: impl Into<std::path::PathBuf>, interval: Duration) -> Self {
        let dir = dir.into();
        let mut restored = None;
        let refs = self.latest().map(|c| c.checkpoints.clone()).unwrap_or_default();
        for (i, checkpoint) in refs.iter().enumerate() {
            let next = if i + 1 < refs.len() { "the previous checkpoint" } else { "a replay of the input from the start" };
            match checkpoint.load(&dir) {
                Ok(state) => {
                    tracing::info!(
                        time = checkpoint.time,
                        generation = checkpoint.generation,
                        workers = checkpoint.parts.len(),
                        "restoring the checkpoint: sources resume after its time"
                    );
                    restored = Some((checkpoint.clone(), state));
                    crate::metrics::metrics()
                        .checkpoint_restores
                        .get_or_create(&crate::metrics::labels(&[("commit_log", self.topic())]))
                        .inc();
                    break;
                }
                Err(e) => tracing::warn!(time = checkpoint.time, "the checkpoint cannot be restored ({e}): falling back to {next}"),
            }
        }
        self.checkpoints = Some(Arc::new(CheckpointSettings { dir, interval, restored }));
        self
    }

    /// Where checkpoints go, if the job takes them.
    pub(crate) fn checkpoint_settings(&self) -> Option<&Arc<CheckpointSettings>> {
        self.checkpoints.as_ref()
    }

    /// How often the running job writes a commit (default 500 ms). Output written since the last commit is
    /// read back and reconciled by the next run, so a shorter interval makes restarts after a crash cheaper.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The commit interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The delivery guarantee of the job's sinks that do not set their own (default [`Delivery::ExactlyOnce`]).
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// The delivery guarantee of the job's sinks that do not set their own.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The client configuration the log was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The latest commit, as read when the log was opened.
    pub fn latest(&self) -> Option<&Commit> {
        self.inner.latest.as_ref().map(|(_, c)| c)
    }

    /// The offset of the latest commit in the log.
    pub fn latest_offset(&self) -> Option<i64> {
        self.inner.latest.as_ref().map(|(offset, _)| *offset)
    }

    pub(crate) fn writer(&self) -> Result<CommitWriter, AdminError> {
        let owned: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all"), ("message.max.bytes", MAX_COMMIT_BYTES)];
        let context = CommitContext { outcome: Mutex::default() };
        let producer = self.inner.config.client_config(owned).create_with_context(context).map_err(|e| AdminError::Request {
            brokers: self.inner.config.brokers().to_owned(),
            what: "creating the commit producer".into(),
            reason: e.to_string(),
        })?;
        Ok(CommitWriter { producer, topic: self.inner.topic.clone() })
    }
}

/// Reads the last readable commit from the tail of `topic`.
fn read_latest(config: &KafkaConfig, topic: &str) -> Result<Option<(i64, Commit)>, CommitLogError> {
    let consumer = admin::reader(config)?;
    let request =
        |what: String, e: &dyn std::fmt::Display| AdminError::Request { brokers: config.brokers().to_owned(), what, reason: e.to_string() };
    let (low, high) = consumer.fetch_watermarks(topic, 0, REQUEST_TIMEOUT).map_err(|e| request(format!("end of {topic}"), &e))?;
    if high <= low {
        return Ok(None);
    }
    let from = (high - TAIL).max(low);
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(from)).map_err(|e| request(format!("reading {topic}"), &e))?;
    consumer.assign(&assignment).map_err(|e| request(format!("reading {topic}"), &e))?;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    let mut latest: Option<(i64, Commit)> = None;
    let mut last_error: Option<String> = None;
    let mut next = from;
    while next < high {
        if std::time::Instant::now() > deadline {
            return Err(request(format!("reading {topic} to offset {high}"), &format!("stuck at offset {next}")).into());
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(message)) => message,
            // Connection errors are transient (librdkafka reconnects); the deadline ends the read.
            Some(Err(e)) => {
                tracing::debug!(topic, "reading the commit log: {e}");
                continue;
            }
        };
        next = message.offset() + 1;
        if message.key() != Some(KEY) {
            last_error = Some(format!("a record at offset {} has another key", message.offset()));
            continue;
        }
        match message.payload().map(serde_json::from_slice::<Commit>) {
            Some(Ok(commit)) if commit.version == Commit::VERSION => {
                latest = Some((message.offset(), commit));
                last_error = None;
            }
            Some(Ok(commit)) => last_error = Some(format!("commit format {} at offset {}", commit.version, message.offset())),
            Some(Err(e)) => last_error = Some(format!("unreadable commit at offset {}: {e}", message.offset())),
            // A tombstone: nothing to resume from past it.
            None => latest = None,
        }
    }
    match (latest, last_error) {
        (None, Some(reason)) => Err(CommitLogError::Foreign { topic: topic.to_owned(), reason }),
        (latest, Some(reason)) => {
            tracing::warn!(topic, "the commit log's last record is not a commit ({reason}); resuming from the one before");
            Ok(latest)
        }
        (latest, None) => Ok(latest),
    }
}

/// Writes commits, one at a time, and says when each is acknowledged.
pub(crate) struct CommitWriter {
    producer: BaseProducer<CommitContext>,
    topic: String,
}

struct CommitContext {
    outcome: Mutex<Option<Result<(), String>>>,
}

impl ClientContext for CommitContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        super::config::log(level, facility, message);
    }
}

impl ProducerContext for CommitContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

impl CommitWriter {
    /// Hands a commit to the producer.
    pub(crate) fn send(&mut self, commit: &Commit) -> Result<(), String> {
        let value = serde_json::to_vec(commit).map_err(|e| e.to_string())?;
        *self.producer.context().outcome.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.producer
            .send(BaseRecord::<[u8], [u8]>::to(&self.topic).partition(0).key(KEY).payload(&value))
            .map_err(|(e, _)| e.to_string())?;
        // Send now rather than after linger.ms.
        let _ = self.producer.flush(Duration::ZERO);
        Ok(())
    }

    /// `Some` once the last commit sent is acknowledged or has failed.
    pub(crate) fn poll(&mut self) -> Option<Result<(), String>> {
        self.producer.poll(Duration::ZERO);
        self.producer.context().outcome.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
