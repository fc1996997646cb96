//! Backpressure: how far a source may read ahead of the dataflow, so a backlog is drained with bounded memory.

use std::collections::BTreeMap;

use timely::dataflow::ProbeHandle;

/// Limits on how far a source reads ahead of the dataflow, so a backlog is drained with bounded memory.
#[derive(Clone, Debug)]
pub struct Backpressure {
    /// The probe at the end of the dataflow (or wherever "done" is measured).
    pub probe: ProbeHandle<u64>,
    /// Do not read while the source's watermark is this far ahead of the probe's frontier.
    pub max_ahead: Option<std::time::Duration>,
    /// Do not read while this many emitted records are at times the probe has not passed. A source checks before
    /// it reads a batch, and while waiting still reads from the partitions that hold the dataflow's frontier back
    /// (or nothing could complete). With event times that rise in each partition and no out-of-orderness, the
    /// records in flight per source instance stay below this plus two batches (`SourceOptions::batch`); with an
    /// out-of-orderness D, the partition holding the frontier is read until its records pass the frontier by D,
    /// and those records count on top.
    pub max_records: Option<usize>,
}

/// Records emitted per dataflow time the backpressure probe has not passed yet, and their total.
#[derive(Default)]
pub(super) struct Outstanding {
    by_time: BTreeMap<u64, usize>,
    total: usize,
}

impl Outstanding {
    pub(super) fn add(&mut self, time: u64) {
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

/// Whether the source must wait for the dataflow to catch up: then the probe's frontier, the time the whole
/// dataflow (every worker) has not completed. Only partitions at or behind it can move it on.
pub(super) fn throttled(bp: &Backpressure, outstanding: &mut Outstanding, watermark: u64) -> Option<u64> {
    let frontier = bp.probe.with_frontier(|f| f.first().copied())?;
    outstanding.complete_before(frontier);
    let ahead = bp.max_ahead.is_some_and(|ahead| watermark > frontier.saturating_add(tributary_operators::event_time::ms(ahead)));
    (ahead || bp.max_records.is_some_and(|max| outstanding.total >= max)).then_some(frontier)
}
