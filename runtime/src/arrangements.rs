//! The sizes of differential-dataflow arrangements, from differential's `differential/arrange` event log, for
//! the metrics endpoint (`tributary_arrangement_records`, docs/metrics.md).
//!
//! An arrangement's size is the number of updates in its batches: every new batch adds its length, every
//! completed merge replaces its two inputs' lengths by its output's, every dropped batch subtracts its length
//! (the accounting Materialize uses). Operators are named from timely's operator log. Both logs are turned on
//! only with `--metrics-addr`: without it nothing is logged or counted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use timely::logging::{TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

/// Per (worker, operator id): its arrangement's updates.
static SIZES: Mutex<BTreeMap<(usize, usize), i64>> = Mutex::new(BTreeMap::new());
/// Per (worker, operator id): the operator's name (timely's log may deliver it after differential's events).
static NAMES: Mutex<BTreeMap<(usize, usize), String>> = Mutex::new(BTreeMap::new());

/// The arrangements of this process: (operator name, worker, updates held).
pub fn sizes() -> Vec<(String, usize, i64)> {
    let sizes = SIZES.lock().unwrap_or_else(|e| e.into_inner());
    let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let name = |key: &(usize, usize)| names.get(key).cloned().unwrap_or_else(|| format!("operator {}", key.1));
    sizes.iter().map(|(key, records)| (name(key), key.0, *records)).collect()
}

/// Turns on both logs for `worker`'s dataflows built from now on.
pub(crate) fn log(worker: &mut Worker) {
    let index = worker.index();
    let Some(mut register) = worker.log_register() else { return };
    register.insert::<TimelyEventBuilder, _>("timely", move |_time, events| {
        for (_, event) in events.iter().flatten() {
            if let TimelyEvent::Operates(operates) = event {
                NAMES.lock().unwrap_or_else(|e| e.into_inner()).insert((index, operates.id), operates.name.clone());
            }
        }
    });
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_time, events| {
        let Some(events) = events else { return };
        let mut sizes = SIZES.lock().unwrap_or_else(|e| e.into_inner());
        for (_, event) in events.iter() {
            let (operator, change) = match event {
                DifferentialEvent::Batch(batch) => (batch.operator, batch.length as i64),
                DifferentialEvent::Merge(merge) => match merge.complete {
                    Some(complete) => (merge.operator, complete as i64 - merge.length1 as i64 - merge.length2 as i64),
                    None => continue,
                },
                DifferentialEvent::Drop(drop) => (drop.operator, -(drop.length as i64)),
                _ => continue,
            };
            let entry = sizes.entry((index, operator)).or_insert(0);
            *entry += change;
            if *entry <= 0 {
                sizes.remove(&(index, operator));
            }
        }
    });
}

/// Encodes [`sizes`] on each scrape.
#[derive(Debug)]
pub(crate) struct Collector;

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;

        let mut family = encoder.encode_descriptor(
            "tributary_arrangement_records",
            "Updates held in a differential arrangement (its batches), by the arranging operator",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (operator, worker, records) in sizes() {
            let worker = worker.to_string();
            let labels = [("operator", operator.as_str()), ("worker", worker.as_str())];
            ConstGauge::new(records).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
