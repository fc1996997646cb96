//! Where each newly assigned partition starts: what [`StartFrom`] asks for, resolved against the brokers.
//!
//! A partition a resumed commit knows is then moved to where the job first read it (a replay), in the reader,
//! once its log start and end are known.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

use super::StartFrom;

/// The offsets `start` asks for `new` partitions, and the watermarks a [`StartFrom::Resume`] gives them.
pub(super) fn requested_starts<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    new: &[(String, i32)],
    start: &StartFrom,
    timeout: Duration,
) -> Result<(Vec<Offset>, Vec<Option<u64>>), KafkaError> {
    let mut starts: Vec<Offset> = Vec::with_capacity(new.len());
    let mut restored: Vec<Option<u64>> = vec![None; new.len()];
    match start {
        StartFrom::Earliest => starts.resize(new.len(), Offset::Beginning),
        StartFrom::Latest => starts.resize(new.len(), Offset::End),
        StartFrom::Timestamp(ts) => {
            let mut query = TopicPartitionList::new();
            for (topic, p) in new {
                query.add_partition_offset(topic, *p, Offset::Offset(*ts))?;
            }
            let found = consumer.offsets_for_times(query, timeout)?;
            for (topic, p) in new {
                let offset = found.find_partition(topic, *p).map(|e| e.offset()).unwrap_or(Offset::End);
                // No record at or after the timestamp: start at the end.
                starts.push(match offset {
                    Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                    _ => Offset::End,
                });
            }
        }
        StartFrom::Offsets(map) => {
            starts.extend(new.iter().map(|(t, p)| map.get(&(t.clone(), *p)).map_or(Offset::Beginning, |o| Offset::Offset(*o))))
        }
        StartFrom::Resume(positions) => {
            for (i, (topic, p)) in new.iter().enumerate() {
                match positions.iter().find(|pos| &pos.topic == topic && pos.partition == *p) {
                    Some(pos) => {
                        starts.push(Offset::Offset(pos.offset));
                        restored[i] = Some(pos.watermark);
                    }
                    None => starts.push(Offset::Beginning),
                }
            }
        }
    }
    Ok((starts, restored))
}
