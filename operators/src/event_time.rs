//! Event time and watermarks: the time model every source shares.
//!
//! Dataflow timestamps are event time in milliseconds (`u64`). Each partition of a source keeps a
//! [`PartitionClock`]: its watermark is the largest event time seen minus the allowed out-of-orderness, and a
//! record's dataflow time is `max(event_time, watermark when it arrived)`. That depends only on the partition's
//! own history, so a replay from the same offsets assigns the same times.
//!
//! A record whose event time is behind its partition's watermark is *late*: it keeps its event time as data and
//! travels at the watermark. If the source has a maximum lateness and the record is further behind than that, it
//! is *too late* and goes to the late output instead of the main stream.
//!
//! A [`SourceClock`] holds the clocks of the partitions one worker reads. Its watermark, where the worker holds its
//! capability, is the minimum over live partitions; a partition that has been idle (no record) for longer than the
//! idle timeout stops holding it back. When an idle partition produces again it rejoins at no less than the
//! watermark the worker has reached, so its records are never behind the worker's capability. Idleness is the one
//! wall-clock input to the time model: a replay that sees different idle periods may assign different times.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A record with the event time it was read with. Late records keep their event time here while they travel at
/// their partition's watermark.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timed<T> {
    /// Event time in ms.
    pub event_time: u64,
    /// The decoded record.
    pub value: T,
}

/// How a source turns event times into watermarks. The default: no out-of-orderness, no idleness, no maximum
/// lateness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatermarkPolicy {
    /// How far behind the largest event time seen a record may be and still be on time, in ms.
    pub max_out_of_orderness_ms: u64,
    /// A partition without records for this long stops holding back the watermark. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Records further behind the watermark than this (in ms) go to the late output. `None`: late records stay in
    /// the main stream, at the watermark, and the operators decide (e.g. a window's allowed lateness).
    pub max_lateness_ms: Option<u64>,
}

/// Where a record lands in time, as decided by its partition's clock.
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
}

/// The event-time clock of one partition.
///
/// ```
/// use tributary_operators::event_time::{Arrival, PartitionClock, WatermarkPolicy};
/// let policy = WatermarkPolicy { max_out_of_orderness_ms: 5, ..Default::default() };
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
            self.watermark = watermark.max(event_time.saturating_sub(policy.max_out_of_orderness_ms));
            return Arrival::OnTime { time: event_time };
        }
        let behind_ms = watermark - event_time;
        match policy.max_lateness_ms {
            Some(max) if behind_ms > max => Arrival::TooLate { watermark, behind_ms },
            _ => Arrival::Late { time: watermark, behind_ms },
        }
    }

    /// Raises the watermark to at least `floor` (used when an idle partition rejoins).
    pub fn lift(&mut self, floor: u64) {
        self.watermark = self.watermark.max(floor);
    }
}

/// The clocks of the partitions one worker reads, and the watermark the worker holds its capability at.
///
/// Partitions are identified by an index the source chooses (e.g. its position in the assignment).
///
/// ```
/// use std::time::{Duration, Instant};
/// use tributary_operators::event_time::{SourceClock, WatermarkPolicy};
/// let policy = WatermarkPolicy { idle_timeout: Some(Duration::from_secs(1)), ..Default::default() };
/// let start = Instant::now();
/// let mut clock = SourceClock::new(2, policy, start);
/// clock.observe(0, 100, start);
/// clock.observe(1, 50, start);
/// assert_eq!(clock.watermark(start), Some(50));
/// // Partition 1 says nothing for longer than the idle timeout: it stops holding the watermark back.
/// let later = start + Duration::from_secs(2);
/// clock.observe(0, 200, later);
/// assert_eq!(clock.watermark(later), Some(200));
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
    last_record: Instant,
    finished: bool,
}

impl SourceClock {
    /// Clocks for `partitions` partitions, all starting at watermark 0 and active at `now`.
    pub fn new(partitions: usize, policy: WatermarkPolicy, now: Instant) -> Self {
        let fresh = PartitionState { clock: PartitionClock::default(), last_record: now, finished: false };
        SourceClock { policy, partitions: vec![fresh; partitions], reached: 0 }
    }

    /// The policy in force.
    pub fn policy(&self) -> &WatermarkPolicy {
        &self.policy
    }

    /// Adds a partition (discovered while running), active from `now` and starting at the watermark reached.
    /// Returns its index.
    pub fn add_partition(&mut self, now: Instant) -> usize {
        let clock = PartitionClock::starting_at(self.reached);
        self.partitions.push(PartitionState { clock, last_record: now, finished: false });
        self.partitions.len() - 1
    }

    /// Sets the watermark of `partition` (e.g. restored from stored positions).
    pub fn restore(&mut self, partition: usize, watermark: u64) {
        self.partitions[partition].clock = PartitionClock::starting_at(watermark);
    }

    /// Decides where a record of `partition` with `event_time` lands, at wall-clock time `now`.
    pub fn observe(&mut self, partition: usize, event_time: u64, now: Instant) -> Arrival {
        let idle_timeout = self.policy.idle_timeout;
        let state = &mut self.partitions[partition];
        if idle_timeout.is_some_and(|t| now.duration_since(state.last_record) > t) {
            // Rejoining after idleness: the worker may have moved on without this partition.
            state.clock.lift(self.reached);
        }
        state.last_record = now;
        state.clock.observe(event_time, &self.policy)
    }

    /// Marks `partition` as finished (bounded input read to its end): it no longer holds the watermark back.
    pub fn finish(&mut self, partition: usize) {
        self.partitions[partition].finished = true;
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

    /// The worker's watermark at `now`: the minimum over partitions that are neither finished nor idle.
    ///
    /// `None` when every partition is finished. When all unfinished partitions are idle, the watermark stays
    /// where it was.
    pub fn watermark(&mut self, now: Instant) -> Option<u64> {
        if self.all_finished() {
            return None;
        }
        let idle_timeout = self.policy.idle_timeout;
        let live = self
            .partitions
            .iter()
            .filter(|p| !p.finished && idle_timeout.is_none_or(|t| now.duration_since(p.last_record) <= t))
            .map(|p| p.clock.watermark())
            .min();
        if let Some(live) = live {
            self.reached = self.reached.max(live);
        }
        Some(self.reached)
    }

    /// Whether every unfinished partition is idle at `now` (and there is at least one): the worker then holds
    /// nothing back itself and may follow the other workers' progress (see [`SourceClock::follow`]).
    pub fn all_idle(&self, now: Instant) -> bool {
        let Some(timeout) = self.policy.idle_timeout else { return false };
        let mut unfinished = self.partitions.iter().filter(|p| !p.finished).peekable();
        unfinished.peek().is_some() && unfinished.all(|p| now.duration_since(p.last_record) > timeout)
    }

    /// Raises the watermark reached to `watermark`, when every partition is idle and the rest of the cluster has
    /// got there. Partitions rejoin at no less than it.
    pub fn follow(&mut self, watermark: u64) {
        self.reached = self.reached.max(watermark);
    }

    /// When the next partition would turn idle, if any may: the source should look again then.
    pub fn next_idle_check(&self) -> Option<Instant> {
        let timeout = self.policy.idle_timeout?;
        self.partitions.iter().filter(|p| !p.finished).map(|p| p.last_record + timeout).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_late_needs_a_maximum_lateness() {
        let policy = WatermarkPolicy { max_out_of_orderness_ms: 0, idle_timeout: None, max_lateness_ms: Some(10) };
        let mut clock = PartitionClock::default();
        clock.observe(100, &policy);
        assert_eq!(clock.observe(95, &policy), Arrival::Late { time: 100, behind_ms: 5 });
        assert_eq!(clock.observe(90, &policy), Arrival::Late { time: 100, behind_ms: 10 });
        assert_eq!(clock.observe(89, &policy), Arrival::TooLate { watermark: 100, behind_ms: 11 });
        assert_eq!(clock.watermark(), 100, "late records do not move the watermark");
    }

    #[test]
    fn idle_partition_rejoins_at_the_reached_watermark() {
        let policy = WatermarkPolicy { idle_timeout: Some(Duration::from_millis(10)), ..Default::default() };
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, policy, t0);
        clock.observe(0, 10, t0);
        clock.observe(1, 5, t0);
        assert_eq!(clock.watermark(t0), Some(5));
        let t1 = t0 + Duration::from_millis(50);
        clock.observe(0, 1000, t1);
        assert_eq!(clock.watermark(t1), Some(1000));
        // Partition 1 comes back with an old record: it is late relative to where the worker got to.
        assert_eq!(clock.observe(1, 6, t1), Arrival::Late { time: 1000, behind_ms: 994 });
        assert_eq!(clock.watermark(t1), Some(1000));
    }

    #[test]
    fn finished_partitions_release_the_watermark() {
        let t0 = Instant::now();
        let mut clock = SourceClock::new(2, WatermarkPolicy::default(), t0);
        clock.observe(0, 10, t0);
        assert_eq!(clock.watermark(t0), Some(0));
        clock.finish(1);
        assert_eq!(clock.watermark(t0), Some(10));
        clock.finish(0);
        assert_eq!(clock.watermark(t0), None);
    }
}
