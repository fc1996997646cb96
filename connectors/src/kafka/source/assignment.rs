//! Which worker reads which partition, and finding partitions added while the job runs.
//!
//! Assignment is ours (`assign`, never group subscription): partition `p` of topic `t` belongs to worker
//! `(fnv1a(t) + p) % peers`, the same answer in every process. Partitions added while running are found by a
//! background metadata poll and go to the worker the formula names, or, if that worker owned nothing at start
//! (and so has finished), to one of the workers that did, by the same rule over those.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// 32-bit FNV-1a: a stable hash, the same in every process and build.
pub(super) fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c9dc5u32, |hash, byte| (hash ^ byte as u32).wrapping_mul(0x01000193))
}

/// The worker that reads partition `partition` of `topic` among `peers` workers.
///
/// ```
/// use tributary_connectors::kafka::owner;
/// let workers: Vec<usize> = (0..4).map(|p| owner("orders", p, 4)).collect();
/// let mut sorted = workers.clone();
/// sorted.sort();
/// assert_eq!(sorted, vec![0, 1, 2, 3], "consecutive partitions of a topic go to distinct workers");
/// ```
pub fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    ((fnv1a(topic) as u64 + partition as u64) % peers as u64) as usize
}

/// The owner of a partition discovered after start: as [`owner`], unless that worker owned nothing at start.
pub(super) fn late_owner(topic: &str, partition: i32, active: &[usize], peers: usize) -> Option<usize> {
    let preferred = owner(topic, partition, peers);
    if active.contains(&preferred) {
        return Some(preferred);
    }
    (!active.is_empty()).then(|| active[((fnv1a(topic) as u64 + partition as u64) % active.len() as u64) as usize])
}

/// The partition count of `topic`, or `None` if it does not exist.
pub(super) fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        let count = t.partitions().len() as i32;
        (t.error().is_none() && count > 0).then_some(count)
    }))
}

pub(super) fn spawn_discovery<C: ConsumerContext + 'static>(
    consumer: Arc<BaseConsumer<C>>,
    topics: Vec<String>,
    interval: Duration,
) -> Receiver<BTreeMap<String, i32>> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("tributary:kafka-discovery".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            let mut counts = BTreeMap::new();
            for topic in &topics {
                match partition_count(&consumer, topic, Duration::from_secs(5)) {
                    Ok(Some(count)) => {
                        counts.insert(topic.clone(), count);
                    }
                    Ok(None) => tracing::warn!(topic, "topic no longer listed by the brokers"),
                    Err(e) => tracing::warn!(topic, "partition discovery failed: {e}"),
                }
            }
            if sender.send(counts).is_err() {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start partition discovery: {e}; new partitions will not be picked up");
    }
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_partitions_go_to_workers_that_hold_capabilities() {
        assert_eq!(late_owner("t", 3, &[0, 1, 2, 3], 4), Some(owner("t", 3, 4)));
        let active = [1, 3];
        for p in 0..16 {
            let w = late_owner("t", p, &active, 4).unwrap();
            assert!(active.contains(&w));
        }
        assert_eq!(late_owner("t", 0, &[], 4), None);
    }
}
