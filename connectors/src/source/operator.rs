//! The source operator: a [`PartitionReader`] driven under the time model, with heartbeats between workers,
//! snapshots and drains on the control output, backpressure, and committed positions for lag reporting.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback};
use tributary_operators::checkpoint::Checkpoints;
use tributary_operators::event_time::{Arrival, Lift, SourceClock};
use tributary_operators::late::Origin;
use tributary_runtime::Shutdown;

use super::backpressure::{Outstanding, throttled};
use super::control::{Control, DrainMode, PartitionKey, PartitionSnapshot, SourceResume};
use super::metrics::{Closing, CommitAfter, Commits, PartitionMetrics, SourceMetrics};
use super::parts::PartWriter;
use super::{Arrivals, PartitionReader, Polled, ReadStatus, SourceOptions, SourceStreams, Timed, wall_ms};
use crate::dead_letter::{DeadLetter, Reason};

/// The least time between two heartbeats of one worker.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
/// How often a finished source looks whether the sinks have written its last records.
const COMMIT_CHECK_EVERY: Duration = Duration::from_millis(10);

/// After this many malformed records and none decoded, a partition warns that its input looks wrong.
const ALL_MALFORMED_WARNING: u64 = 100;

/// What the source operators of a dataflow tell each other through their feedback loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Beat {
    /// The watermark of worker `worker` advanced (to the message's time, less the loop's 1 ms).
    Watermark {
        /// The sender (a worker ignores its own).
        worker: usize,
    },
    /// The sender was asked to shut down: every source stops reading.
    Stop,
    /// A checkpoint is taken at `time`: every worker registers it before the sources move on.
    Checkpoint {
        /// The checkpoint's time.
        time: u64,
    },
    /// In a job with checkpoints, at a graceful stop: worker `worker`'s instance stopped reading at `time` (it
    /// holds its outputs there until every instance has said where it stopped).
    Stopped {
        /// The sender.
        worker: usize,
        /// Where it holds its outputs.
        time: u64,
    },
    /// In a job with checkpoints, at a graceful stop: worker `worker` registered the final checkpoint (or decided
    /// there is none); an instance lets go of its outputs once every other instance has said so.
    Decided {
        /// The sender.
        worker: usize,
    },
    /// In a job with checkpoints: worker `worker`'s instance read its input to the end (a stop waits for it no
    /// longer).
    Finished {
        /// The sender.
        worker: usize,
    },
}

/// The source operator's capabilities, one per output, all at the source's watermark (the lingering output's is
/// kept apart).
struct Ports {
    records: Capability<u64>,
    dead: Capability<u64>,
    beats: Capability<u64>,
    control: Capability<u64>,
}

impl Ports {
    /// The output ports in creation order (see `partitioned_source`).
    const RECORDS: usize = 0;
    const DEAD: usize = 1;
    const BEATS: usize = 2;
    const CONTROL: usize = 3;

    /// The capabilities `build` hands out for the four outputs, in creation order.
    fn new(capabilities: Vec<Capability<u64>>) -> Option<Ports> {
        let [records, dead, beats, control]: [Capability<u64>; 4] = capabilities.try_into().ok()?;
        Some(Ports { records, dead, beats, control })
    }

    /// Capabilities for every output at `time`, from an input capability connected to all of them.
    fn delayed(input: &timely::dataflow::operators::InputCapability<u64>, time: u64) -> Ports {
        Ports {
            records: input.delayed(&time, Self::RECORDS),
            dead: input.delayed(&time, Self::DEAD),
            beats: input.delayed(&time, Self::BEATS),
            control: input.delayed(&time, Self::CONTROL),
        }
    }

    /// The source's time: where every capability is.
    fn time(&self) -> u64 {
        *self.records.time()
    }

    fn downgrade(&mut self, time: &u64) {
        for cap in [&mut self.records, &mut self.dead, &mut self.beats, &mut self.control] {
            cap.downgrade(time);
        }
    }
}

/// Builds a source operator that reads through the reader `make_reader(worker index, peers, resume)` builds.
///
/// `name` names the operator and, in commits, its partitions: give two sources of one dataflow that read the
/// same topic or file different names.
pub fn partitioned_source<'scope, R, F>(
    scope: Scope<'scope, u64>,
    name: &str,
    options: SourceOptions,
    make_reader: F,
) -> SourceStreams<'scope, R::Item>
where
    R: PartitionReader,
    R::Item: Clone + 'static,
    F: FnOnce(usize, usize, &SourceResume) -> R,
{
    let (loop_handle, heartbeats_in) = scope.feedback::<Vec<Beat>>(1);
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    // The heartbeat input is connected to every output, so its capabilities can be taken over for them.
    let mut heartbeats = builder.new_input(heartbeats_in, Pipeline);
    let (records_output, records) = builder.new_output::<Vec<(Timed<R::Item>, u64, isize)>>();
    let (dead_output, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (heartbeat_output, heartbeats_out) = builder.new_output::<Vec<Beat>>();
    let (control_output, control) = builder.new_output::<Vec<Control>>();
    // Connected to nothing: its capability keeps the operator (and its reader) alive after the input is done,
    // until the sinks have written everything read, so the last committed positions reach the reader.
    let (_linger_output, _linger) = builder.new_output::<Vec<()>>();
    let mut records_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(records_output);
    let mut dead_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(dead_output);
    let mut heartbeat_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(heartbeat_output);
    let mut control_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(control_output);
    heartbeats_out.broadcast().connect_loop(loop_handle);
    let metrics = SourceMetrics::default();
    super::metrics::export(name, scope.index(), &metrics);
    let shared = metrics.clone();
    let commits_after = CommitAfter::default();
    let resume = options.resume.clone().unwrap_or_default();
    let mut reader = Closing {
        reader: make_reader(scope.index(), scope.peers(), &resume),
        commits: Commits::default(),
        after: commits_after.clone(),
        metrics: shared.clone(),
    };
    let name = name.to_owned();
    let me = scope.index();
    // In a job with checkpoints: this source's place among the job's sources (the first decides on worker 0,
    // and reports each worker's written parts).
    let checkpoints = Checkpoints::current().map(|registry| {
        let index = registry.add_source();
        if index == 0 {
            let activator = activator.clone();
            registry.on_complete(move || activator.activate());
        }
        (registry, index)
    });
    let restored_time = resume.restored_time();
    // Without an idle timeout no heartbeats flow, and an instance without partitions could not follow.
    let keep_alive = checkpoints.is_some() && options.policy.idle_timeout.is_some();
    let store = resume.store.clone();
    // The worker's first source reports its checkpoint parts, written by a thread of their own.
    let mut writer = checkpoints.as_ref().filter(|(_, source)| *source == 0).map(|_| {
        let wake = scope.worker().sync_activator_for(info.address.to_vec());
        PartWriter::start(store.clone(), scope.index(), wake)
    });
    let mut options = options;
    if options.shutdown.is_none() {
        options.shutdown = Shutdown::of(scope.worker());
    }

    builder.build(move |mut capabilities| {
        let mut linger = capabilities.pop();
        let mut capabilities = Ports::new(capabilities);
        let mut clock = SourceClock::new(0, options.policy, Instant::now());
        let mut snapshots = Snapshots::default();
        let mut polled = Vec::with_capacity(options.batch);
        // Records emitted per dataflow time the backpressure probe has not passed yet (only for a record limit).
        let mut outstanding = Outstanding::default();
        let count_outstanding = options.backpressure.as_ref().is_some_and(|bp| bp.max_records.is_some());
        let mut next_heartbeat = Instant::now();
        let mut heartbeat_sent = 0u64;
        let mut follow: Option<Ports> = None;
        let mut stop_heard = false;
        // At a graceful stop in a job with checkpoints: where each instance stopped (`None`: it had finished),
        // whether this one said so, and the capability that carries this worker's part of the final checkpoint.
        let mut peers_stopped: std::collections::BTreeMap<usize, Option<u64>> = Default::default();
        let mut stop_sent = false;
        let mut peers_decided: std::collections::BTreeSet<usize> = Default::default();
        let mut decision: Option<Option<u64>> = None;
        let mut final_time: Option<u64> = None;
        let mut final_written = false;
        // Once the other outputs are let go: the control output, kept while parts are being written.
        let mut held: Option<Capability<u64>> = None;
        let peers = scope.peers();
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
            // partitions are idle. (A kept capability ahead of our own holds nothing back.) A stop from any
            // worker stops this one too.
            heartbeats.for_each(|cap, beats| {
                stop_heard |= beats.contains(&Beat::Stop);
                if let Some((registry, _)) = &checkpoints {
                    // Heard even by an instance that has finished: the worker's other sources stop too.
                    if stop_heard {
                        registry.stopping();
                    }
                    for beat in beats.iter() {
                        match *beat {
                            Beat::Checkpoint { time } => registry.request(time),
                            Beat::Stopped { worker, time } => drop(peers_stopped.insert(worker, Some(time))),
                            Beat::Finished { worker } => drop(peers_stopped.insert(worker, None)),
                            Beat::Decided { worker } => drop(peers_decided.insert(worker)),
                            Beat::Watermark { .. } | Beat::Stop => {}
                        }
                    }
                }
                // Following its own heartbeat would move a worker on by the loop's 1 ms without evidence.
                if !beats.iter().any(|b| matches!(b, Beat::Watermark { worker } if *worker != me)) {
                    return;
                }
                let Some(caps) = capabilities.as_ref() else { return };
                let Some(&time) = cap.least() else { return };
                if time > caps.time() && follow.as_ref().is_none_or(|f| time > f.time()) {
                    follow = Some(Ports::delayed(&cap, time));
                }
            });
            if let (Some((registry, source)), Some(caps)) = (&checkpoints, capabilities.as_ref()) {
                // Before this source moves: the decision (worker 0's first source), and passing a request on to
                // the other workers while this source still holds a time at or before it.
                if *source == 0
                    && me == 0
                    && !(stop_heard || options.shutdown.as_ref().is_some_and(Shutdown::requested))
                    && let Some(time) = registry.open_gate(now)
                {
                    tracing::debug!(time, "asking for a checkpoint");
                }
                if let Some(time) = registry.gate_for(*source) {
                    heartbeat_output.activate().session(&caps.beats).give(Beat::Checkpoint { time });
                }
                if let Some(writer) = writer.as_mut() {
                    write_parts(registry, writer, me, &name, &caps.control, &mut control_output);
                }
            }
            // The final checkpoint of a graceful stop: this worker's part is written once its operators have
            // handed theirs over (after the sources let go of their other outputs), then the job may finish.
            if let (Some((registry, _)), Some(control), Some(writer)) = (&checkpoints, held.as_ref(), writer.as_mut()) {
                let written = write_parts(registry, writer, me, &name, control, &mut control_output);
                final_written |= final_time.is_some_and(|time| written.contains(&time));
                if final_time.is_none_or(|time| registry.settled(time)) && !writer.busy() {
                    if let Some(time) = final_time.filter(|_| !final_written) {
                        tracing::warn!(
                            worker = me,
                            time,
                            "no final checkpoint: its write failed (see above), or an operator had already processed a time after the stop's (it reads only a source further on in event time than the others); the restart restores the last checkpoint taken on the interval"
                        );
                    }
                    held = None;
                    final_time = None;
                } else {
                    activator.activate_after(Duration::from_millis(5));
                }
            }
            if let (Some(caps), Some(ahead)) = (capabilities.as_mut(), follow.as_ref())
                && !stop_sent
                && (clock.all_idle(now) || (keep_alive && clock.partitions() == 0))
                && ahead.time() > caps.time()
            {
                clock.follow(ahead.time());
                snapshots.send(&name, &*reader, &clock, &mut control_output, &caps.control);
                if let Some(ahead) = follow.take() {
                    *caps = ahead;
                }
                if let Some((registry, source)) = &checkpoints {
                    registry.publish(*source, Some(caps.time()));
                }
                // Not echoed: the others know this time already, and echoes would move all-idle workers on.
                heartbeat_sent = heartbeat_sent.max(caps.time());
            }
            let Some(caps) = capabilities.as_mut() else {
                if let Some((registry, source)) = &checkpoints {
                    registry.publish(*source, None);
                }
                return;
            };
            // Another source of this worker stopping stops this one too (its own loop may carry no stop: the
            // instance that heard the signal may have finished).
            let local_stop = options.shutdown.as_ref().is_some_and(Shutdown::requested)
                || checkpoints.as_ref().is_some_and(|(registry, _)| registry.is_stopping());
            if local_stop || stop_heard {
                if local_stop && !stop_sent {
                    heartbeat_output.activate().session(&caps.beats).give(Beat::Stop);
                }
                if let Some((registry, source)) = &checkpoints {
                    // Every instance holds where it stopped until all have said where: the final checkpoint is
                    // at the time before the earliest, which nothing downstream has processed past.
                    if !stop_sent {
                        registry.stopping();
                        heartbeat_output.activate().session(&caps.beats).give(Beat::Stopped { worker: me, time: caps.time() });
                        peers_stopped.insert(me, Some(caps.time()));
                    }
                    stop_sent = true;
                    if decision.is_none() {
                        let decided = if (0..peers).all(|w| peers_stopped.contains_key(&w)) {
                            registry.stopped(*source, peers_stopped.values().flatten().min().copied())
                        } else {
                            None
                        };
                        let Some(decided) = decided else {
                            activator.activate_after(Duration::from_millis(1));
                            return;
                        };
                        decision = Some(decided);
                        tracing::debug!(source = %name, worker = me, ?decided, stopped = ?peers_stopped, "final checkpoint decided");
                        heartbeat_output.activate().session(&caps.beats).give(Beat::Decided { worker: me });
                        peers_decided.insert(me);
                        if let Some(time) = decided {
                            // Where this instance's records after the checkpoint begin, if it stopped just after
                            // it (an instance further on sent its snapshot at or before it when it left it).
                            if caps.time() == time + 1 {
                                Snapshots::send_before(&name, &*reader, &clock, &mut control_output, &caps.control);
                            }
                            if *source == 0 {
                                tracing::info!(source = %name, time, "taking the final checkpoint");
                                final_time = Some(time);
                            }
                        } else if *source == 0
                            && let Some((reason, warn)) = registry.declined()
                        {
                            if warn {
                                tracing::warn!(worker = me, "no final checkpoint: {reason}; the restart restores the last checkpoint taken on the interval");
                            } else {
                                tracing::debug!(worker = me, "no final checkpoint: {reason}");
                            }
                        }
                    }
                    // Held until every instance still reading has decided too: until then another worker may not
                    // have registered the checkpoint, and letting go here could move its operators past it.
                    if !(0..peers).all(|w| peers_decided.contains(&w) || peers_stopped.get(&w) == Some(&None)) {
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                }
                stop_sent = true;
                tracing::info!(source = %name, "shutdown requested: closing the source; times from {} on are left to the next run", caps.time());
                snapshots.send(&name, &*reader, &clock, &mut control_output, &caps.control);
                let horizon = *caps.control.time();
                control_output.activate().session(&caps.control).give(Control::Drain { horizon, mode: DrainMode::Abandon });
                if let Some((registry, source)) = &checkpoints {
                    registry.publish(*source, None);
                }
                if final_time.is_some() || writer.as_ref().is_some_and(PartWriter::busy) {
                    held = Some(caps.control.clone());
                }
                capabilities = None;
                follow = None;
                activator.activate();
                return;
            }
            if let Some(bp) = &options.backpressure {
                if let Some(frontier) = throttled(bp, &mut outstanding, caps.time()) {
                    // Read only from the partitions that hold the dataflow's frontier back; if none can (another
                    // worker's partition, or an operator downstream holds it), wait. Compared with this worker's
                    // own watermark instead, a worker whose partitions all lead would read on without bound.
                    let ahead: Vec<bool> = (0..clock.partitions()).map(|p| clock.partition_watermark(p) > frontier).collect();
                    if ahead.iter().all(|a| *a) || ahead.is_empty() {
                        // Waiting, still tell the others how far this worker is: an all-idle worker follows these
                        // heartbeats, and without them it could hold the very frontier this source waits for.
                        let watermark = caps.time();
                        if options.policy.idle_timeout.is_some() && watermark > heartbeat_sent && now >= next_heartbeat {
                            heartbeat_output.activate().session(&caps.beats).give(Beat::Watermark { worker: me });
                            heartbeat_sent = watermark;
                            next_heartbeat = now + HEARTBEAT_EVERY;
                        }
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
            reader.discover();
            sync_partitions(&name, &*reader, &mut clock, &shared, &resume, now);
            let status = {
                let mut arrivals = Arrivals { clock: &mut clock, wall_ms: wall_ms(), now };
                reader.poll(options.batch, &mut polled, &mut arrivals)
            };
            // In a job with checkpoints an unbounded source instance without partitions stays, following the
            // others: the checkpoint requests start at worker 0's sources, which must hold a time to ask at.
            let status = match status {
                ReadStatus::Finished if keep_alive && clock.partitions() == 0 && !reader.bounded() => ReadStatus::Wait(HEARTBEAT_EVERY),
                status => status,
            };
            for partition in 0..clock.partitions() {
                if reader.backlog(partition) {
                    let position = clock.position(partition);
                    clock.backlog(partition, position, now);
                }
            }

            let mut records_handle = records_output.activate();
            let mut dead_handle = dead_output.activate();
            let mut records_session = records_handle.session(&caps.records);
            // Dead letters leave at their partition's watermark when they arrived (a function of the partition's
            // history, so the same on a replay), not at the source's current capability.
            let mut letters: Vec<(u64, DeadLetter)> = Vec::new();
            let mut drains: Vec<u64> = Vec::new();
            let dead_floor = *caps.dead.time();
            let mut metrics = shared.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for event in polled.drain(..) {
                match event {
                    Polled::Record { partition, offset, event_time, value, arrival, late_bytes } => {
                        let m = &mut metrics[partition];
                        m.position = offset + 1;
                        let time = match arrival {
                            Arrival::OnTime { time } => time,
                            Arrival::Late { time, .. } => {
                                m.late += 1;
                                time
                            }
                            #[allow(clippy::unreachable, reason = "the variant is non_exhaustive: only Arrivals::decoded makes it")]
                            Arrival::TooLate { .. } | Arrival::TooFarAhead { .. } => unreachable!("only Arrivals::decoded makes records (the variant is non_exhaustive), and it rejects these"),
                        };
                        if restored_time.is_some_and(|t| time <= t) {
                            // In the restored state already.
                            reader.commits.mark(partition, offset + 1, time);
                            m.watermark = clock.partition_watermark(partition);
                            continue;
                        }
                        m.records += 1;
                        if count_outstanding {
                            outstanding.add(time);
                        }
                        reader.commits.mark(partition, offset + 1, time);
                        let origin = late_bytes.map(|bytes| {
                            let (source, kafka_partition) = reader.origin(partition);
                            let (key, payload) = *bytes;
                            Box::new(Origin { source: source.to_owned(), partition: kafka_partition, offset, key, payload })
                        });
                        records_session.give((Timed { event_time, value, origin }, time, 1));
                        m.watermark = clock.partition_watermark(partition);
                    }
                    Polled::Rejected { partition, offset, event_time, arrival, key, payload } => {
                        let m = &mut metrics[partition];
                        m.position = offset + 1;
                        let (watermark, reason) = match arrival {
                            Arrival::TooFarAhead { watermark, max_ahead_ms } => {
                                m.too_far_ahead += 1;
                                (watermark, Reason::TooFarAhead { event_time, max_ahead_ms })
                            }
                            Arrival::TooLate { watermark, .. } => {
                                m.too_late += 1;
                                let max_lateness_ms = options.policy.max_lateness_ms().unwrap_or_default();
                                (watermark, Reason::TooLate { event_time, watermark, max_lateness_ms })
                            }
                            #[allow(clippy::unreachable, reason = "the variant is non_exhaustive: only Arrivals::decoded makes it")]
                            Arrival::OnTime { .. } | Arrival::Late { .. } => unreachable!("only Arrivals::decoded makes rejections (the variant is non_exhaustive), and it keeps these"),
                        };
                        let time = watermark.max(dead_floor);
                        reader.commits.mark(partition, offset + 1, time);
                        m.watermark = clock.partition_watermark(partition);
                        if restored_time.is_some_and(|t| time <= t) {
                            continue;
                        }
                        let (source, kafka_partition) = reader.origin(partition);
                        let letter = DeadLetter { source: source.to_owned(), partition: kafka_partition, offset, reason, key, payload };
                        letters.push((time, letter));
                    }
                    Polled::Malformed { partition, offset, error, key, payload, watermark } => {
                        let m = &mut metrics[partition];
                        m.position = offset + 1;
                        m.malformed += 1;
                        let time = watermark.max(dead_floor);
                        reader.commits.mark(partition, offset + 1, time);
                        if restored_time.is_some_and(|t| time <= t) {
                            continue;
                        }
                        let (source, kafka_partition) = reader.origin(partition);
                        tracing::debug!(source, partition = kafka_partition, offset, "malformed record: {error}");
                        if m.records == 0 && m.malformed == ALL_MALFORMED_WARNING {
                            // Early, once: a wrong format (or a CSV file without its header line) would otherwise
                            // show only as a stream of dead letters and an empty result.
                            let csv = std::path::Path::new(source).extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
                            let hint = if csv { "; a CSV file must start with its header line" } else { "" };
                            tracing::warn!(
                                source,
                                partition = kafka_partition,
                                "the first {ALL_MALFORMED_WARNING} records are all malformed (the last: {error}): is the input in the format the program decodes{hint}?"
                            );
                        }
                        let reason = Reason::Malformed { error };
                        letters.push((time, DeadLetter { source: source.to_owned(), partition: kafka_partition, offset, reason, key, payload }));
                    }
                    Polled::End { partition } => {
                        // From here on the partition's times are complete only as far as its input went: a later
                        // run may find more records, so what comes after its watermark is provisional.
                        drains.push(clock.partition_watermark(partition).max(*caps.control.time()));
                        clock.finish(partition);
                    }
                }
            }
            drop(metrics);
            drop(records_session);
            reader.advance_commits();
            letters.sort_by_key(|(time, _)| *time);
            for (time, letter) in letters {
                dead_handle.session(&caps.dead.delayed(&time)).give(letter);
            }
            if !drains.is_empty() {
                let mut control = control_output.activate();
                let mut session = control.session(&caps.control);
                for horizon in drains {
                    session.give(Control::Drain { horizon, mode: DrainMode::Provisional });
                }
            }

            if status == ReadStatus::Finished {
                // A bounded job's one line of what it read (per worker that read anything), so a run that
                // succeeds says what it did, and a run that read only dead letters says so.
                let totals = shared.snapshot().iter().fold([0u64; 5], |t, m| {
                    [t[0] + m.records, t[1] + m.late, t[2] + m.too_late, t[3] + m.malformed, t[4] + m.too_far_ahead]
                });
                if clock.partitions() > 0 {
                    let [records, late, too_late, malformed, too_far_ahead] = totals;
                    let dead = too_late + malformed + too_far_ahead;
                    if records == 0 && dead > 0 {
                        tracing::warn!(
                            source = %name, partitions = clock.partitions(), too_late, malformed, too_far_ahead,
                            "source finished: every one of its {dead} records was a dead letter, none reached the dataflow"
                        );
                    } else {
                        tracing::info!(
                            source = %name, partitions = clock.partitions(), records, late, too_late, malformed, too_far_ahead,
                            "source finished: {records} records read ({late} behind the watermark), {dead} dead letters"
                        );
                    }
                }
                snapshots.send(&name, &*reader, &clock, &mut control_output, &caps.control);
                if let Some((registry, source)) = &checkpoints {
                    registry.publish(*source, None);
                    // A stop no longer waits for this instance.
                    heartbeat_output.activate().session(&caps.beats).give(Beat::Finished { worker: me });
                }
                if writer.as_ref().is_some_and(PartWriter::busy) {
                    held = Some(caps.control.clone());
                }
                capabilities = None;
                follow = None;
                activator.activate();
                return;
            }
            match clock.watermark(now) {
                // Every partition ended, but the reader may still discover new ones: hold where we are.
                None => {}
                Some(watermark) if watermark > caps.time() => {
                    // Everything read so far is in this snapshot, at the time being left: what is read from now on
                    // travels later.
                    snapshots.send(&name, &*reader, &clock, &mut control_output, &caps.control);
                    caps.downgrade(&watermark);
                    clock.release_resume_points(watermark);
                    if let Some((registry, source)) = &checkpoints {
                        registry.publish(*source, Some(watermark));
                    }
                }
                Some(_) => {}
            }
            // Only idleness needs heartbeats; send the latest watermark at most every 50 ms.
            let watermark = caps.time();
            if follow.as_ref().is_some_and(|f| f.time() <= watermark) {
                follow = None;
            }
            if options.policy.idle_timeout.is_some() && watermark > heartbeat_sent {
                if now >= next_heartbeat {
                    heartbeat_output.activate().session(&caps.beats).give(Beat::Watermark { worker: me });
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

    SourceStreams { records, dead_letters, control, metrics, commits: commits_after }
}

/// Adds clocks and metrics for partitions the reader has and the clock does not yet, restoring what the commit
/// being resumed recorded for them.
fn sync_partitions<R: PartitionReader>(
    name: &str,
    reader: &R,
    clock: &mut SourceClock,
    metrics: &SourceMetrics,
    resume: &SourceResume,
    now: Instant,
) {
    let mut metrics = metrics.partitions.lock().unwrap_or_else(|e| e.into_inner());
    while metrics.len() < reader.partitions() {
        let index = clock.add_partition(now);
        let (source, partition) = reader.origin(index);
        if let Some(watermark) = reader.restored_watermark(index) {
            clock.set_watermark(index, watermark);
        }
        // Records not read before the commit come after it: from the position it had reached (the start of a
        // partition it did not know), every record travels after the commit's time.
        if let Some(time) = resume.time() {
            let key = PartitionKey { source: name.to_owned(), origin: source.to_owned(), partition };
            let floor = time.saturating_add(1);
            match resume.partition(&key) {
                Some(stored) => clock.restore(index, &stored.history, Some(Lift { offset: stored.position, floor })),
                None => clock.restore(index, &Default::default(), Some(Lift { offset: 0, floor })),
            }
        }
        let mut start = reader.first_offset(index);
        // A restored checkpoint: the reader starts where the partition's records after it begin, with the
        // partition's watermark there (a reader that starts elsewhere replays from there, and the records the
        // restored state holds are dropped by their time).
        let key = PartitionKey { source: name.to_owned(), origin: source.to_owned(), partition };
        if let Some(point) = resume.checkpoint_point(&key)
            && point.offset == start
        {
            clock.set_watermark(index, point.watermark);
            start = point.offset;
        }
        clock.start_at(index, start);
        // Nothing before the start offset is read: the position (and lag) count from it, not from 0.
        metrics.push(PartitionMetrics {
            source: source.to_owned(),
            partition,
            position: start,
            committed: start,
            watermark: clock.partition_watermark(index),
            ..Default::default()
        });
    }
}

/// Hands the parts of this worker's checkpoints that became complete to the writer, and tells the coordinator
/// (at `control`) of those written; returns the times of those.
fn write_parts(
    registry: &Checkpoints,
    writer: &mut PartWriter,
    me: usize,
    name: &str,
    control: &Capability<u64>,
    control_output: &mut OutputBuilder<u64, timely::container::CapacityContainerBuilder<Vec<Control>>>,
) -> Vec<u64> {
    for (time, parts) in registry.take_complete() {
        writer.submit(time, parts);
    }
    let mut written = Vec::new();
    for (time, result) in writer.written() {
        match result {
            Ok(fingerprint) => {
                control_output.activate().session(control).give(Control::Checkpointed { time, worker: me, fingerprint });
                written.push(time);
            }
            Err(e) => tracing::warn!(source = %name, time, "the checkpoint was not written: {e}; the next one is tried"),
        }
    }
    written
}

/// What the last snapshot said of each partition, so the next one carries only the partitions that changed.
#[derive(Default)]
struct Snapshots {
    sent: Vec<Option<(u64, u64, usize, usize)>>,
}

impl Snapshots {
    /// Sends, at `cap`, every partition's state as of the time before `cap`'s (valid while the clock has released
    /// resume points only before `cap`'s time: the source has not moved since it reached it).
    fn send_before<R: PartitionReader>(
        name: &str,
        reader: &R,
        clock: &SourceClock,
        output: &mut OutputBuilder<u64, timely::container::CapacityContainerBuilder<Vec<Control>>>,
        cap: &Capability<u64>,
    ) {
        let Some(before) = cap.time().checked_sub(1) else { return };
        let snapshots: Vec<PartitionSnapshot> = (0..clock.partitions())
            .map(|partition| {
                let (origin, kafka_partition) = reader.origin(partition);
                PartitionSnapshot {
                    key: PartitionKey { source: name.to_owned(), origin: origin.to_owned(), partition: kafka_partition },
                    start: reader.start_offset(partition),
                    position: clock.position(partition),
                    watermark: clock.partition_watermark(partition),
                    history: clock.history(partition),
                    resume: Some(clock.resume_point(partition, before)),
                }
            })
            .collect();
        if !snapshots.is_empty() {
            output.activate().session(cap).give(Control::SnapshotBefore(snapshots));
        }
    }

    /// Sends, at `cap`, the state of the partitions that changed since the last snapshot.
    fn send<R: PartitionReader>(
        &mut self,
        name: &str,
        reader: &R,
        clock: &SourceClock,
        output: &mut OutputBuilder<u64, timely::container::CapacityContainerBuilder<Vec<Control>>>,
        cap: &Capability<u64>,
    ) {
        self.sent.resize(clock.partitions(), None);
        let mut changed = Vec::new();
        for partition in 0..clock.partitions() {
            let history = clock.history(partition);
            let state = (clock.position(partition), clock.partition_watermark(partition), history.lifts.len(), history.rejected.len());
            if self.sent[partition] == Some(state) {
                continue;
            }
            self.sent[partition] = Some(state);
            let (origin, kafka_partition) = reader.origin(partition);
            changed.push(PartitionSnapshot {
                key: PartitionKey { source: name.to_owned(), origin: origin.to_owned(), partition: kafka_partition },
                start: reader.start_offset(partition),
                position: state.0,
                watermark: state.1,
                history,
                resume: Some(clock.resume_point(partition, *cap.time())),
            });
        }
        if !changed.is_empty() {
            output.activate().session(cap).give(Control::Snapshot(changed));
        }
    }
}
