//! The event-time source operator every connector shares.
//!
//! A connector supplies a [`PartitionReader`] for each worker: it reads that worker's partitions (Kafka
//! partitions, files) and hands over [`Polled`] events. The operator applies the time model of
//! [`tributary_operators::event_time`]: it gives each record its dataflow time from its partition's clock
//! (through [`Arrivals`], which the reader consults per record), holds the worker's capability at the minimum
//! watermark of its live partitions, sends records beyond the maximum lateness, too far ahead of the wall clock,
//! and malformed records to the dead-letter output with their bytes, and counts everything in [`SourceMetrics`].
//! It drops its capabilities when the reader is finished (bounded input read, or no partitions) or when the
//! process is asked to shut down.
//!
//! Data leaves as `(Timed<T>, time, +1)` updates, ready for `as_collection()`, as [`DeadLetter`]s, and as
//! [`Control`] messages (positions, time state, drains) for the job's commits (see [`control`]).
//!
//! **Idle workers.** A partition with nothing to read past the policy's timeout stops holding its worker's
//! watermark back. When every partition of a worker is idle, the worker must not hold the cluster back either,
//! but it cannot drop its capability: its partitions may produce again. So the source operators of all workers
//! exchange heartbeats through a feedback loop: whenever a worker's watermark advances it broadcasts a heartbeat
//! at that time, which comes back to every worker 1 ms later. A worker whose partitions are all idle takes the
//! capability of the heartbeat it receives and moves its own capabilities up to it, so it follows the others
//! instead of stalling them; its partitions rejoin at that watermark when they produce again (a recorded lift).
//! The same loop carries a stop: a worker asked to shut down tells the others, so the whole cluster stops
//! reading, not one process.

mod backpressure;
pub mod control;
mod metrics;
mod operator;
mod parts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::{Scope, Stream};
pub use tributary_operators::event_time::Timed;
use tributary_operators::event_time::{Arrival, MAX_EVENT_TIME, SourceClock, WatermarkPolicy};
use tributary_runtime::Shutdown;

pub use self::backpressure::Backpressure;
pub use self::control::{Control, DrainMode, PartitionKey, PartitionSnapshot, SourceResume};
pub use self::metrics::{CommitAfter, PartitionMetrics, SourceMetrics};
pub use self::operator::partitioned_source;
use crate::dead_letter::DeadLetter;

/// What a reader hands the source operator.
///
/// Records, rejected and malformed records are made only by [`Arrivals::decoded`] (their variants cannot be
/// built outside this crate), so each is timed by its partition's clock; a reader builds [`Polled::End`] itself.
#[derive(Debug)]
pub enum Polled<T> {
    /// A decoded record with its event time, on time or late within the maximum lateness.
    #[non_exhaustive]
    Record {
        /// The reader's index of the partition.
        partition: usize,
        /// Its position in the partition (Kafka offset, line number).
        offset: u64,
        /// Its event time in ms.
        event_time: u64,
        /// The decoded value.
        value: T,
        /// Where the partition's clock put it ([`Arrival::OnTime`] or [`Arrival::Late`]).
        arrival: Arrival,
        /// For a late record, its key and value bytes: an operator may find it too late and make it a dead letter
        /// with them ([`Timed::origin`](tributary_operators::Timed::origin)). `None` for on-time records.
        late_bytes: Option<Box<(Option<Vec<u8>>, Option<Vec<u8>>)>>,
    },
    /// A decoded record the clock routed away ([`Arrival::TooLate`] or [`Arrival::TooFarAhead`]), with its bytes.
    #[non_exhaustive]
    Rejected {
        /// The reader's index of the partition.
        partition: usize,
        /// Its position in the partition.
        offset: u64,
        /// Its event time in ms.
        event_time: u64,
        /// Why.
        arrival: Arrival,
        /// Its key bytes, if any.
        key: Option<Vec<u8>>,
        /// Its value bytes, if any.
        payload: Option<Vec<u8>>,
    },
    /// A record that could not be decoded.
    #[non_exhaustive]
    Malformed {
        /// The reader's index of the partition.
        partition: usize,
        /// Its position in the partition.
        offset: u64,
        /// Why it could not be decoded.
        error: String,
        /// Its key bytes, if any.
        key: Option<Vec<u8>>,
        /// Its value bytes, if any.
        payload: Option<Vec<u8>>,
        /// The partition's watermark when it arrived (where its dead letter travels).
        watermark: u64,
    },
    /// A bounded partition has been read to its end.
    End {
        /// The reader's index of the partition.
        partition: usize,
    },
}

/// The partitions' clocks, as a reader sees them while polling: it asks where each record lands the moment it
/// has decoded it, so it can keep the bytes of the records that go to the dead-letter output and no others.
pub struct Arrivals<'a> {
    clock: &'a mut SourceClock,
    wall_ms: u64,
    now: Instant,
}

impl Arrivals<'_> {
    /// The event for a record of `partition` at `offset`: `decoded` is its value and event time or why it could
    /// not be decoded; `bytes` gives its key and value bytes, asked for only when the record is routed away or late
    /// (only a late record can be too late for an operator, which then makes it a dead letter with them).
    pub fn decoded<T>(
        &mut self,
        partition: usize,
        offset: u64,
        decoded: Result<(T, u64), String>,
        bytes: impl FnOnce() -> (Option<Vec<u8>>, Option<Vec<u8>>),
    ) -> Polled<T> {
        let decoded = decoded.and_then(|(value, event_time)| match event_time {
            t if t > MAX_EVENT_TIME => Err(format!("event time {t} is beyond the largest supported ({MAX_EVENT_TIME} ms after 1970)")),
            t => Ok((value, t)),
        });
        match decoded {
            Ok((value, event_time)) => match self.clock.observe(partition, offset, event_time, self.wall_ms, self.now) {
                arrival @ Arrival::OnTime { .. } => Polled::Record { partition, offset, event_time, value, arrival, late_bytes: None },
                arrival @ Arrival::Late { .. } => {
                    let late_bytes = Some(Box::new(bytes()));
                    Polled::Record { partition, offset, event_time, value, arrival, late_bytes }
                }
                arrival => {
                    let (key, payload) = bytes();
                    Polled::Rejected { partition, offset, event_time, arrival, key, payload }
                }
            },
            Err(error) => {
                let watermark = self.clock.malformed(partition, offset, self.now);
                let (key, payload) = bytes();
                Polled::Malformed { partition, offset, error, key, payload, watermark }
            }
        }
    }
}

/// What a reader says after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// More may be available right away.
    More,
    /// Nothing now; poll again after about this long.
    Wait(Duration),
    /// Nothing more will ever come (every partition ended, or the worker has none).
    Finished,
}

/// Reads the partitions one worker owns.
pub trait PartitionReader: 'static {
    /// The decoded record type.
    type Item;
    /// How many partitions the reader has (indices `0..partitions()`); may grow while running.
    fn partitions(&self) -> usize;
    /// Where partition `partition` comes from: (topic or file, Kafka partition number).
    fn origin(&self, partition: usize) -> (&str, i32);
    /// Reads up to `budget` events into `out`, turning each record into an event with
    /// [`Arrivals::decoded`] as soon as it is decoded (so records are timed in the order they are read).
    fn poll(&mut self, budget: usize, out: &mut Vec<Polled<Self::Item>>, arrivals: &mut Arrivals<'_>) -> ReadStatus;
    /// Looks for partitions added since the last call (called before each poll; the default finds none). Polls
    /// must not return records of partitions they added themselves.
    fn discover(&mut self) {}
    /// The offset reading of `partition` started at (a replay of the job starts here).
    fn start_offset(&self, _partition: usize) -> u64 {
        0
    }
    /// Whether the input ends (files, Kafka with `until_end`): a reader without partitions is then done.
    fn bounded(&self) -> bool {
        true
    }
    /// The offset this run reads `partition` from: the start, or where a restored checkpoint's later records
    /// begin.
    fn first_offset(&self, partition: usize) -> u64 {
        self.start_offset(partition)
    }
    /// Whether `partition` is known to have records not read yet (so it is not idle, however long it has been).
    fn backlog(&self, _partition: usize) -> bool {
        false
    }
    /// The watermark each partition starts from, if the reader restored positions (indexed like partitions).
    fn restored_watermark(&self, _partition: usize) -> Option<u64> {
        None
    }
    /// Stops (`true`) or resumes (`false`) delivery from each partition. Backpressure pauses the partitions
    /// ahead of the watermark and keeps reading those that hold it back, so a lagging partition can always
    /// catch up. Readers that cannot pause ignore this (the default).
    fn pause(&mut self, _paused: &[bool]) {}
}

/// Options every source takes.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Watermarks, idleness, maximum lateness, far-future records.
    pub policy: WatermarkPolicy,
    /// Records read per activation before yielding to other operators.
    pub batch: usize,
    /// Read-ahead limits; `None` reads as fast as the input allows.
    pub backpressure: Option<Backpressure>,
    /// The shutdown flag: when set, the source stops reading and closes. `None`: the flag of the runtime that
    /// started the worker ([`Shutdown::of`]), if any.
    pub shutdown: Option<Shutdown>,
    /// Where a restart resumes: set by the job ([`crate::job::Job::source`]), not by hand.
    pub resume: Option<SourceResume>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { policy: WatermarkPolicy::default(), batch: 4096, backpressure: None, shutdown: None, resume: None }
    }
}

/// The streams a source produces.
pub struct SourceStreams<'scope, T> {
    /// Records as `(Timed<T>, time, +1)` updates.
    pub records: Stream<'scope, u64, Vec<(Timed<T>, u64, isize)>>,
    /// Malformed, too-late and too-far-ahead records.
    pub dead_letters: Stream<'scope, u64, Vec<DeadLetter>>,
    /// Positions, time state and drains, for the job's commits.
    pub control: Stream<'scope, u64, Vec<Control>>,
    /// Counters of this worker's partitions.
    pub metrics: SourceMetrics,
    /// Registers the sinks whose progress decides which positions count as committed.
    pub commits: CommitAfter,
}

/// The time flags of a program's sources, to `#[command(flatten)]` into its clap arguments: `--until-end`,
/// `--max-out-of-orderness`, `--max-lateness`, `--idle-timeout`, `--max-ahead`.
///
/// ```
/// use clap::Parser;
/// use std::time::Duration;
/// use tributary_connectors::SourceArgs;
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     source: SourceArgs,
/// }
/// let args = Args::parse_from(["prog", "--idle-timeout", "2s", "--max-out-of-orderness", "5s"]);
/// let policy = args.source.policy();
/// assert_eq!((policy.idle_timeout, policy.max_out_of_orderness), (Some(Duration::from_secs(2)), Duration::from_secs(5)));
/// assert_eq!((policy.max_ahead, policy.max_lateness), (Some(Duration::from_secs(24 * 60 * 60)), None));
/// assert!(!args.source.until_end);
/// ```
#[derive(clap::Args, Clone, Debug)]
// Without this a program with no doc comment of its own would show these docs as its `--help` text.
#[command(about = None, long_about = None)]
pub struct SourceArgs {
    /// Kafka: read up to the end offsets seen at start, then exit (files are always read to their end).
    #[arg(long)]
    pub until_end: bool,
    /// How far behind the largest event time seen a record may be and still be on time.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_out_of_orderness: Duration,
    /// Records further behind the watermark than this go to the dead letters at the source (default: none do;
    /// the operators' allowed lateness decides).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_lateness: Option<Duration>,
    /// A partition with nothing to read for this long stops holding the watermark back.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Records stamped further ahead of the wall clock than this go to the dead letters instead of moving the
    /// watermark into the future.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = humantime::parse_duration)]
    pub max_ahead: Duration,
}

impl SourceArgs {
    /// The watermark policy the flags describe.
    pub fn policy(&self) -> WatermarkPolicy {
        WatermarkPolicy {
            max_out_of_orderness: self.max_out_of_orderness,
            max_lateness: self.max_lateness,
            idle_timeout: Some(self.idle_timeout),
            max_ahead: Some(self.max_ahead),
        }
    }
}

/// A source that can be built into a dataflow: Kafka topics, files, or one a user writes (a
/// [`PartitionReader`] run by this module's generic source operator).
///
/// A source is a description shared by every worker thread (each builds its own reader from it), hence `Send +
/// Sync`; so a `Box<dyn Source<Item = T>>` chosen at run time (files or Kafka) moves into
/// `tributary::run` as it is.
pub trait Source: Send + Sync {
    /// The decoded record type.
    type Item;
    /// Builds the source operator in `scope`.
    fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, Self::Item>;

    /// Builds the source in `job` when there is one ([`Job::source`](crate::Job::source): its positions and
    /// time state go into the job's commits), on its own in `scope` otherwise: for programs whose outputs are
    /// a job's Kafka topics or, without them, printed.
    fn build_in<'scope>(
        &self,
        scope: Scope<'scope, u64>,
        job: Option<&crate::Job<'scope>>,
        options: SourceOptions,
    ) -> SourceStreams<'scope, Self::Item> {
        match job {
            Some(job) => job.source(self, options),
            None => self.build(scope, options),
        }
    }
}

impl<S: Source + ?Sized> Source for Arc<S> {
    type Item = S::Item;
    fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, Self::Item> {
        (**self).build(scope, options)
    }
}

/// A program that reads files or Kafka, as its flags say, keeps either as a `Box<dyn Source<Item = T>>`.
impl<S: Source + ?Sized> Source for Box<S> {
    type Item = S::Item;
    fn build<'scope>(&self, scope: Scope<'scope, u64>, options: SourceOptions) -> SourceStreams<'scope, Self::Item> {
        (**self).build(scope, options)
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
