//! Upsert tables from keyed streams (stream/table duality): key -> latest value, a `None` value deletes.
//!
//! A compacted Kafka topic read this way is a table that joins and aggregates incrementally: the output is a
//! differential collection of `(key, value)` whose changes retract a key's old value and add its new one.
//! Updates are applied in time order once the frontier passes their time; updates of one key at the same time
//! apply in arrival order, which for a topic keyed by its partitioner (all of a key's records in one partition)
//! is offset order, so the table is the same on every replay and for any number of workers.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::event_time::Timed;

/// Turns a stream of keyed upserts into a table.
pub trait Upsert<'scope, K, V> {
    /// The table of each key's latest value; an update with `None` deletes the key. In a job with checkpoints
    /// the table is saved under `name` and restored on a restart.
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use tributary_operators::upsert::Upsert;
    ///
    /// let changes = timely::example(|scope| {
    ///     let updates = vec![
    ///         (Timed::new(1, ('a', Some(10))), 1u64, 1isize),
    ///         (Timed::new(2, ('b', Some(20))), 2, 1),
    ///         (Timed::new(3, ('a', Some(11))), 3, 1),
    ///         (Timed::new(4, ('b', None)), 4, 1),
    ///     ];
    ///     updates.to_stream(scope).container::<Vec<_>>().upsert("Customers").inner.capture()
    /// });
    /// let mut changes: Vec<_> = changes.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// changes.sort_by_key(|(_, time, diff)| (*time, *diff));
    /// assert_eq!(changes, vec![
    ///     (('a', 10), 1, 1),
    ///     (('b', 20), 2, 1),
    ///     (('a', 10), 3, -1), (('a', 11), 3, 1),
    ///     (('b', 20), 4, -1),
    /// ]);
    /// ```
    fn upsert(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize>;
}

impl<'scope, K, V> Upsert<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, Option<V>)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Ord + Clone,
    V: ExchangeData + Ord + Clone,
{
    fn upsert(self, name: &str) -> VecCollection<'scope, u64, (K, V), isize> {
        let exchange = Exchange::new(|(update, _time, _diff): &(Timed<(K, Option<V>)>, u64, isize)| update.value.0.hashed());
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        let (index, peers) = (self.scope().index(), self.scope().peers());
        let mut participant = crate::checkpoint::Participant::join(name);
        let op_name = name.to_owned();
        self.unary_frontier(exchange, name, move |_capability, _info| {
            let mut table: HashMap<K, V> = HashMap::default();
            // Restored: the table as of the checkpoint, the keys that now route to this worker.
            for part in participant.as_ref().and_then(crate::checkpoint::Participant::restored).map(|(_, parts)| parts).unwrap_or_default() {
                #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                let rows: Vec<(K, V)> = bincode::deserialize(&part).unwrap_or_else(|e| {
                    panic!("the checkpoint of upsert table `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                });
                table.extend(rows.into_iter().filter(|(key, _)| (key.hashed() % peers as u64) as usize == index));
            }
            let snapshot = |table: &HashMap<K, V>| {
                let rows: Vec<(&K, &V)> = table.iter().collect();
                #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
                bincode::serialize(&rows).expect("table rows serialize")
            };
            // Updates waiting for their time to complete, in arrival order, with a capability for that time.
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<(K, Option<V>)>)> = BTreeMap::new();
            move |(input, frontier), output| {
                let (mut received, mut emitted) = (0, 0);
                input.for_each(|cap, data| {
                    received += data.len();
                    for (update, time, _diff) in data.drain(..) {
                        let entry = pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new()));
                        entry.1.push(update.value);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    if let Some(participant) = participant.as_mut() {
                        for due in participant.due_before(*entry.key()) {
                            participant.put(due, snapshot(&table));
                        }
                    }
                    let (time, (cap, updates)) = entry.remove_entry();
                    let mut session = output.session(&cap);
                    for (key, value) in updates {
                        let old = match value {
                            Some(value) => {
                                session.give(((key.clone(), value.clone()), time, 1));
                                emitted += 1;
                                table.insert(key.clone(), value)
                            }
                            None => table.remove(&key),
                        };
                        if let Some(old) = old {
                            session.give(((key, old), time, -1));
                            emitted += 1;
                        }
                    }
                }
                if let Some(participant) = participant.as_mut() {
                    for due in participant.due(frontier.frontier()) {
                        participant.put(due, snapshot(&table));
                    }
                }
                gauges.set(table.len(), pending.values().map(|(_, updates)| updates.len()).sum());
                gauges.count(received, emitted);
            }
        })
        .as_collection()
    }
}
