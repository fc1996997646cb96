//! A reproducible, partitioned event stream, and the time model sources apply to it.
//!
//! The `n`-th event of the global sequence belongs to partition `n % partitions` (the same split a loader uses
//! for Kafka partitions), so a partition's events, and therefore its records' dataflow times, do not depend on
//! how many workers or processes read them: results are the same for any layout.

use crate::event::Event;

/// The generator's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Events in total.
    pub events: u64,
    /// Logical partitions the sequence is split into.
    pub partitions: u32,
    /// Event time of the first event (epoch ms); fixed for reproducible runs.
    pub base_time: u64,
    /// The generator's disorder: events are shuffled in groups of this size (1: in order).
    pub out_of_order_group_size: usize,
    /// Event-time rate (events per second of event time).
    pub rate: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { events: 1_000_000, partitions: 8, base_time: 1_700_000_000_000, out_of_order_group_size: 1_000, rate: 10_000 }
    }
}

/// The watermark delay of every Nexmark source: `date_time - 4 s` (the standard definition).
pub const MAX_OUT_OF_ORDERNESS_MS: u64 = 4_000;

impl Config {
    fn nexmark(&self) -> nexmark::config::NexmarkConfig {
        nexmark::config::NexmarkConfig {
            base_time: self.base_time,
            out_of_order_group_size: self.out_of_order_group_size,
            first_rate: self.rate,
            next_rate: self.rate,
            ..Default::default()
        }
    }

    /// The events of `partition`, in order, with their global sequence numbers.
    pub fn partition(&self, partition: u32) -> impl Iterator<Item = (u64, Event)> + use<> {
        let step = u64::from(self.partitions.max(1));
        let first = u64::from(partition);
        let count = if first < self.events { (self.events - first).div_ceil(step) } else { 0 };
        nexmark::EventGenerator::new(self.nexmark())
            .with_offset(first)
            .with_step(step)
            .take(count as usize)
            .enumerate()
            .map(move |(i, event)| (first + i as u64 * step, Event::from(event)))
    }

    /// Every event with its partition and dataflow time, in sequence order (for references and loaders).
    pub fn all(&self) -> Vec<(u32, Event, u64)> {
        let mut clocks = vec![PartitionClock::default(); self.partitions.max(1) as usize];
        let mut events: Vec<(u64, u32, Event)> =
            (0..self.partitions.max(1)).flat_map(|p| self.partition(p).map(move |(n, e)| (n, p, e))).collect();
        events.sort_by_key(|(n, _, _)| *n);
        events
            .into_iter()
            .map(|(_, p, event)| {
                let time = clocks[p as usize].time(event.date_time());
                (p, event, time)
            })
            .collect()
    }
}

/// One partition's watermark: its greatest event time so far minus [`MAX_OUT_OF_ORDERNESS_MS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PartitionClock {
    watermark: u64,
}

impl PartitionClock {
    /// The dataflow time of a record with `event_time` arriving now: `max(event_time, watermark)`; then the
    /// watermark advances.
    pub fn time(&mut self, event_time: u64) -> u64 {
        let time = event_time.max(self.watermark);
        self.watermark = self.watermark.max(event_time.saturating_sub(MAX_OUT_OF_ORDERNESS_MS));
        time
    }

    /// The watermark: no later record of this partition gets an earlier time.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }
}
