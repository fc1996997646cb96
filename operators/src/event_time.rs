//! Event time and watermarks: the time model every source shares.
//!
//! Dataflow timestamps are event time in milliseconds (`u64`). Each partition of a source keeps a
//! [`PartitionClock`]: its watermark is the largest event time seen minus the allowed out-of-orderness, and a
//! record's dataflow time is `max(event_time, watermark when it arrived)`. That depends only on the partition's
//! own history, so a replay from the same offsets assigns the same times.
//!
//! A record whose event time is behind its partition's watermark is *late*: it keeps its event time as data and
//! travels at the watermark. If the source has a maximum lateness and the record is further behind than that, it
//! is *too late* and goes to the late output instead of the main stream. A record stamped further ahead of the
//! wall clock than [`WatermarkPolicy::max_ahead`] would move its partition's watermark for good; it goes to
//! the late output too, as *too far ahead*.
//!
//! A [`SourceClock`] holds the clocks of the partitions one worker reads. Its watermark, where the worker holds its
//! capability, is the minimum over live partitions; a partition that has had nothing to read for longer than the
//! idle timeout stops holding it back (a partition with known records still to read is never idle). When an
//! idle partition produces again it rejoins at no less than the watermark the worker has reached: a [`Lift`]
//! of its watermark from that offset on.
//!
//! **Decisions the wall clock makes are recorded.** Lifts and far-ahead rejections depend on when records
//! arrive, not only on the partition's history. The clock keeps them per partition ([`PartitionHistory`]), a
//! source hands them to whoever stores its positions (the exactly-once commit), and a restart gives them back
//! ([`SourceClock::restore`]): a replay then applies the same lifts and rejections at the same offsets and
//! assigns every record the time it had. A restart also lifts every partition, from the position the stored
//! commit had reached, above the commit's time: records not read before a commit come after it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::late::Origin;

/// A record with the event time it was read with. Late records keep their event time here while they travel at
/// their partition's watermark.
///
/// Equality, order and hashing look at the event time and the value only: the [`origin`](Timed::origin) is
/// provenance, not part of the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timed<T> {
    /// Event time in ms.
    pub event_time: u64,
    /// The decoded record.
    pub value: T,
    /// Where the record was read, with its bytes, for a record that arrived behind its partition's watermark
    /// (only those can be too late for an operator; see [`late`](crate::late)). `None` for on-time records and
    /// for records an operator derived.
    pub origin: Option<Box<Origin>>,
}

impl<T> Timed<T> {
    /// `value` at `event_time`, with no origin.
    pub fn new(event_time: u64, value: T) -> Self {
        Timed { event_time, value, origin: None }
    }

    /// The same record with its value mapped by `f`, keeping its event time and origin.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Timed<U> {
        Timed { event_time: self.event_time, value: f(self.value), origin: self.origin }
    }
}

impl<T: PartialEq> PartialEq for Timed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.event_time == other.event_time && self.value == other.value
    }
}

impl<T: Eq> Eq for Timed<T> {}

impl<T: PartialOrd> PartialOrd for Timed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.event_time, &self.value).partial_cmp(&(other.event_time, &other.value))
    }
}

impl<T: Ord> Ord for Timed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.event_time, &self.value).cmp(&(other.event_time, &other.value))
    }
}

impl<T: std::hash::Hash> std::hash::Hash for Timed<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.event_time.hash(state);
        self.value.hash(state);
    }
}

/// How far ahead of the wall clock a record may be stamped by default: one day.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(24 * 60 * 60);

/// How a source turns event times into watermarks.
///
/// The default: no out-of-orderness, no idleness, no maximum lateness, and records stamped more than a day ahead
/// of the wall clock rejected ([`DEFAULT_MAX_AHEAD`]). Durations count in whole milliseconds, event time's unit.
///
/// ```
/// use std::time::Duration;
/// use tributary_operators::WatermarkPolicy;
/// let policy = WatermarkPolicy::default()
///     .max_out_of_orderness(Duration::from_secs(5))
///     .idle_after(Duration::from_secs(30))
///     .max_lateness(Duration::from_secs(60));
/// assert_eq!(policy.max_out_of_orderness, Duration::from_secs(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkPolicy {
    /// How far behind the largest event time seen a record may be and still be on time.
    pub max_out_of_orderness: Duration,
    /// A partition with nothing to read for this long stops holding back the watermark. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Records further behind the watermark than this go to the late output. `None`: late records stay in the
    /// main stream, at the watermark, and the operators decide (e.g. a window's allowed lateness).
    pub max_lateness: Option<Duration>,
    /// Records whose event time is more than this ahead of the wall clock go to the late output instead of
    /// moving their partition's watermark into the future. `None`: no limit.
    pub max_ahead: Option<Duration>,
}

impl Default for WatermarkPolicy {
    fn default() -> Self {
        WatermarkPolicy { max_out_of_orderness: Duration::ZERO, idle_timeout: None, max_lateness: None, max_ahead: Some(DEFAULT_MAX_AHEAD) }
    }
}

impl WatermarkPolicy {
    /// Records up to `bound` behind the largest event time seen are on time.
    pub fn max_out_of_orderness(mut self, bound: Duration) -> Self {
        self.max_out_of_orderness = bound;
        self
    }

    /// A partition with nothing to read for `timeout` stops holding back the watermark.
    pub fn idle_after(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Records more than `bound` behind the watermark go to the late output (dead letters).
    pub fn max_lateness(mut self, bound: Duration) -> Self {
        self.max_lateness = Some(bound);
        self
    }

    /// Records stamped more than `bound` ahead of the wall clock go to the late output; `None`: no limit.
    pub fn max_ahead(mut self, bound: Option<Duration>) -> Self {
        self.max_ahead = bound;
        self
    }

    /// The out-of-orderness bound in ms.
    pub fn max_out_of_orderness_ms(&self) -> u64 {
        ms(self.max_out_of_orderness)
    }

    /// The maximum lateness in ms, if any.
    pub fn max_lateness_ms(&self) -> Option<u64> {
        self.max_lateness.map(ms)
    }

    /// The limit ahead of the wall clock in ms, if any.
    pub fn max_ahead_ms(&self) -> Option<u64> {
        self.max_ahead.map(ms)
    }
}

/// The largest event time a source accepts (ms since the Unix epoch, about 146 million years): a record stamped
/// later is malformed. Keeping event times, and durations ([`ms`]), below a quarter of `u64::MAX` lets the
/// operators add a time, a window size and a lateness without overflow.
pub const MAX_EVENT_TIME: u64 = u64::MAX / 4;

/// A duration in whole ms, event time's unit, at most [`MAX_EVENT_TIME`] (a longer one means "forever").
pub fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).min(MAX_EVENT_TIME)
}

/// Where a record lands in time, as decided by its partition's clock (see [`Arrival::time`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// At or ahead of the watermark: the record travels at its event time.
    OnTime {
        /// The dataflow time (= event time).
        time: u64,
    },
    /// Behind the watermark: the record travels at the watermark, keeping its event time as data.
    Late {
        /// The dataflow time (= the partition's watermark).
        time: u64,
        /// How far behind the watermark the event time is, in ms.
        behind_ms: u64,
    },
    /// Further behind than the maximum lateness: the record goes to the late output.
    TooLate {
        /// The partition's watermark when the record arrived.
        watermark: u64,
        /// How far behind the watermark the event time is, in ms.
        behind_ms: u64,
    },
    /// Stamped further ahead of the wall clock than the policy allows: the record goes to the late output.
    TooFarAhead {
        /// The partition's watermark when the record arrived.
        watermark: u64,
        /// The policy's limit, in ms.
        max_ahead_ms: u64,
    },
}

impl Arrival {
    /// The dataflow time the record travels at; for a record turned away (too late, too far ahead), the time its
    /// dead letter travels at: the partition's watermark.
    pub fn time(&self) -> u64 {
        match *self {
            Arrival::OnTime { time } | Arrival::Late { time, .. } => time,
            Arrival::TooLate { watermark, .. } | Arrival::TooFarAhead { watermark, .. } => watermark,
        }
    }
}

/// The event-time clock of one partition.
///
/// ```
/// use tributary_operators::event_time::{Arrival, PartitionClock, WatermarkPolicy};
/// let policy = WatermarkPolicy::default().max_out_of_orderness(std::time::Duration::from_millis(5));
/// let mut clock = PartitionClock::default();
/// assert_eq!(clock.observe(100, &policy), Arrival::OnTime { time: 100 });
/// assert_eq!(clock.watermark(), 95);
/// assert_eq!(clock.observe(97, &policy), Arrival::OnTime { time: 97 });
/// assert_eq!(clock.observe(90, &policy), Arrival::Late { time: 95, behind_ms: 5 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionClock {
    watermark: u64,
}

impl PartitionClock {
    /// A clock whose watermark starts at `watermark` (e.g. restored from stored positions).
    pub fn starting_at(watermark: u64) -> Self {
        PartitionClock { watermark }
    }

    /// The partition's watermark: no on-time record will have an earlier event time.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Decides the arrival of a record with `event_time` and advances the watermark.
    pub fn observe(&mut self, event_time: u64, policy: &WatermarkPolicy) -> Arrival {
        let watermark = self.watermark;
        if event_time >= watermark {
            self.watermark = watermark.max(event_time.saturating_sub(policy.max_out_of_orderness_ms()));
            return Arrival::OnTime { time: event_time };
        }
        let behind_ms = watermark - event_time;
        match policy.max_lateness_ms() {
            Some(max) if behind_ms > max => Arrival::TooLate { watermark, behind_ms },
            _ => Arrival::Late { time: watermark, behind_ms },
        }
    }

    /// Raises the watermark to at least `floor` (used when an idle partition rejoins).
    pub fn lift(&mut self, floor: u64) {
        self.watermark = self.watermark.max(floor);
    }
}

/// A raise of a partition's watermark to `floor` from `offset` on: every record at that offset or later travels
/// at `floor` or later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lift {
    /// The first offset the lift applies to.
    pub offset: u64,
    /// The watermark from there on (ms).
    pub floor: u64,
}

/// Where a replay of a partition starts: an offset and the partition's watermark just before reading it
/// ([`SourceClock::resume_point`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The first offset to read again.
    pub offset: u64,
    /// The partition's watermark before that offset was read.
    pub watermark: u64,
}

/// The decisions about a partition's records that were not a function of its records alone, in offset order:
/// what a replay must apply again to assign the same times.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionHistory {
    /// Watermark lifts (idle partitions rejoining, restarts), by offset.
    #[serde(default)]
    pub lifts: Vec<Lift>,
    /// Offsets rejected as too far ahead of the wall clock, as `[from, to)` ranges.
    #[serde(default)]
    pub rejected: Vec<(u64, u64)>,
}

impl PartitionHistory {
    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.lifts.is_empty() && self.rejected.is_empty()
    }

    fn is_rejected(&self, offset: u64) -> bool {
        let i = self.rejected.partition_point(|(_, to)| *to <= offset);
        self.rejected.get(i).is_some_and(|(from, _)| *from <= offset)
    }

    fn reject(&mut self, offset: u64) {
        if self.is_rejected(offset) {
            return;
        }
        // Ranges before `i` end before `offset`; usually `offset` extends the last one (offsets grow).
        let i = self.rejected.partition_point(|(_, to)| *to < offset);
        let (extends, precedes) = match self.rejected.get(i) {
            Some(&(from, to)) => (to == offset, from == offset + 1),
            None => (false, false),
        };
        if extends {
            self.rejected[i].1 += 1;
            if self.rejected.get(i + 1).is_some_and(|(next, _)| *next == self.rejected[i].1) {
                self.rejected[i].1 = self.rejected.remove(i + 1).1;
            }
        } else if precedes {
            self.rejected[i].0 = offset;
        } else {
            self.rejected.insert(i, (offset, offset + 1));
        }
    }
}

/// The clocks of the partitions one worker reads, and the watermark the worker holds its capability at.
///
/// Partitions are identified by an index the source chooses (e.g. its position in the assignment); offsets are
/// their positions (Kafka offsets, line numbers).
///
/// ```
/// use std::time::{Duration, Instant};
/// use tributary_operators::event_time::{SourceClock, WatermarkPolicy};
/// let policy = WatermarkPolicy { idle_timeout: Some(Duration::from_secs(1)), ..Default::default() };
/// let start = Instant::now();
/// let mut clock = SourceClock::new(2, policy, start);
/// clock.observe(0, 0, 100, 0, start);
/// clock.observe(1, 0, 50, 0, start);
/// assert_eq!(clock.watermark(start), Some(50));
/// // Partition 1 has nothing to read for longer than the idle timeout: it stops holding the watermark back.
/// let later = start + Duration::from_secs(2);
/// clock.observe(0, 1, 200, 0, later);
/// assert_eq!(clock.watermark(later), Some(200));
/// // When it produces again it rejoins at the watermark reached, and the clock records that lift.
/// clock.observe(1, 1, 60, 0, later);
/// assert_eq!(clock.partition_watermark(1), 200);
/// assert_eq!(clock.history(1).lifts[0].floor, 200);
/// ```
#[derive(Clone, Debug)]
pub struct SourceClock {
    policy: WatermarkPolicy,
    partitions: Vec<PartitionState>,
    /// The watermark last reported: idle partitions rejoin at no less than this.
    reached: u64,
}

#[derive(Clone, Debug)]
struct PartitionState {
    clock: PartitionClock,
    /// The last time the partition had a record, or was known to have records to read.
    last_activity: Instant,
    finished: bool,
    /// The next offset to read, as far as the clock has seen.
    position: u64,
    /// Recorded decisions: lifts applied, rejections made (and restored ones).
    history: PartitionHistory,
    /// Restored lifts not reached yet, in offset order.
    pending: Vec<Lift>,
    /// The records that travel later than every record before them (their times strictly increase), from the
    /// first one after the last [`SourceClock::release_resume_points`] on: where [`SourceClock::resume_point`]
    /// finds the first record after a time.
    breakers: std::collections::VecDeque<(u64, ResumePoint)>,
    /// The latest dataflow time of any record read so far.
    latest: Option<u64>,
}

impl PartitionState {
    fn new(watermark: u64, now: Instant) -> Self {
        PartitionState {
            clock: PartitionClock::starting_at(watermark),
            last_activity: now,
            finished: false,
            position: 0,
            history: PartitionHistory::default(),
            pending: Vec::new(),
            breakers: std::collections::VecDeque::new(),
            latest: None,
        }
    }

    /// Raises the watermark to `floor` from `offset` on, recording the lift if it changes anything.
    fn lift(&mut self, offset: u64, floor: u64) {
        if floor > self.clock.watermark() {
            self.clock.lift(floor);
            self.history.lifts.push(Lift { offset, floor });
        }
    }

    /// Notes a record at `offset` travelling at `time`, read when the watermark was `before`.
    fn read(&mut self, offset: u64, time: u64, before: u64) {
        if self.latest.is_none_or(|latest| time > latest) {
            self.latest = Some(time);
            self.breakers.push_back((time, ResumePoint { offset, watermark: before }));
        }
    }

    /// Applies the restored lifts that `position` has reached.
    fn apply_pending(&mut self) {
        while let Some(lift) = self.pending.first().copied().filter(|l| l.offset <= self.position) {
            self.pending.remove(0);
            self.lift(lift.offset, lift.floor);
        }
    }
}

impl SourceClock {
    /// Clocks for `partitions` partitions, all starting at watermark 0 and active at `now`.
    pub fn new(partitions: usize, policy: WatermarkPolicy, now: Instant) -> Self {
        SourceClock { policy, partitions: (0..partitions).map(|_| PartitionState::new(0, now)).collect(), reached: 0 }
    }

    /// The policy in force.
    pub fn policy(&self) -> &WatermarkPolicy {
        &self.policy
    }

    /// Adds a partition (discovered while running), active from `now` and starting at the watermark reached
    /// (recorded as a lift from offset 0). Returns its index.
    pub fn add_partition(&mut self, now: Instant) -> usize {
        let mut state = PartitionState::new(0, now);
        state.lift(0, self.reached);
        self.partitions.push(state);
        self.partitions.len() - 1
    }

    /// Sets the watermark of `partition` (e.g. restored from stored positions).
    pub fn set_watermark(&mut self, partition: usize, watermark: u64) {
        self.partitions[partition].clock = PartitionClock::starting_at(watermark);
    }

    /// Restores what a previous run recorded for `partition` (its lifts and rejections, applied again at their
    /// offsets), plus `floor`: records from that offset on travel at that time or later. Call before reading.
    pub fn restore(&mut self, partition: usize, history: &PartitionHistory, floor: Option<Lift>) {
        let state = &mut self.partitions[partition];
        let mut pending: Vec<Lift> = history.lifts.clone();
        pending.extend(floor);
        pending.sort();
        state.pending = pending;
        state.history.rejected = history.rejected.clone();
        state.apply_pending();
    }

    /// Sets where reading of `partition` starts (its first offset): restored lifts before it apply at once.
    pub fn start_at(&mut self, partition: usize, position: u64) {
        let state = &mut self.partitions[partition];
        state.position = state.position.max(position);
        state.apply_pending();
    }

    /// What has been recorded for `partition`, restored lifts not reached yet included.
    pub fn history(&self, partition: usize) -> PartitionHistory {
        let state = &self.partitions[partition];
        let mut lifts = state.history.lifts.clone();
        lifts.extend(state.pending.iter().copied());
        PartitionHistory { lifts, rejected: state.history.rejected.clone() }
    }

    fn idle(&self, state: &PartitionState, now: Instant) -> bool {
        !state.finished && self.policy.idle_timeout.is_some_and(|t| now.saturating_duration_since(state.last_activity) > t)
    }

    /// Notes that `partition` is active at `now` with `position` the next offset to read: an idle partition
    /// rejoins at the watermark reached, from `position` on.
    fn touch(&mut self, partition: usize, position: u64, now: Instant) {
        let idle = self.idle(&self.partitions[partition], now);
        let reached = self.reached;
        let state = &mut self.partitions[partition];
        state.position = state.position.max(position);
        state.apply_pending();
        if idle {
            state.lift(position, reached);
        }
        state.last_activity = now;
    }

    /// Notes that `partition` has records waiting to be read (a backlog the reader knows of), so it is not idle.
    pub fn backlog(&mut self, partition: usize, position: u64, now: Instant) {
        self.touch(partition, position, now);
    }

    /// Decides where a record of `partition` at `offset` with `event_time` lands; `wall_ms` is the wall clock
    /// (ms since the Unix epoch) and `now` the monotonic clock.
    pub fn observe(&mut self, partition: usize, offset: u64, event_time: u64, wall_ms: u64, now: Instant) -> Arrival {
        self.touch(partition, offset, now);
        let policy = self.policy;
        let state = &mut self.partitions[partition];
        let before = state.clock.watermark();
        let ahead = |max: u64| event_time > wall_ms.saturating_add(max);
        let arrival = match policy.max_ahead_ms() {
            // A recorded rejection holds whatever the wall clock says now (and whatever the policy is).
            max if state.history.is_rejected(offset) => {
                Arrival::TooFarAhead { watermark: state.clock.watermark(), max_ahead_ms: max.unwrap_or_default() }
            }
            Some(max) if ahead(max) => {
                state.history.reject(offset);
                Arrival::TooFarAhead { watermark: state.clock.watermark(), max_ahead_ms: max }
            }
            _ => state.clock.observe(event_time, &policy),
        };
        state.read(offset, arrival.time(), before);
        state.position = state.position.max(offset + 1);
        state.apply_pending();
        arrival
    }

    /// Notes a record of `partition` at `offset` that has no event time (malformed); returns the partition's
    /// watermark, where such a record's dead letter travels.
    pub fn malformed(&mut self, partition: usize, offset: u64, now: Instant) -> u64 {
        self.touch(partition, offset, now);
        let state = &mut self.partitions[partition];
        let watermark = state.clock.watermark();
        state.read(offset, watermark, watermark);
        state.position = state.position.max(offset + 1);
        state.apply_pending();
        watermark
    }

    /// Where a replay of `partition` must start so that every record read so far whose dataflow time is after
    /// `after` is read again, and the partition's watermark there: the first record (by offset) with a later
    /// time, or the position if there is none. A replay from that point, with the partition's
    /// [`history`](SourceClock::history), assigns every record the time it had (records at times up to `after`
    /// among them are what a restored state already holds, for a caller to skip).
    ///
    /// Valid for every `after` at or above the last [`release_resume_points`](SourceClock::release_resume_points).
    pub fn resume_point(&self, partition: usize, after: u64) -> ResumePoint {
        let state = &self.partitions[partition];
        let i = state.breakers.partition_point(|(time, _)| *time <= after);
        match state.breakers.get(i) {
            Some((_, point)) => *point,
            None => ResumePoint { offset: state.position, watermark: state.clock.watermark() },
        }
    }

    /// Forgets what [`resume_point`](SourceClock::resume_point) needs only for times before `time`: call it
    /// once no resume point before `time` will be asked for (the source's capability has passed it).
    pub fn release_resume_points(&mut self, time: u64) {
        for state in &mut self.partitions {
            while state.breakers.front().is_some_and(|(t, _)| *t < time) {
                state.breakers.pop_front();
            }
        }
    }

    /// Marks `partition` as finished (bounded input read to its end): it no longer holds the watermark back.
    pub fn finish(&mut self, partition: usize) {
        self.partitions[partition].finished = true;
    }

    /// Whether `partition` is finished.
    pub fn is_finished(&self, partition: usize) -> bool {
        self.partitions[partition].finished
    }

    /// Whether every partition is finished.
    pub fn all_finished(&self) -> bool {
        self.partitions.iter().all(|p| p.finished)
    }

    /// How many partitions the clock holds.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The watermark of one partition.
    pub fn partition_watermark(&self, partition: usize) -> u64 {
        self.partitions[partition].clock.watermark()
    }

    /// The next offset of `partition` the clock expects.
    pub fn position(&self, partition: usize) -> u64 {
        self.partitions[partition].position
    }

    /// The worker's watermark at `now`: the minimum over partitions that are neither finished nor idle, or, when
    /// every unfinished partition is idle, the largest of their watermarks. Never decreases.
    ///
    /// `None` when every partition is finished.
    pub fn watermark(&mut self, now: Instant) -> Option<u64> {
        if self.all_finished() {
            return None;
        }
        let live = self.partitions.iter().filter(|p| !p.finished && !self.idle(p, now)).map(|p| p.clock.watermark()).min();
        // With every unfinished partition idle nothing holds the watermark back: it goes as far as the most
        // advanced of them (as Flink's watermark valve does when all its inputs are idle).
        let held = live.or_else(|| self.partitions.iter().filter(|p| !p.finished).map(|p| p.clock.watermark()).max());
        if let Some(held) = held {
            self.reached = self.reached.max(held);
        }
        Some(self.reached)
    }

    /// Whether every unfinished partition is idle at `now` (and there is at least one): the worker then holds
    /// nothing back itself and may follow the other workers' progress (see [`SourceClock::follow`]).
    pub fn all_idle(&self, now: Instant) -> bool {
        let mut unfinished = self.partitions.iter().filter(|p| !p.finished).peekable();
        unfinished.peek().is_some() && unfinished.all(|p| self.idle(p, now))
    }

    /// Raises the watermark reached to `watermark`, when every partition is idle and the rest of the cluster has
    /// got there. Partitions rejoin at no less than it.
    pub fn follow(&mut self, watermark: u64) {
        self.reached = self.reached.max(watermark);
    }

    /// When the next partition would turn idle, if any may: the source should look again then.
    pub fn next_idle_check(&self) -> Option<Instant> {
        let timeout = self.policy.idle_timeout?;
        // A timeout too long for the clock never ends: no check is due.
        self.partitions.iter().filter(|p| !p.finished).filter_map(|p| p.last_activity.checked_add(timeout)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(idle_ms: Option<u64>) -> WatermarkPolicy {
        WatermarkPolicy { idle_timeout: idle_ms.map(Duration::from_millis), max_ahead: None, ..Default::default() }
    }

    #[test]
    fn too_late_needs_a_maximum_lateness() {
        let policy = policy(None).max_lateness(Duration::from_millis(10));
        let mut clock = PartitionClock::default();
        clock.observe(100, &policy);
        assert_eq!(clock.observe(95, &policy), Arrival::Late { time: 100, behind_ms: 5 });
        assert_eq!(clock.observe(90, &policy), Arrival::Late { time: 100, behind_ms: 10 });
        assert_eq!(clock.observe(89, &policy), Arrival::TooLate { watermark: 100, behind_ms: 11 });
        assert_eq!(clock.watermark(), 100, "late records do not move the watermark");
    }

    #[test]
    fn idle_partition_rejoins_at_the_reached_watermark_and_the_lift_is_recorded() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, policy(Some(10)), t0);
        clock.observe(0, 0, 10, 0, t0);
        clock.observe(1, 0, 5, 0, t0);
        assert_eq!(clock.watermark(t0), Some(5));
        let t1 = t0 + Duration::from_millis(50);
        clock.observe(0, 1, 1000, 0, t1);
        assert_eq!(clock.watermark(t1), Some(1000));
        // Partition 1 comes back with an old record: it is late relative to where the worker got to.
        assert_eq!(clock.observe(1, 1, 6, 0, t1), Arrival::Late { time: 1000, behind_ms: 994 });
        assert_eq!(clock.watermark(t1), Some(1000));
        assert_eq!(clock.history(1).lifts, vec![Lift { offset: 1, floor: 1000 }]);
        assert!(clock.history(0).is_empty(), "partition 0 was never lifted");
    }

    #[test]
    fn a_replay_with_the_recorded_history_assigns_the_same_times_whatever_the_wall_clock() {
        let t0 = Instant::now();
        let mut first = SourceClock::new(2, policy(Some(10)), t0);
        first.observe(0, 0, 100, 0, t0);
        let t1 = t0 + Duration::from_millis(50);
        first.observe(0, 1, 900, 0, t1);
        first.watermark(t1);
        let times: Vec<Arrival> = (0..3).map(|o| first.observe(1, o, 50 + o, 0, t1)).collect();
        // The replay reads partition 1 first, with no idleness at all: the recorded lift gives the same times.
        let mut replay = SourceClock::new(2, policy(None), t0);
        replay.restore(1, &first.history(1), None);
        let again: Vec<Arrival> = (0..3).map(|o| replay.observe(1, o, 50 + o, 0, t0)).collect();
        assert_eq!(again, times);
    }

    #[test]
    fn a_restart_floor_lifts_records_not_read_before_the_commit() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(1, policy(None), t0);
        clock.restore(0, &PartitionHistory::default(), Some(Lift { offset: 2, floor: 500 }));
        assert_eq!(clock.observe(0, 0, 10, 0, t0), Arrival::OnTime { time: 10 });
        assert_eq!(clock.partition_watermark(0), 10);
        // Reading offset 1 brings the position to 2: the floor applies before the next record arrives.
        clock.observe(0, 1, 20, 0, t0);
        assert_eq!(clock.partition_watermark(0), 500);
        assert_eq!(clock.observe(0, 2, 30, 0, t0), Arrival::Late { time: 500, behind_ms: 470 });
        assert_eq!(clock.history(0).lifts, vec![Lift { offset: 2, floor: 500 }]);
    }

    #[test]
    fn far_future_records_are_rejected_and_the_rejection_is_recorded() {
        let t0 = Instant::now();
        let policy = policy(None).max_ahead(Some(Duration::from_secs(1)));
        let mut clock = SourceClock::new(1, policy, t0);
        assert_eq!(clock.observe(0, 0, 10_000, 10_000, t0), Arrival::OnTime { time: 10_000 });
        assert_eq!(clock.observe(0, 1, 32_503_680_000_000, 10_000, t0), Arrival::TooFarAhead { watermark: 10_000, max_ahead_ms: 1_000 });
        assert_eq!(clock.observe(0, 2, 10_500, 10_000, t0), Arrival::OnTime { time: 10_500 }, "the watermark did not move");
        assert_eq!(clock.history(0).rejected, vec![(1, 2)]);
        // A replay much later (the wall clock has passed the record) rejects it again.
        let mut replay = SourceClock::new(1, policy, t0);
        replay.restore(0, &clock.history(0), None);
        replay.observe(0, 0, 10_000, u64::MAX / 2, t0);
        assert!(matches!(replay.observe(0, 1, 32_503_680_000_000, u64::MAX / 2, t0), Arrival::TooFarAhead { .. }));
    }

    #[test]
    fn when_every_partition_is_idle_the_watermark_goes_to_the_most_advanced() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, policy(Some(10)), t0);
        clock.observe(0, 0, 900, 0, t0);
        clock.observe(1, 0, 100, 0, t0);
        assert_eq!(clock.watermark(t0), Some(100));
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(clock.watermark(t1), Some(900), "nothing holds it back");
        assert_eq!(clock.observe(1, 1, 150, 0, t1), Arrival::Late { time: 900, behind_ms: 750 }, "partition 1 rejoins at 900");
    }

    #[test]
    fn a_partition_with_a_backlog_is_not_idle() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, policy(Some(10)), t0);
        clock.observe(0, 0, 10, 0, t0);
        clock.observe(1, 0, 5, 0, t0);
        let t1 = t0 + Duration::from_millis(50);
        clock.backlog(1, 1, t1);
        clock.observe(0, 1, 1000, 0, t1);
        assert_eq!(clock.watermark(t1), Some(5), "partition 1 has records waiting: it holds the watermark");
        assert!(clock.history(1).is_empty());
    }

    #[test]
    fn finished_partitions_release_the_watermark() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, policy(None), t0);
        clock.observe(0, 0, 10, 0, t0);
        assert_eq!(clock.watermark(t0), Some(0));
        clock.finish(1);
        assert_eq!(clock.watermark(t0), Some(10));
        clock.finish(0);
        assert_eq!(clock.watermark(t0), None);
    }

    /// Reads `record` (at `offset`) into `clock`; returns its dataflow time.
    fn read(clock: &mut SourceClock, partition: usize, offset: u64, (event_time, malformed): (u64, bool), now: Instant) -> u64 {
        if malformed {
            return clock.malformed(partition, offset, now);
        }
        clock.observe(partition, offset, event_time, 0, now).time()
    }

    proptest::proptest! {
        /// The invariant checkpoints rest on, at every snapshot of a run of two partitions with disorder,
        /// lateness, malformed records and idleness: a replay of a partition from its resume point for a time `c`, with
        /// its history, reads every record whose dataflow time is after `c` again (none is before the point), and
        /// assigns every record from the point on the time it had, whatever idleness decided in between.
        #[test]
        fn a_replay_from_the_resume_point_reads_every_later_record_again_at_its_time(
            events in proptest::collection::vec((0usize..2, 0u64..1_000, 0u64..30, proptest::bool::weighted(0.05)), 1..300),
            ooo in 0u64..50,
            idle in proptest::option::of(1u64..40),
            lateness in proptest::option::of(0u64..100),
        ) {
            let policy = WatermarkPolicy {
                max_out_of_orderness: Duration::from_millis(ooo),
                idle_timeout: idle.map(Duration::from_millis),
                max_lateness: lateness.map(Duration::from_millis),
                max_ahead: None,
            };
            let t0 = Instant::now();
            let mut now = t0;
            let mut clock = SourceClock::new(2, policy, t0);
            // Per partition: (event time, malformed) by offset, and the dataflow time each record got.
            let mut records: [Vec<(u64, bool)>; 2] = Default::default();
            let mut times: [Vec<u64>; 2] = Default::default();
            let mut cap = 0;
            // Per snapshot: its time, and per partition the resume point, position and history then.
            let mut snapshots: Vec<(u64, Vec<(ResumePoint, u64, PartitionHistory)>)> = Vec::new();
            for &(partition, event_time, gap, malformed) in &events {
                now += Duration::from_millis(gap);
                let offset = records[partition].len() as u64;
                records[partition].push((event_time, malformed));
                let time = read(&mut clock, partition, offset, (event_time, malformed), now);
                proptest::prop_assert!(time >= cap, "a record travels no earlier than the source's capability");
                times[partition].push(time);
                // As the source operator does: a snapshot at the capability just before it moves past it.
                if let Some(watermark) = clock.watermark(now).filter(|w| *w > cap) {
                    let state = (0..2).map(|p| (clock.resume_point(p, cap), clock.position(p), clock.history(p))).collect();
                    snapshots.push((cap, state));
                    cap = watermark;
                    clock.release_resume_points(cap);
                }
            }
            for (c, state) in &snapshots {
                for (partition, (point, position, history_then)) in state.iter().enumerate() {
                    for (offset, time) in times[partition].iter().enumerate() {
                        proptest::prop_assert!(
                            *time <= *c || offset as u64 >= point.offset,
                            "partition {partition}: the record at {offset} travels at {time}, after {c}, but the resume point is {point:?}"
                        );
                    }
                    // A replay with everything recorded since, and one with what was recorded at the snapshot (valid up to
                    // the position then: a restart lifts what follows above the commit).
                    for (history, end) in [(clock.history(partition), records[partition].len() as u64), (history_then.clone(), *position)] {
                        // Only what is recorded from the point on: what came before is in the point's watermark.
                        let history = PartitionHistory {
                            lifts: history.lifts.iter().copied().filter(|l| l.offset >= point.offset).collect(),
                            rejected: history.rejected.iter().copied().filter(|(_, to)| *to > point.offset).collect(),
                        };
                        let mut replay = SourceClock::new(1, policy, t0);
                        replay.set_watermark(0, point.watermark);
                        replay.restore(0, &history, None);
                        replay.start_at(0, point.offset);
                        for offset in point.offset..end {
                            let time = read(&mut replay, 0, offset, records[partition][offset as usize], t0);
                            proptest::prop_assert_eq!(time, times[partition][offset as usize], "partition {}, offset {}", partition, offset);
                        }
                    }
                }
            }
        }
    }
}
