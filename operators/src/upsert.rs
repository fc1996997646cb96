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
    /// The table of each key's latest value; an update with `None` deletes the key.
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
        // Its state is not checkpointed yet: a job using it takes no checkpoints (and says so).
        crate::checkpoint::unsupported(name);
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        self.unary_frontier(exchange, name, move |_capability, _info| {
            let mut table: HashMap<K, V> = HashMap::default();
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
                gauges.set(table.len(), pending.values().map(|(_, updates)| updates.len()).sum());
                gauges.count(received, emitted);
            }
        })
        .as_collection()
    }
}
