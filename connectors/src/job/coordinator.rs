//! The commit coordinator: one operator per dataflow whose input (sources' controls, sinks' acknowledged
//! positions) is routed to worker 0, which writes a [`Commit`] whenever the completed time has advanced and the
//! commit interval has passed, and once more at the end.
//!
//! For a candidate time `T` (every input passed it, and no drain's horizon is at or before it) the commit takes,
//! per input partition, its latest snapshot at or before `T` (sent just before its source left that time, so its
//! records from that position on travel after `T`), and per output partition its latest acknowledged position
//! at or before `T`; partitions this run has not reported keep what the resumed commit said. The operator's
//! output capability sits at the last committed time + 1, so its probe shows what is committed, and is released
//! once the input is done and the last commit acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::{CheckpointRef, Commit, Event, JobError, SinkPosition};
use crate::error::stop;
use crate::kafka::{CommitLog, CommitWriter};
use crate::source::{Control, PartitionKey, PartitionSnapshot};

/// How often an unacknowledged commit is looked at again.
const POLL_EVERY: Duration = Duration::from_millis(2);

pub(super) fn build<'scope>(
    events: Stream<'scope, u64, Vec<Event>>,
    log: CommitLog,
    registry: Option<tributary_operators::checkpoint::Checkpoints>,
) -> Stream<'scope, u64, Vec<()>> {
    let scope = events.scope();
    let peers = scope.peers();
    events.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &Event| 0),
        "JobCommits",
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            // Only worker 0 receives anything; the others hold nothing back.
            let mut capability = (scope.index() == 0).then_some(capability);
            let mut state = Coordinator::new(log);
            state.peers = peers;
            state.registry = registry;
            move |(input, frontier), _output| {
                input.for_each(|cap, data| {
                    let time = cap.least().copied().unwrap_or_default();
                    for event in data.drain(..) {
                        state.add(time, event);
                    }
                });
                let Some(cap) = capability.as_mut() else { return };
                if let Some(done) = state.poll_write() {
                    cap.downgrade(&done.saturating_add(1));
                }
                let finished = frontier.is_empty();
                let candidate = state.candidate(frontier.frontier().first().copied());
                // Due once the completed time has advanced, or a checkpoint every worker wrote can be named.
                let due = state.in_flight.is_none()
                    && candidate.is_some_and(|t| state.committed.is_none_or(|c| t > c) || state.ready.range(..=t).next().is_some());
                if due {
                    let wait = state.interval.saturating_sub(state.last_write.elapsed());
                    if finished || wait.is_zero() {
                        #[allow(clippy::expect_used, reason = "`due` holds only with a candidate")]
                        state.write(candidate.expect("checked above"));
                    } else {
                        activator.activate_after(wait);
                    }
                }
                if state.in_flight.is_some() {
                    activator.activate_after(POLL_EVERY);
                } else if finished && !due {
                    capability = None;
                }
            }
        },
    )
}

struct Coordinator {
    log: CommitLog,
    interval: Duration,
    /// Per input partition, its snapshots by time (older ones are pruned once committed past).
    partitions: HashMap<PartitionKey, BTreeMap<u64, PartitionSnapshot>>,
    /// Per output partition, its acknowledged positions by time.
    sinks: HashMap<(String, i32), BTreeMap<u64, SinkPosition>>,
    /// The earliest time a drain left unfinished.
    horizon: Option<u64>,
    /// The latest time any event was at.
    latest: u64,
    /// The commit log offset every worker said it resumed from.
    resumed: Option<(usize, Option<i64>, Option<u64>)>,
    committed: Option<u64>,
    in_flight: Option<u64>,
    last_write: Instant,
    writer: Option<CommitWriter>,
    run: u64,
    peers: usize,
    /// Worker 0's checkpoint registry (its requests keep the snapshots a checkpoint needs).
    registry: Option<tributary_operators::checkpoint::Checkpoints>,
    /// Per checkpoint time, the parts written so far (worker → fingerprint).
    parts: BTreeMap<u64, BTreeMap<usize, u32>>,
    /// The checkpoints every worker wrote, not named by a commit yet, by time (a commit names the newest at or
    /// before its time: at a stop, a later one may be complete before the stop's own).
    ready: BTreeMap<u64, CheckpointRef>,
    /// The checkpoints the latest commit names (newest first).
    checkpoints: Vec<CheckpointRef>,
    /// The commit in flight names a new checkpoint.
    in_flight_checkpoints: Vec<CheckpointRef>,
}

impl Coordinator {
    fn new(log: CommitLog) -> Self {
        let committed = log.latest().map(|c| c.time);
        let run = log.latest().map_or(1, |c| c.run.saturating_add(1));
        let interval = log.interval();
        let checkpoints = log.latest().map(|c| c.checkpoints.clone()).unwrap_or_default();
        Coordinator {
            log,
            interval,
            partitions: HashMap::new(),
            sinks: HashMap::new(),
            horizon: None,
            latest: 0,
            resumed: None,
            committed,
            in_flight: None,
            last_write: Instant::now(),
            writer: None,
            run,
            peers: 1,
            registry: None,
            parts: BTreeMap::new(),
            ready: BTreeMap::new(),
            checkpoints,
            in_flight_checkpoints: Vec::new(),
        }
    }

    /// The snapshot of every input partition as of `time`: this run's latest at or before it, or the resumed
    /// commit's.
    fn sources_at(&self, time: u64) -> Vec<PartitionSnapshot> {
        let previous = self.log.latest();
        let mut sources: BTreeMap<PartitionKey, PartitionSnapshot> =
            previous.map(|c| c.sources.iter().map(|s| (s.key.clone(), s.clone())).collect()).unwrap_or_default();
        for (key, snapshots) in &self.partitions {
            if let Some((_, snapshot)) = snapshots.range(..=time).next_back() {
                sources.insert(key.clone(), snapshot.clone());
            }
        }
        sources.into_values().collect()
    }

    /// The earliest time whose snapshots a checkpoint still needs.
    fn keep_from(&self, committed: u64) -> u64 {
        let requested = self.registry.as_ref().and_then(tributary_operators::checkpoint::Checkpoints::oldest_open);
        let written = self.parts.keys().next().copied();
        [Some(committed), requested, written].into_iter().flatten().min().unwrap_or(committed)
    }

    fn add(&mut self, time: u64, event: Event) {
        self.latest = self.latest.max(time);
        match event {
            Event::Control(Control::Snapshot(snapshots)) => {
                for snapshot in snapshots {
                    self.partitions.entry(snapshot.key.clone()).or_default().insert(time, snapshot);
                }
            }
            Event::Control(Control::SnapshotBefore(snapshots)) => {
                for snapshot in snapshots {
                    self.partitions.entry(snapshot.key.clone()).or_default().insert(time.saturating_sub(1), snapshot);
                }
            }
            Event::Control(Control::Drain { horizon, .. }) => self.horizon = Some(self.horizon.map_or(horizon, |h| h.min(horizon))),
            Event::Control(Control::Checkpointed { time, worker, fingerprint }) => {
                let parts = self.parts.entry(time).or_default();
                parts.insert(worker, fingerprint);
                if parts.len() == self.peers {
                    let parts: Vec<u32> = parts.values().copied().collect();
                    let checkpoint = CheckpointRef { generation: self.run, time, parts, sources: self.sources_at(time) };
                    tracing::debug!(time, "every worker wrote its part of the checkpoint");
                    if self.checkpoints.first().is_none_or(|newest| time > newest.time) {
                        self.ready.insert(time, checkpoint);
                    }
                    self.parts = self.parts.split_off(&(time + 1));
                    if let Some(registry) = &self.registry {
                        registry.release(time);
                    }
                }
            }
            Event::Sink(position) => {
                tracing::trace!(time, ?position, "sink position");
                self.sinks.entry((position.topic.clone(), position.partition)).or_default().insert(time, position);
            }
            Event::Resumed { worker, commit, checkpoint } => match self.resumed {
                None => self.resumed = Some((worker, commit, checkpoint)),
                Some((first, theirs, _)) if theirs != commit => {
                    stop(JobError::DifferentCommits { topic: self.log.topic().to_owned(), worker, commit, first, first_commit: theirs })
                }
                Some((first, _, theirs)) if theirs != checkpoint => {
                    stop(JobError::DifferentCheckpoints { worker, checkpoint, first, first_checkpoint: theirs })
                }
                Some(_) => {}
            },
        }
    }

    /// The latest time that could be committed: every input has passed it (`frontier` is the earliest time
    /// not passed, `None` once everything has), and no drain left it unfinished.
    fn candidate(&self, frontier: Option<u64>) -> Option<u64> {
        let passed = match frontier {
            Some(0) => return None,
            Some(f) => f - 1,
            None => self.latest,
        };
        match self.horizon {
            Some(0) => None,
            Some(h) => Some(passed.min(h - 1)),
            None => Some(passed),
        }
    }

    fn commit_at(&self, time: u64) -> Commit {
        let previous = self.log.latest();
        let sources = self.sources_at(time);
        let mut sinks: BTreeMap<(String, i32), SinkPosition> =
            previous.map(|c| c.sinks.iter().map(|s| ((s.topic.clone(), s.partition), s.clone())).collect()).unwrap_or_default();
        for (key, positions) in &self.sinks {
            if let Some((_, position)) = positions.range(..=time).next_back() {
                sinks.insert(key.clone(), position.clone());
            }
        }
        // A checkpoint every worker wrote, at or before the commit's time, becomes the newest one it names.
        let mut checkpoints = self.checkpoints.clone();
        if let Some((_, ready)) = self.ready.range(..=time).next_back() {
            checkpoints.insert(0, ready.clone());
            checkpoints.truncate(2);
        }
        Commit { version: Commit::VERSION, run: self.run, time, sources, sinks: sinks.into_values().collect(), checkpoints }
    }

    fn write(&mut self, time: u64) {
        let commit = self.commit_at(time);
        tracing::trace!(?commit, "writing a commit");
        let writer = self.writer.get_or_insert_with(|| {
            self.log.writer().unwrap_or_else(|source| stop(JobError::CommitWriter { topic: self.log.topic().to_owned(), source }))
        });
        if let Err(reason) = writer.send(&commit) {
            stop(JobError::CommitNotWritten { topic: self.log.topic().to_owned(), time, reason });
        }
        self.in_flight_checkpoints = commit.checkpoints;
        self.in_flight = Some(time);
        self.last_write = Instant::now();
    }

    /// Looks whether the commit in flight is acknowledged; returns its time if it just was.
    fn poll_write(&mut self) -> Option<u64> {
        let time = self.in_flight?;
        let writer = self.writer.as_mut()?;
        match writer.poll() {
            None => None,
            Some(Ok(())) => {
                self.in_flight = None;
                self.committed = Some(time);
                let labels = crate::metrics::labels(&[("commit_log", self.log.topic())]);
                let metrics = crate::metrics::metrics();
                metrics.commits.get_or_create(&labels).inc();
                metrics.commit_latency.get_or_create(&labels).observe(self.last_write.elapsed().as_secs_f64());
                metrics.committed_time.get_or_create(&labels).set(i64::try_from(time).unwrap_or(i64::MAX));
                tracing::debug!(topic = self.log.topic(), time, "committed");
                // The checkpoints it names are the ones that count now; older ones go.
                let named = std::mem::take(&mut self.in_flight_checkpoints);
                if named.first().map(|c| c.time) != self.checkpoints.first().map(|c| c.time) {
                    if let Some(newest) = named.first() {
                        tracing::info!(time = newest.time, "checkpoint committed");
                        let labels = crate::metrics::labels(&[("commit_log", self.log.topic())]);
                        let metrics = crate::metrics::metrics();
                        metrics.checkpoint_time.get_or_create(&labels).set(i64::try_from(newest.time).unwrap_or(i64::MAX));
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        metrics.checkpoint_committed_at.get_or_create(&labels).set(i64::try_from(now).unwrap_or(i64::MAX));
                    }
                    if let Some(settings) = self.log.checkpoint_settings() {
                        let keep: Vec<_> = named.iter().map(CheckpointRef::id).collect();
                        for worker in 0..self.peers.max(named.iter().map(|c| c.parts.len()).max().unwrap_or(0)) {
                            let removed =
                                tributary_runtime::checkpoint::CheckpointStore::open(&settings.dir, worker).and_then(|s| s.retain(&keep));
                            if let Err(e) = removed {
                                tracing::warn!("old checkpoints were not deleted: {e}");
                            }
                        }
                    }
                }
                // A checkpoint the commit names is no longer waiting to be named (else a commit is due again).
                if let Some(newest) = named.first() {
                    self.ready = self.ready.split_off(&(newest.time + 1));
                }
                self.checkpoints = named;
                // Keep, per partition, the latest entry at or before the committed time (or the earliest time a
                // checkpoint still needs) and everything after.
                let keep_from = self.keep_from(time);
                for snapshots in self.partitions.values_mut() {
                    prune(snapshots, keep_from);
                }
                for positions in self.sinks.values_mut() {
                    prune(positions, time);
                }
                Some(time)
            }
            Some(Err(reason)) => stop(JobError::CommitNotWritten { topic: self.log.topic().to_owned(), time, reason }),
        }
    }
}

fn prune<V>(entries: &mut BTreeMap<u64, V>, time: u64) {
    if let Some(&keep) = entries.range(..=time).next_back().map(|(t, _)| t) {
        let rest = entries.split_off(&keep);
        *entries = rest;
    }
}
