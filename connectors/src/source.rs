//! The event-time source operator every connector shares.
//!
//! A connector supplies a [`PartitionReader`] for each worker: it reads that worker's partitions (Kafka
//! partitions, files) and hands over [`Polled`] events. The operator applies the time model of
//! [`tributary_operators::event_time`]: it gives each record its dataflow time from its partition's clock,
//! holds the worker's capability at the minimum watermark of its live partitions, sends records beyond the
//! maximum lateness and malformed records to the dead-letter output, and counts everything in
//! [`SourceMetrics`]. It drops its capabilities when the reader is finished (bounded input read, or no partitions)
//! or when the process is asked to shut down.
//!
//! Data leaves as `(Timed<T>, time, +1)` updates, ready for `as_collection()`, and as [`DeadLetter`]s.
//!
//! **Idle workers.** A partition idle past the policy's timeout stops holding its worker's watermark back. When
//! every partition of a worker is idle, the worker must not hold the cluster back either, but it cannot drop its
//! capability: its partitions may produce again. So the source operators of all workers exchange heartbeats
//! through a feedback loop: whenever a worker's watermark advances it broadcasts a heartbeat at that time, which
//! comes back to every worker 1 ms later. A worker whose partitions are all idle takes the capability of the
//! heartbeat it receives and moves its own capabilities up to it, so it follows the others instead of stalling
//! them; its partitions rejoin at that watermark when they produce again.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback};
use timely::dataflow::{ProbeHandle, Scope, Stream};
pub use tributary_operators::event_time::Timed;
use tributary_operators::event_time::{Arrival, SourceClock, WatermarkPolicy};
use tributary_runtime::Shutdown;

use crate::dead_letter::{DeadLetter, Reason};

/// The least time between two heartbeats of one worker.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
/// How often a finished source looks whether the sinks have written its last records.
const COMMIT_CHECK_EVERY: Duration = Duration::from_millis(10);

/// What a reader hands the source operator.
#[derive(Debug)]
pub enum Polled<T> {
    /// A decoded record with its event time.
    Record {
        /// The reader's index of the partition.
        partition: usize,
        /// Its position in the partition (Kafka offset, line number).
        offset: u64,
        /// Its event time in ms.
        event_time: u64,
        /// The decoded value.
        value: T,
    },
    /// A record that could not be decoded.
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
    },
    /// A bounded partition has been read to its end.
    End {
        /// The reader's index of the partition.
        partition: usize,
    },
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
    /// Reads up to `budget` events into `out`.
    fn poll(&mut self, budget: usize, out: &mut Vec<Polled<Self::Item>>) -> ReadStatus;
    /// The watermark each partition starts from, if the reader restored positions (indexed like partitions).
    fn restored_watermark(&self, _partition: usize) -> Option<u64> {
        None
    }
    /// Stops (`true`) or resumes (`false`) delivery from each partition. Backpressure pauses the partitions
    /// ahead of the watermark and keeps reading those that hold it back, so a lagging partition can always
    /// catch up. Readers that cannot pause ignore this (the default).
    fn pause(&mut self, _paused: &[bool]) {}
}

/// Limits on how far a source reads ahead of the dataflow, so a backlog is drained with bounded memory.
#[derive(Clone, Debug)]
pub struct Backpressure {
    /// The probe at the end of the dataflow (or wherever "done" is measured).
    pub probe: ProbeHandle<u64>,
    /// Do not read while the source's watermark is this far (ms) ahead of the probe's frontier.
    pub max_ahead_ms: Option<u64>,
    /// Do not read while this many emitted records are at times the probe has not passed.
    pub max_records: Option<usize>,
}

/// Options every source takes.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Watermarks, idleness, maximum lateness.
    pub policy: WatermarkPolicy,
    /// Records read per activation before yielding to other operators.
    pub batch: usize,
    /// Read-ahead limits; `None` reads as fast as the input allows.
    pub backpressure: Option<Backpressure>,
    /// The shutdown flag: when set, the source stops reading and closes. `None`: the flag of the runtime that
    /// started the worker ([`Shutdown::of`]), if any.
    pub shutdown: Option<Shutdown>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { policy: WatermarkPolicy::default(), batch: 4096, backpressure: None, shutdown: None }
    }
}

/// Counters of one partition, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionMetrics {
    /// Topic or file.
    pub source: String,
    /// Kafka partition (0 for files).
    pub partition: i32,
    /// The next position to read (last offset read + 1).
    pub position: u64,
    /// The position up to which every record's output is complete: all records before it have dataflow times
    /// that the sinks registered with [`CommitAfter::after`] have written. Without sinks, the position read.
    /// This is what a restart may resume from, and what lag reporting commits.
    pub committed: u64,
    /// The end of the partition as last seen (Kafka high watermark), if known: `end - position` is the lag.
    pub end: Option<u64>,
    /// The partition's event-time watermark.
    pub watermark: u64,
    /// Records sent to the main stream (late ones included).
    pub records: u64,
    /// Records that arrived behind the watermark but within the maximum lateness (kept in the main stream).
    pub late: u64,
    /// Records beyond the maximum lateness (sent to the dead-letter output).
    pub too_late: u64,
    /// Records that could not be decoded (sent to the dead-letter output).
    pub malformed: u64,
}

/// The per-partition counters of a source on this worker, shared with whoever reports metrics.
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    partitions: Arc<Mutex<Vec<PartitionMetrics>>>,
}

impl SourceMetrics {
    /// A copy of the current counters.
    pub fn snapshot(&self) -> Vec<PartitionMetrics> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the end offset last seen for `partition` (a reader's index), so `end - position` is its lag.
    pub fn set_end(&self, partition: usize, end: u64) {
        if let Some(p) = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).get_mut(partition) {
            p.end = Some(end);
        }
    }
}

/// The streams a source produces.
pub struct SourceStreams<'scope, T> {
    /// Records as `(Timed<T>, time, +1)` updates.
    pub records: Stream<'scope, u64, Vec<(Timed<T>, u64, isize)>>,
    /// Malformed and too-late records.
    pub dead_letters: Stream<'scope, u64, Vec<DeadLetter>>,
    /// Counters of this worker's partitions.
    pub metrics: SourceMetrics,
    /// Registers the sinks whose progress decides which positions count as committed.
    pub commits: CommitAfter,
}

/// The sinks a source's committed positions wait for (see [`PartitionMetrics::committed`]).
#[derive(Clone, Default)]
pub struct CommitAfter {
    probes: Rc<RefCell<Vec<ProbeHandle<u64>>>>,
}

impl CommitAfter {
    /// Positions count as committed only once `written` (a sink's probe, e.g. from `sink_kafka`) has passed the
    /// times of every record before them. Register every sink the source feeds.
    pub fn after(&self, written: &ProbeHandle<u64>) {
        self.probes.borrow_mut().push(written.clone());
    }

    /// The earliest time some registered sink has not written yet; `None` without sinks.
    fn frontier(&self) -> Option<u64> {
        let probes = self.probes.borrow();
        (!probes.is_empty()).then(|| probes.iter().filter_map(|p| p.with_frontier(|f| f.first().copied())).min().unwrap_or(u64::MAX))
    }
}

/// A source's reader with its commit bookkeeping: when the operator goes away, committed positions are brought
/// up to date before the reader is dropped (a Kafka reader's last commit for lag tools happens on drop).
struct Closing<R> {
    reader: R,
    commits: Commits,
    after: CommitAfter,
    metrics: SourceMetrics,
}

impl<R> Closing<R> {
    fn advance_commits(&mut self) -> bool {
        self.commits.advance(&self.after, &self.metrics)
    }
}

impl<R> std::ops::Deref for Closing<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.reader
    }
}

impl<R> std::ops::DerefMut for Closing<R> {
    fn deref_mut(&mut self) -> &mut R {
        &mut self.reader
    }
}

impl<R> Drop for Closing<R> {
    fn drop(&mut self) {
        self.advance_commits();
    }
}

/// Per partition, positions with the greatest dataflow time of the records before them (non-decreasing), until
/// the sinks have written those times.
#[derive(Default)]
struct Commits {
    marks: Vec<VecDeque<(u64, u64)>>,
    greatest: Vec<u64>,
}

impl Commits {
    /// Records that everything before `position` of `partition` has times up to the greatest seen so far.
    fn mark(&mut self, partition: usize, position: u64, time: u64) {
        if self.marks.len() <= partition {
            self.marks.resize_with(partition + 1, VecDeque::new);
            self.greatest.resize(partition + 1, 0);
        }
        let greatest = &mut self.greatest[partition];
        *greatest = (*greatest).max(time);
        match self.marks[partition].back_mut() {
            Some((last, at)) if *at == *greatest => *last = position,
            _ => self.marks[partition].push_back((position, *greatest)),
        }
    }

    /// Moves each partition's committed position up to what the sinks have written (or to the position read,
    /// without sinks). Returns whether marks are still waiting.
    fn advance(&mut self, after: &CommitAfter, metrics: &SourceMetrics) -> bool {
        self.advance_to(after.frontier(), metrics)
    }

    /// As [`Commits::advance`], with the sinks' frontier given: `None` when no sink is registered.
    fn advance_to(&mut self, written: Option<u64>, metrics: &SourceMetrics) -> bool {
        let mut metrics = metrics.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, m) in metrics.iter_mut().enumerate() {
            let Some(marks) = self.marks.get_mut(partition) else { continue };
            while let Some(&(position, greatest)) = marks.front() {
                if written.is_some_and(|w| greatest >= w) {
                    break;
                }
                m.committed = m.committed.max(position);
                marks.pop_front();
            }
        }
        self.marks.iter().any(|m| !m.is_empty())
    }
}

/// Builds a source operator that reads through the reader `make_reader(worker index, peers)` builds.
pub fn partitioned_source<'scope, R, F>(
    scope: Scope<'scope, u64>,
    name: &str,
    options: SourceOptions,
    make_reader: F,
) -> SourceStreams<'scope, R::Item>
where
    R: PartitionReader,
    R::Item: Clone + 'static,
    F: FnOnce(usize, usize) -> R,
{
    let (loop_handle, heartbeats_in) = scope.feedback::<Vec<u64>>(1);
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    // The heartbeat input is connected to every output, so its capabilities can be taken over for them.
    let mut heartbeats = builder.new_input(heartbeats_in, Pipeline);
    let (records_output, records) = builder.new_output::<Vec<(Timed<R::Item>, u64, isize)>>();
    let (dead_output, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (heartbeat_output, heartbeats_out) = builder.new_output::<Vec<u64>>();
    // Connected to nothing: its capability keeps the operator (and its reader) alive after the input is done,
    // until the sinks have written everything read, so the last committed positions reach the reader.
    let (_linger_output, _linger) = builder.new_output::<Vec<()>>();
    let mut records_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(records_output);
    let mut dead_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(dead_output);
    let mut heartbeat_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(heartbeat_output);
    heartbeats_out.broadcast().connect_loop(loop_handle);
    let metrics = SourceMetrics::default();
    let shared = metrics.clone();
    let commits_after = CommitAfter::default();
    let after = commits_after.clone();
    let mut reader = Closing {
        reader: make_reader(scope.index(), scope.peers()),
        commits: Commits::default(),
        after: after.clone(),
        metrics: shared.clone(),
    };
    let name = name.to_owned();
    let mut options = options;
    if options.shutdown.is_none() {
        options.shutdown = Shutdown::of(scope.worker());
    }

    builder.build(move |mut capabilities| {
        let mut linger = capabilities.pop();
        let mut capabilities = Some(capabilities);
        let mut clock = SourceClock::new(0, options.policy, Instant::now());
        let mut polled = Vec::with_capacity(options.batch);
        // Records emitted per dataflow time the backpressure probe has not passed yet (only for a record limit).
        let mut outstanding = Outstanding::default();
        let count_outstanding = options.backpressure.as_ref().is_some_and(|bp| bp.max_records.is_some());
        let mut next_heartbeat = Instant::now();
        let mut heartbeat_sent = 0u64;
        let mut follow: Option<Vec<Capability<u64>>> = None;
        let mut paused: Vec<bool> = Vec::new();
        move |_frontiers| {
            let now = Instant::now();
            // Positions whose records' outputs the sinks have written; once the source is done, keep looking
            // until they all are.
            if reader.advance_commits() {
                if capabilities.is_none() {
                    activator.activate_after(COMMIT_CHECK_EVERY);
                }
            } else if capabilities.is_none() {
                drop(linger.take());
            }
            // Heartbeats of the other workers: keep capabilities at the latest one, and follow it once all our
            // partitions are idle. (A kept capability ahead of our own holds nothing back.)
            heartbeats.for_each(|cap, _beats| {
                let Some(caps) = capabilities.as_ref() else { return };
                let Some(&time) = cap.least() else { return };
                if time > *caps[0].time() && follow.as_ref().is_none_or(|f: &Vec<Capability<u64>>| time > *f[0].time()) {
                    follow = Some((0..caps.len()).map(|port| cap.delayed(&time, port)).collect());
                }
            });
            if let (Some(caps), Some(ahead)) = (capabilities.as_mut(), follow.as_ref())
                && clock.all_idle(now)
                && ahead[0].time() > caps[0].time()
            {
                clock.follow(*ahead[0].time());
                *caps = follow.take().expect("checked above");
            }
            let Some(caps) = capabilities.as_mut() else { return };
            if options.shutdown.as_ref().is_some_and(Shutdown::requested) {
                tracing::info!(source = %name, "shutdown requested: closing the source");
                capabilities = None;
                follow = None;
                activator.activate();
                return;
            }
            if let Some(bp) = &options.backpressure {
                if throttled(bp, &mut outstanding, *caps[0].time()) {
                    // Read only from the partitions that hold the watermark back; if none can, wait.
                    let watermark = *caps[0].time();
                    let ahead: Vec<bool> = (0..clock.partitions()).map(|p| clock.partition_watermark(p) > watermark).collect();
                    if ahead.iter().all(|a| *a) || ahead.is_empty() {
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                    if ahead != paused {
                        reader.pause(&ahead);
                        paused = ahead;
                    }
                } else if paused.iter().any(|p| *p) {
                    paused = vec![false; paused.len()];
                    reader.pause(&paused);
                }
            }
            let status = reader.poll(options.batch, &mut polled);
            sync_partitions(&*reader, &mut clock, &shared, now);

            let mut records_handle = records_output.activate();
            let mut dead_handle = dead_output.activate();
            let mut records_session = records_handle.session(&caps[0]);
            // Dead letters leave at their partition's watermark when they arrived (a function of the partition's
            // history, so the same on a replay), not at the source's current capability.
            let mut letters: Vec<(u64, DeadLetter)> = Vec::new();
            let mut metrics = shared.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for event in polled.drain(..) {
                match event {
                    Polled::Record { partition, offset, event_time, value } => {
                        let m = &mut metrics[partition];
                        m.position = offset + 1;
                        let arrival = clock.observe(partition, event_time, now);
                        match arrival {
                            Arrival::OnTime { time } | Arrival::Late { time, .. } => {
                                m.records += 1;
                                if matches!(arrival, Arrival::Late { .. }) {
                                    m.late += 1;
                                }
                                if count_outstanding {
                                    outstanding.add(time);
                                }
                                reader.commits.mark(partition, offset + 1, time);
                                records_session.give((Timed { event_time, value }, time, 1));
                            }
                            Arrival::TooLate { watermark, .. } => {
                                m.too_late += 1;
                                reader.commits.mark(partition, offset + 1, watermark.max(*caps[1].time()));
                                let (source, kafka_partition) = reader.origin(partition);
                                let max_lateness_ms = options.policy.max_lateness_ms.unwrap_or_default();
                                letters.push((
                                    watermark,
                                    DeadLetter {
                                        source: source.to_owned(),
                                        partition: kafka_partition,
                                        offset,
                                        reason: Reason::TooLate { event_time, watermark, max_lateness_ms },
                                        key: None,
                                        payload: None,
                                    },
                                ));
                            }
                        }
                        m.watermark = clock.partition_watermark(partition);
                    }
                    Polled::Malformed { partition, offset, error, key, payload } => {
                        let m = &mut metrics[partition];
                        m.position = offset + 1;
                        m.malformed += 1;
                        reader.commits.mark(partition, offset + 1, clock.partition_watermark(partition).max(*caps[1].time()));
                        let (source, kafka_partition) = reader.origin(partition);
                        tracing::debug!(source, partition = kafka_partition, offset, "malformed record: {error}");
                        letters.push((
                            clock.partition_watermark(partition),
                            DeadLetter {
                                source: source.to_owned(),
                                partition: kafka_partition,
                                offset,
                                reason: Reason::Malformed { error },
                                key,
                                payload,
                            },
                        ));
                    }
                    Polled::End { partition } => clock.finish(partition),
                }
            }
            drop(metrics);
            drop(records_session);
            reader.advance_commits();
            letters.sort_by_key(|(time, _)| *time);
            for (time, letter) in letters {
                let time = time.max(*caps[1].time());
                dead_handle.session(&caps[1].delayed(&time)).give(letter);
            }

            if status == ReadStatus::Finished {
                tracing::debug!(source = %name, "source finished");
                capabilities = None;
                follow = None;
                activator.activate();
                return;
            }
            match clock.watermark(now) {
                // Every partition ended, but the reader may still discover new ones: hold where we are.
                None => {}
                Some(watermark) if watermark > *caps[0].time() => {
                    for cap in caps.iter_mut() {
                        cap.downgrade(&watermark);
                    }
                }
                Some(_) => {}
            }
            // Only idleness needs heartbeats; send the latest watermark at most every 50 ms.
            let watermark = *caps[0].time();
            if follow.as_ref().is_some_and(|f| *f[0].time() <= watermark) {
                follow = None;
            }
            if options.policy.idle_timeout.is_some() && watermark > heartbeat_sent {
                if now >= next_heartbeat {
                    heartbeat_output.activate().session(&caps[2]).give(watermark);
                    heartbeat_sent = watermark;
                    next_heartbeat = now + HEARTBEAT_EVERY;
                } else {
                    activator.activate_after(next_heartbeat - now);
                }
            }
            match status {
                ReadStatus::More => activator.activate(),
                ReadStatus::Wait(delay) => {
                    // Look again when new data may be there, or when a partition turns idle, whichever is first.
                    let idle_in = clock.next_idle_check().map(|at| at.saturating_duration_since(now) + Duration::from_millis(1));
                    activator.activate_after(idle_in.map_or(delay, |idle| idle.min(delay)));
                }
                ReadStatus::Finished => {}
            }
        }
    });

    SourceStreams { records, dead_letters, metrics, commits: commits_after }
}

/// Adds clocks and metrics for partitions the reader discovered.
fn sync_partitions<R: PartitionReader>(reader: &R, clock: &mut SourceClock, metrics: &SourceMetrics, now: Instant) {
    let mut metrics = metrics.partitions.lock().unwrap_or_else(|e| e.into_inner());
    while metrics.len() < reader.partitions() {
        let index = clock.add_partition(now);
        if let Some(watermark) = reader.restored_watermark(index) {
            clock.restore(index, watermark);
        }
        let (source, partition) = reader.origin(index);
        metrics.push(PartitionMetrics {
            source: source.to_owned(),
            partition,
            watermark: clock.partition_watermark(index),
            ..Default::default()
        });
    }
}

/// Records emitted per dataflow time that the backpressure probe has not passed yet, and their total.
#[derive(Default)]
struct Outstanding {
    by_time: BTreeMap<u64, usize>,
    total: usize,
}

impl Outstanding {
    fn add(&mut self, time: u64) {
        *self.by_time.entry(time).or_default() += 1;
        self.total += 1;
    }

    /// Forgets the records at times before `frontier`: the dataflow has completed them.
    fn complete_before(&mut self, frontier: u64) {
        let pending = self.by_time.split_off(&frontier);
        self.total -= self.by_time.values().sum::<usize>();
        self.by_time = pending;
    }
}

/// Whether the source must wait for the dataflow to catch up.
fn throttled(bp: &Backpressure, outstanding: &mut Outstanding, watermark: u64) -> bool {
    let frontier = bp.probe.with_frontier(|f| f.first().copied());
    let Some(frontier) = frontier else { return false };
    outstanding.complete_before(frontier);
    if bp.max_ahead_ms.is_some_and(|ahead| watermark > frontier.saturating_add(ahead)) {
        return true;
    }
    bp.max_records.is_some_and(|max| outstanding.total >= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(metrics: &SourceMetrics) -> Vec<u64> {
        metrics.snapshot().iter().map(|m| m.committed).collect()
    }

    #[test]
    fn positions_commit_once_the_sinks_have_written_every_record_before_them() {
        let metrics = SourceMetrics::default();
        metrics.partitions.lock().unwrap().resize(2, PartitionMetrics::default());
        let mut commits = Commits::default();
        // Partition 0: times 5, 3 (late, behind 5), 9; partition 1: time 4.
        commits.mark(0, 1, 5);
        commits.mark(0, 2, 3);
        commits.mark(0, 3, 9);
        commits.mark(1, 1, 4);
        assert!(commits.advance_to(Some(0), &metrics));
        assert_eq!(committed(&metrics), vec![0, 0]);
        // Written up to 5 (exclusive): nothing on partition 0 (its first record is at 5), partition 1 done.
        commits.advance_to(Some(5), &metrics);
        assert_eq!(committed(&metrics), vec![0, 1]);
        // Up to 6: the records at 5 and 3 are written, the one at 9 is not.
        commits.advance_to(Some(6), &metrics);
        assert_eq!(committed(&metrics), vec![2, 1]);
        assert!(!commits.advance_to(Some(u64::MAX), &metrics));
        assert_eq!(committed(&metrics), vec![3, 1]);
        // Without sinks, what is read is committed.
        commits.mark(1, 7, 100);
        commits.advance_to(None, &metrics);
        assert_eq!(committed(&metrics), vec![3, 7]);
    }
}
