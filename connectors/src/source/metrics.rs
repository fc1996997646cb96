//! Per-partition counters, and the committed positions that wait for the sinks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use timely::dataflow::ProbeHandle;

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
    /// Records stamped too far ahead of the wall clock (sent to the dead-letter output).
    pub too_far_ahead: u64,
}

/// The per-partition counters of a source on this worker, shared with whoever reports metrics.
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    pub(super) partitions: Arc<Mutex<Vec<PartitionMetrics>>>,
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
    pub(super) fn frontier(&self) -> Option<u64> {
        let probes = self.probes.borrow();
        (!probes.is_empty()).then(|| probes.iter().filter_map(|p| p.with_frontier(|f| f.first().copied())).min().unwrap_or(u64::MAX))
    }
}

/// A source's reader with its commit bookkeeping: when the operator goes away, committed positions are brought
/// up to date before the reader is dropped (a Kafka reader's last commit for lag tools happens on drop).
pub(super) struct Closing<R> {
    pub(super) reader: R,
    pub(super) commits: Commits,
    pub(super) after: CommitAfter,
    pub(super) metrics: SourceMetrics,
}

impl<R> Closing<R> {
    pub(super) fn advance_commits(&mut self) -> bool {
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
pub(super) struct Commits {
    marks: Vec<VecDeque<(u64, u64)>>,
    greatest: Vec<u64>,
}

impl Commits {
    /// Records that everything before `position` of `partition` has times up to the greatest seen so far.
    pub(super) fn mark(&mut self, partition: usize, position: u64, time: u64) {
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

/// The sources of this process whose counters the metrics endpoint reports: (operator name, worker, counters).
static EXPORTED: Mutex<Vec<(String, usize, SourceMetrics)>> = Mutex::new(Vec::new());

/// Reports `metrics` (the counters of source `name` on `worker`) at the process's metrics endpoint
/// ([`tributary_runtime::metrics`]); the first source registers the collector.
pub(crate) fn export(name: &str, worker: usize, metrics: &SourceMetrics) {
    let mut exported = EXPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if exported.is_empty() {
        let mut registry = tributary_runtime::metrics::registry().lock().unwrap_or_else(|e| e.into_inner());
        registry.register_collector(Box::new(SourceCollector));
        registry.register_collector(Box::new(crate::metrics::StateCollector));
        tributary_runtime::progress::report(progress);
    }
    exported.push((name.to_owned(), worker, metrics.clone()));
}

/// The progress line's view of every exported source: records, lag, lowest watermark, dead letters.
fn progress() -> tributary_runtime::progress::Status {
    let exported = EXPORTED.lock().unwrap_or_else(|e| e.into_inner());
    let mut status = tributary_runtime::progress::Status::default();
    for (_, _, metrics) in exported.iter() {
        for m in metrics.snapshot() {
            status.records = status.records.saturating_add(m.records);
            status.dead_letters = status.dead_letters.saturating_add(m.malformed + m.too_late + m.too_far_ahead);
            if let Some(end) = m.end {
                status.lag = Some(status.lag.unwrap_or(0).saturating_add(end.saturating_sub(m.position)));
            }
            if m.watermark > 0 {
                status.watermark = Some(status.watermark.map_or(m.watermark, |w| w.min(m.watermark)));
            }
        }
    }
    status
}

/// Encodes every exported source's partitions on each scrape, one family per metric (docs/metrics.md).
#[derive(Debug)]
struct SourceCollector;

impl prometheus_client::collector::Collector for SourceCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let exported = EXPORTED.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = crate::source::wall_ms();
        // (labels, partition) for every partition of every source of the process.
        let partitions: Vec<([(&'static str, String); 4], PartitionMetrics)> = exported
            .iter()
            .flat_map(|(name, worker, metrics)| {
                metrics.snapshot().into_iter().map(move |m| {
                    let labels = [
                        ("source", name.clone()),
                        ("origin", m.source.clone()),
                        ("partition", m.partition.to_string()),
                        ("worker", worker.to_string()),
                    ];
                    (labels, m)
                })
            })
            .collect();
        drop(exported);

        type Counter = fn(&PartitionMetrics) -> u64;
        let counters: [(&str, &str, Counter); 3] = [
            ("tributary_source_records", "Records read into the dataflow (late ones included)", |m| m.records),
            ("tributary_source_late_records", "Records that arrived behind their partition's watermark (kept)", |m| m.late),
            ("tributary_source_dead_letters", "Records sent to the dead letters, by reason", |_| 0),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (labels, m) in &partitions {
                if name == "tributary_source_dead_letters" {
                    for (reason, n) in [("malformed", m.malformed), ("too_late", m.too_late), ("too_far_ahead", m.too_far_ahead)] {
                        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).chain([("reason", reason)]).collect();
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                } else {
                    ConstCounter::new(value(m)).encode(family.encode_family(labels)?)?;
                }
            }
        }
        type Gauge = fn(&PartitionMetrics, u64) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 6] = [
            ("tributary_source_position", "The next offset (or line) to read", |m, _| Some(m.position as f64)),
            ("tributary_source_committed_position", "The position up to which every record's output is written", |m, _| {
                Some(m.committed as f64)
            }),
            ("tributary_source_end_offset", "The partition's end (Kafka high watermark) as last seen", |m, _| m.end.map(|e| e as f64)),
            ("tributary_source_lag", "Records in the partition not read yet (end offset - position)", |m, _| {
                m.end.map(|e| e.saturating_sub(m.position) as f64)
            }),
            ("tributary_source_watermark_seconds", "The partition's event-time watermark (seconds since the Unix epoch)", |m, _| {
                Some(m.watermark as f64 / 1000.0)
            }),
            ("tributary_source_watermark_delay_seconds", "How far the watermark is behind the wall clock", |m, now| {
                (m.watermark > 0).then(|| now.saturating_sub(m.watermark) as f64 / 1000.0)
            }),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for (labels, m) in &partitions {
                if let Some(v) = value(m, now_ms) {
                    ConstGauge::new(v).encode(family.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}
