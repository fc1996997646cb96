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

/// The watermark policy of every Nexmark source, for the operators' time model
/// ([`tributary_operators::PartitionClock`], or a Kafka source's options): the standard 4 s delay, and no limit
/// ahead of the wall clock (generated times start at a fixed base time).
pub fn policy() -> tributary_operators::WatermarkPolicy {
    tributary_operators::WatermarkPolicy::default()
        .max_out_of_orderness(std::time::Duration::from_millis(MAX_OUT_OF_ORDERNESS_MS))
        .max_ahead(None)
}

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
    ///
    /// The times come from this function's own arithmetic (`max(event time, greatest event time so far - 4 s)`
    /// per partition), not from the operators' time model the programs use: the references stay independent of
    /// what they check.
    pub fn all(&self) -> Vec<(u32, Event, u64)> {
        let mut watermarks = vec![0u64; self.partitions.max(1) as usize];
        let mut events: Vec<(u64, u32, Event)> =
            (0..self.partitions.max(1)).flat_map(|p| self.partition(p).map(move |(n, e)| (n, p, e))).collect();
        events.sort_by_key(|(n, _, _)| *n);
        events
            .into_iter()
            .map(|(_, p, event)| {
                let (event_time, watermark) = (event.date_time(), &mut watermarks[p as usize]);
                let time = event_time.max(*watermark);
                *watermark = (*watermark).max(event_time.saturating_sub(MAX_OUT_OF_ORDERNESS_MS));
                (p, event, time)
            })
            .collect()
    }
}
