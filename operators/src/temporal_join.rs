//! Stream-table (temporal) joins: each stream record enriched with the table's value for its key as of the
//! record's time.
//!
//! The table is a differential collection of `(key, value)` (for instance an [`upsert`](crate::upsert) table).
//! A stream record at time `t` sees every table change at times `<= t` and none after, so a later table update
//! never rewrites output already produced: the output is a stream of records, not a changelog. Both inputs are
//! exchanged by key and processed in time order once both frontiers have passed a time; the result is the same
//! for any number of workers.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;

use differential_dataflow::{Hashable, VecCollection};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::event_time::Timed;

/// Joins a stream of `(Timed<(K, V)>, time, diff)` records with a table as of each record's time.
pub trait TemporalJoin<'scope, K, V> {
    /// Each record paired with every table value for its key at the record's time, or `None` if the key has
    /// none (a left join; filter the `None`s for an inner join).
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use tributary_operators::temporal_join::TemporalJoin;
    ///
    /// let enriched = timely::example(|scope| {
    ///     // Customer 1 is 'A' from time 0 and 'B' from time 5.
    ///     let customers = scope.new_collection_from(vec![(1u32, 'A')]).1
    ///         .concat(scope.new_collection_from(vec![(1u32, 'A')]).1.negate().delay(|_| 5))
    ///         .concat(scope.new_collection_from(vec![(1u32, 'B')]).1.delay(|_| 5));
    ///     let orders = vec![
    ///         (Timed::new(3, (1u32, 'p')), 3u64, 1isize),
    ///         (Timed::new(7, (1u32, 'i')), 7, 1),
    ///         (Timed::new(8, (2u32, 'c')), 8, 1),
    ///     ];
    ///     orders.to_stream(scope).container::<Vec<_>>().temporal_join("Enrich", customers).capture()
    /// });
    /// let mut rows: Vec<_> = enriched.extract().into_iter().flat_map(|(_, v)| v).map(|(r, t, _)| (r.value, t)).collect();
    /// rows.sort();
    /// assert_eq!(rows, vec![((1, ('i', Some('B'))), 7), ((1, ('p', Some('A'))), 3), ((2, ('c', None)), 8)]);
    /// ```
    fn temporal_join<W>(
        self,
        name: &str,
        table: VecCollection<'scope, u64, (K, W), isize>,
    ) -> Stream<'scope, u64, Vec<(Timed<(K, (V, Option<W>))>, u64, isize)>>
    where
        W: ExchangeData + Ord + Clone;
}

impl<'scope, K, V> TemporalJoin<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Ord + Clone,
    V: ExchangeData + Clone,
{
    fn temporal_join<W>(
        self,
        name: &str,
        table: VecCollection<'scope, u64, (K, W), isize>,
    ) -> Stream<'scope, u64, Vec<(Timed<(K, (V, Option<W>))>, u64, isize)>>
    where
        W: ExchangeData + Ord + Clone,
    {
        let by_record_key = Exchange::new(|(record, _, _): &(Timed<(K, V)>, u64, isize)| record.value.0.hashed());
        let by_table_key = Exchange::new(|((key, _), _, _): &((K, W), u64, isize)| key.hashed());
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        let (index, peers) = (self.scope().index(), self.scope().peers());
        let mut participant = crate::checkpoint::Participant::join(name);
        let op_name = name.to_owned();
        self.binary_frontier(table.inner, by_record_key, by_table_key, name, move |_capability, _info| {
            // The table as of the last time processed: key -> value -> multiplicity.
            let mut current: HashMap<K, BTreeMap<W, isize>> = HashMap::default();
            // Restored: the table as of the checkpoint, the keys that now route to this worker.
            for part in participant.as_ref().and_then(crate::checkpoint::Participant::restored).map(|(_, parts)| parts).unwrap_or_default() {
                #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                let rows: Vec<(K, BTreeMap<W, isize>)> = bincode::deserialize(&part).unwrap_or_else(|e| {
                    panic!("the checkpoint of temporal join `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                });
                current.extend(rows.into_iter().filter(|(key, _)| (key.hashed() % peers as u64) as usize == index));
            }
            let snapshot = |current: &HashMap<K, BTreeMap<W, isize>>| {
                let rows: Vec<(&K, &BTreeMap<W, isize>)> = current.iter().collect();
                #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
                bincode::serialize(&rows).expect("table rows serialize")
            };
            let mut records: BTreeMap<u64, (Capability<u64>, Vec<(Timed<(K, V)>, isize)>)> = BTreeMap::new();
            let mut changes: BTreeMap<u64, Vec<((K, W), isize)>> = BTreeMap::new();
            move |(stream, stream_frontier), (updates, table_frontier), output| {
                let (mut received, mut emitted) = (0, 0);
                stream.for_each(|cap, data| {
                    received += data.len();
                    for (record, time, diff) in data.drain(..) {
                        records.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push((record, diff));
                    }
                });
                updates.for_each(|_cap, data| {
                    received += data.len();
                    for (row, time, diff) in data.drain(..) {
                        changes.entry(time).or_default().push((row, diff));
                    }
                });
                // A time is done when neither input can still send anything at or before it.
                let done = |time: &u64| !stream_frontier.less_equal(time) && !table_frontier.less_equal(time);
                loop {
                    let next_change = changes.keys().next().copied();
                    let next_record = records.keys().next().copied();
                    // Before anything after a checkpoint's time is applied, the table as of that time.
                    if let (Some(participant), Some(next)) = (participant.as_mut(), next_change.into_iter().chain(next_record).min())
                        && done(&next)
                    {
                        for due in participant.due_before(next) {
                            participant.put(due, snapshot(&current));
                        }
                    }
                    // Table changes at a time apply before the records at that time.
                    match (next_change, next_record) {
                        (Some(c), r) if done(&c) && r.is_none_or(|r| c <= r) => {
                            for ((key, value), diff) in changes.remove(&c).unwrap_or_default() {
                                let values = current.entry(key.clone()).or_default();
                                let count = values.entry(value.clone()).or_default();
                                *count += diff;
                                if *count == 0 {
                                    values.remove(&value);
                                }
                                if values.is_empty() {
                                    current.remove(&key);
                                }
                            }
                        }
                        (_, Some(r)) if done(&r) => {
                            #[allow(clippy::expect_used, reason = "`r` is a key of `records`, just read")]
                            let (cap, batch) = records.remove(&r).expect("present");
                            let mut session = output.session(&cap);
                            for (record, diff) in batch {
                                let (key, value) = record.value;
                                let event_time = record.event_time;
                                match current.get(&key) {
                                    Some(values) => {
                                        for (w, count) in values {
                                            let joined = Timed::new(event_time, (key.clone(), (value.clone(), Some(w.clone()))));
                                            session.give((joined, r, diff * count));
                                            emitted += 1;
                                        }
                                    }
                                    None => {
                                        session.give((Timed::new(event_time, (key, (value, None))), r, diff));
                                        emitted += 1;
                                    }
                                }
                            }
                        }
                        _ => break,
                    }
                }
                if let Some(participant) = participant.as_mut() {
                    for due in participant.due_where(|t| done(&t)) {
                        participant.put(due, snapshot(&current));
                    }
                }
                let buffered =
                    records.values().map(|(_, batch)| batch.len()).sum::<usize>() + changes.values().map(Vec::len).sum::<usize>();
                gauges.set(current.len(), buffered);
                gauges.count(received, emitted);
            }
        })
    }
}
