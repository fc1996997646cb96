//! The connectors' metrics at the process's endpoint ([`tributary_runtime::metrics`]): sources report their
//! partitions (`source::metrics`), sinks the records they wrote, jobs their commits. Listed in docs/metrics.md.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

type Labels = Vec<(String, String)>;

pub(crate) struct Metrics {
    /// Records a sink handed to Kafka, by sink and topic.
    pub(crate) sink_records: Family<Labels, Counter>,
    /// Commits written and acknowledged, by commit log.
    pub(crate) commits: Family<Labels, Counter>,
    /// From sending a commit to its acknowledgement, by commit log.
    pub(crate) commit_latency: Family<Labels, Histogram>,
    /// The dataflow time of the last acknowledged commit (ms), by commit log.
    pub(crate) committed_time: Family<Labels, Gauge>,
    /// Checkpoint parts a worker wrote, by worker.
    pub(crate) checkpoint_parts: Family<Labels, Counter>,
    /// Bytes of the last checkpoint part a worker wrote, by worker.
    pub(crate) checkpoint_bytes: Family<Labels, Gauge>,
    /// Serializing and writing one worker's part of a checkpoint, by worker.
    pub(crate) checkpoint_duration: Family<Labels, Histogram>,
    /// The dataflow time of the newest committed checkpoint (ms), by commit log.
    pub(crate) checkpoint_time: Family<Labels, Gauge>,
    /// The wall-clock time the newest checkpoint was committed (Unix seconds), by commit log.
    pub(crate) checkpoint_committed_at: Family<Labels, Gauge>,
    /// Checkpoints restored at start (0 or 1 per process run), by commit log.
    pub(crate) checkpoint_restores: Family<Labels, Counter>,
}

/// The connectors' metrics, registered at the process's endpoint on first use.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let latency: fn() -> Histogram = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let metrics = Metrics {
            sink_records: Family::default(),
            commits: Family::default(),
            commit_latency: Family::new_with_constructor(latency),
            committed_time: Family::default(),
            checkpoint_parts: Family::default(),
            checkpoint_bytes: Family::default(),
            checkpoint_duration: Family::new_with_constructor(latency),
            checkpoint_time: Family::default(),
            checkpoint_committed_at: Family::default(),
            checkpoint_restores: Family::default(),
        };
        let mut registry = tributary_runtime::metrics::registry().lock().unwrap_or_else(|e| e.into_inner());
        registry.register("tributary_sink_records", "Records a sink handed to Kafka", metrics.sink_records.clone());
        registry.register("tributary_commits", "Commits of exactly-once jobs written and acknowledged", metrics.commits.clone());
        registry.register_with_unit(
            "tributary_commit_latency",
            "From writing a commit to its acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            metrics.commit_latency.clone(),
        );
        registry.register(
            "tributary_committed_time_milliseconds",
            "The dataflow (event) time of the last acknowledged commit",
            metrics.committed_time.clone(),
        );
        registry.register("tributary_checkpoint_parts", "Checkpoint parts a worker wrote", metrics.checkpoint_parts.clone());
        registry.register_with_unit(
            "tributary_checkpoint_part",
            "Size of the last checkpoint part a worker wrote",
            prometheus_client::registry::Unit::Bytes,
            metrics.checkpoint_bytes.clone(),
        );
        registry.register_with_unit(
            "tributary_checkpoint_write",
            "Writing one worker's part of a checkpoint (files fsynced, manifest sealed)",
            prometheus_client::registry::Unit::Seconds,
            metrics.checkpoint_duration.clone(),
        );
        registry.register(
            "tributary_checkpoint_time_milliseconds",
            "The dataflow (event) time of the newest committed checkpoint",
            metrics.checkpoint_time.clone(),
        );
        registry.register(
            "tributary_checkpoint_committed_at_seconds",
            "When the newest checkpoint was committed (Unix time): its age is now minus this",
            metrics.checkpoint_committed_at.clone(),
        );
        registry.register(
            "tributary_checkpoint_restores",
            "Checkpoints restored when the job started",
            metrics.checkpoint_restores.clone(),
        );
        drop(registry);
        metrics
    })
}

/// Labels from `(name, value)` pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Encodes the state sizes the operators report ([`tributary_operators::state`]) on each scrape.
#[derive(Debug)]
pub(crate) struct StateCollector;

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;

        let sizes = tributary_operators::state::sizes();
        let mut family = encoder.encode_descriptor(
            "tributary_operator_state_entries",
            "Entries an operator holds (kind=held: window-key states, session keys, join records, table keys) or has buffered until the frontier passes their time (kind=buffered)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for size in sizes {
            let worker = size.worker.to_string();
            let labels = [("operator", size.operator.as_str()), ("worker", worker.as_str()), ("kind", size.kind)];
            ConstGauge::new(size.entries as i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "tributary_operator_records",
            "Updates a Tributary operator received (direction=received, all inputs) and emitted on its results (direction=emitted)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for counts in tributary_operators::state::records() {
            let worker = counts.worker.to_string();
            for (direction, n) in [("received", counts.received), ("emitted", counts.emitted)] {
                let labels = [("operator", counts.operator.as_str()), ("worker", worker.as_str()), ("direction", direction)];
                prometheus_client::metrics::counter::ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
