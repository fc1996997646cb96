//! The engine under the windowed and interval joins: a keyed join of two streams whose records each expire.
//!
//! Both inputs are exchanged by key, stashed, and processed one time at a time once both frontiers have passed
//! it: the new left records meet the right state, join the left state, then the new right records meet the left
//! state. A match is emitted at the later of the step's time and its `emit_from` time, with the product of the
//! diffs, so the output with its times is the same for any number of workers. A record's state is released once
//! both frontiers pass its `expires` time — the last time a record that is not late could still match it; the
//! callers turn late records away before they get here.
//!
//! Matches due after the step that found them (a window join emits at the window's end) are held until the
//! frontiers pass their time, so a checkpoint at `T` (both sides' records up to `T`, and the matches due after
//! `T`) is the whole state the output after `T` depends on.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;
use std::ops::RangeInclusive;

use differential_dataflow::Hashable;
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::checkpoint::Participant;
use crate::event_time::Timed;
use crate::ordered::ByTime;

/// A record ready to join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Joinable<K, V> {
    pub(crate) key: K,
    pub(crate) event_time: u64,
    /// The last dataflow time at which it may still match.
    pub(crate) expires: u64,
    /// Its matches are emitted no earlier than this time.
    pub(crate) emit_from: u64,
    pub(crate) value: V,
}

/// One side's state: per key, its records sorted by event time.
///
/// A key's records expire in event-time order (a record's expiry grows with its event time, for the callers'
/// rules), so releasing is cutting a prefix. Each key is listed once in the expiry index, at its earliest
/// record's expiry when it was listed; a record that arrives later with an earlier expiry is released a little
/// late, which changes nothing: no record that is not late can match it any more.
struct Side<K, V> {
    by_key: HashMap<K, Vec<Entry<V>>>,
    /// Keys by the time after which their first records can go.
    expiry: BTreeMap<u64, Vec<K>>,
    /// Entries held, over all keys.
    len: usize,
}

struct Entry<V> {
    event_time: u64,
    expires: u64,
    value: V,
    diff: isize,
}

/// One side's checkpointed records: per key, `(event_time, expires, value, diff)` in event-time order.
type SideSnapshot<K, V> = Vec<(K, Vec<(u64, u64, V, isize)>)>;

impl<K: Hash + Eq + Clone, V: Clone> Side<K, V> {
    fn new() -> Self {
        Side { by_key: HashMap::default(), expiry: BTreeMap::new(), len: 0 }
    }

    fn snapshot(&self) -> SideSnapshot<K, V> {
        let entries = |entries: &Vec<Entry<V>>| entries.iter().map(|e| (e.event_time, e.expires, e.value.clone(), e.diff)).collect();
        self.by_key.iter().map(|(key, e)| (key.clone(), entries(e))).collect()
    }

    /// Adds a key's saved records (in event-time order), listing the key at its first record's expiry.
    fn restore(&mut self, key: K, saved: Vec<(u64, u64, V, isize)>) {
        let Some(&(_, first_expires, _, _)) = saved.first() else { return };
        self.expiry.entry(first_expires).or_default().push(key.clone());
        self.len += saved.len();
        let entries = saved.into_iter().map(|(event_time, expires, value, diff)| Entry { event_time, expires, value, diff });
        self.by_key.entry(key).or_default().extend(entries);
    }

    /// The records of `key` with event times in `range`.
    fn matching(&self, key: &K, range: RangeInclusive<u64>) -> &[Entry<V>] {
        let Some(entries) = self.by_key.get(key) else { return &[] };
        let from = entries.partition_point(|e| e.event_time < *range.start());
        let to = entries.partition_point(|e| e.event_time <= *range.end());
        &entries[from..to.max(from)]
    }

    fn insert(&mut self, record: Joinable<K, V>, diff: isize) {
        let entries = self.by_key.entry(record.key.clone()).or_insert_with(|| {
            self.expiry.entry(record.expires).or_default().push(record.key);
            Vec::new()
        });
        let entry = Entry { event_time: record.event_time, expires: record.expires, value: record.value, diff };
        // Mostly in order: usually an append.
        let at = entries.partition_point(|e| e.event_time <= entry.event_time);
        entries.insert(at, entry);
        self.len += 1;
    }

    fn release_before(&mut self, horizon: u64) {
        while let Some(listed) = self.expiry.first_entry() {
            if *listed.key() >= horizon {
                break;
            }
            for key in listed.remove() {
                let Some(entries) = self.by_key.get_mut(&key) else { continue };
                let gone = entries.partition_point(|e| e.expires < horizon);
                entries.drain(..gone);
                self.len -= gone;
                match entries.first() {
                    Some(first) => self.expiry.entry(first.expires).or_default().push(key),
                    None => {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
    }
}

/// A joined update: the pair under the key, at the later event time of the two.
pub(crate) type Joined<K, V, W> = (Timed<(K, (V, W))>, u64, isize);

/// A join's checkpointed state: both sides' records and the matches due after the checkpoint's time.
type JoinSnapshot<K, V, W> = (SideSnapshot<K, V>, SideSnapshot<K, W>, Vec<Joined<K, V, W>>);

/// Joins `left` and `right` by key; a left record at event time `t` matches right records with event times in
/// `left_range(t)`, and a right record at `t` left records in `right_range(t)` (the same pairs, seen from the
/// other side).
pub(crate) fn timed_join<'scope, K, V, W>(
    left: Stream<'scope, u64, Vec<(Joinable<K, V>, u64, isize)>>,
    right: Stream<'scope, u64, Vec<(Joinable<K, W>, u64, isize)>>,
    name: &str,
    left_range: impl Fn(u64) -> RangeInclusive<u64> + 'static,
    right_range: impl Fn(u64) -> RangeInclusive<u64> + 'static,
) -> Stream<'scope, u64, Vec<Joined<K, V, W>>>
where
    K: ExchangeData + Hash + Eq + Clone,
    V: ExchangeData + Clone,
    W: ExchangeData + Clone,
{
    let by_left_key = Exchange::new(|(record, _, _): &(Joinable<K, V>, u64, isize)| record.key.hashed());
    let by_right_key = Exchange::new(|(record, _, _): &(Joinable<K, W>, u64, isize)| record.key.hashed());
    let gauges = crate::state::Gauges::new(name, left.scope().index());
    let (index, peers) = (left.scope().index(), left.scope().peers());
    let mut participant = Participant::join(name);
    let op_name = name.to_owned();
    left.binary_frontier(right, by_left_key, by_right_key, name, move |capability, _info| {
        let mut lefts: Side<K, V> = Side::new();
        let mut rights: Side<K, W> = Side::new();
        let mut left_stash: ByTime<(Joinable<K, V>, isize)> = ByTime::default();
        let mut right_stash: ByTime<(Joinable<K, W>, isize)> = ByTime::default();
        // Matches due after the step that found them, until the frontiers pass their time.
        let mut future: ByTime<Joined<K, V, W>> = ByTime::default();
        // Matches due at the step that found them, emitted at its end.
        let mut ready: Vec<Joined<K, V, W>> = Vec::new();
        if let Some((_, parts)) = participant.as_ref().and_then(Participant::restored) {
            let mine = |key: &K| (key.hashed() % peers as u64) as usize == index;
            for part in parts {
                #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                let (saved_lefts, saved_rights, due): JoinSnapshot<K, V, W> = bincode::deserialize(&part).unwrap_or_else(|e| {
                    panic!("the checkpoint of join `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                });
                for (key, saved) in saved_lefts.into_iter().filter(|s| mine(&s.0)) {
                    lefts.restore(key, saved);
                }
                for (key, saved) in saved_rights.into_iter().filter(|s| mine(&s.0)) {
                    rights.restore(key, saved);
                }
                for joined in due.into_iter().filter(|j| mine(&j.0.value.0)) {
                    future.push(joined.1, |t| capability.delayed(t), joined);
                }
            }
        }
        drop(capability);
        let snapshot = |lefts: &Side<K, V>, rights: &Side<K, W>, future: &ByTime<Joined<K, V, W>>| {
            let due: Vec<&Joined<K, V, W>> = future.iter().flat_map(|(_, matches)| matches).collect();
            #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
            bincode::serialize(&(lefts.snapshot(), rights.snapshot(), due)).expect("join state serializes")
        };
        move |(left_input, left_frontier), (right_input, right_frontier), output| {
            let (mut received, mut emitted) = (0, 0);
            left_input.for_each(|cap, data| {
                received += data.len();
                for (record, time, diff) in data.drain(..) {
                    left_stash.push(time, |t| cap.delayed(t, 0), (record, diff));
                }
            });
            right_input.for_each(|cap, data| {
                received += data.len();
                for (record, time, diff) in data.drain(..) {
                    right_stash.push(time, |t| cap.delayed(t, 0), (record, diff));
                }
            });
            let done = |t: &u64| !left_frontier.less_equal(t) && !right_frontier.less_equal(t);
            let earliest = |l: &ByTime<_>, r: &ByTime<_>, f: &ByTime<_>| [l.first(), r.first(), f.first()].into_iter().flatten().min();
            while let Some(now) = earliest(&left_stash, &right_stash, &future).filter(done) {
                if let Some(participant) = participant.as_mut() {
                    for time in participant.due_before(now) {
                        participant.put(time, snapshot(&lefts, &rights, &future));
                    }
                }
                if let Some((cap, batch)) = future.take(now) {
                    emitted += batch.len();
                    output.session(&cap).give_iterator(batch.into_iter());
                }
                let left_batch = left_stash.take(now);
                let right_batch = right_stash.take(now);
                let cap = match (&left_batch, &right_batch) {
                    (Some((cap, _)), _) | (None, Some((cap, _))) => cap.clone(),
                    (None, None) => continue,
                };
                for (record, diff) in left_batch.into_iter().flat_map(|(_, batch)| batch) {
                    let at = now.max(record.emit_from);
                    for other in rights.matching(&record.key, left_range(record.event_time)) {
                        let pair = (record.key.clone(), (record.value.clone(), other.value.clone()));
                        let event_time = other.event_time.max(record.event_time);
                        let joined = (Timed::new(event_time, pair), at, diff * other.diff);
                        if at == now { ready.push(joined) } else { future.push(at, |t| cap.delayed(t), joined) }
                    }
                    lefts.insert(record, diff);
                }
                for (record, diff) in right_batch.into_iter().flat_map(|(_, batch)| batch) {
                    let at = now.max(record.emit_from);
                    for other in lefts.matching(&record.key, right_range(record.event_time)) {
                        let pair = (record.key.clone(), (other.value.clone(), record.value.clone()));
                        let event_time = other.event_time.max(record.event_time);
                        let joined = (Timed::new(event_time, pair), at, other.diff * diff);
                        if at == now { ready.push(joined) } else { future.push(at, |t| cap.delayed(t), joined) }
                    }
                    rights.insert(record, diff);
                }
                if !ready.is_empty() {
                    emitted += ready.len();
                    output.session(&cap).give_iterator(ready.drain(..));
                }
            }
            if let Some(participant) = participant.as_mut() {
                for time in participant.due_where(|t| done(&t)) {
                    participant.put(time, snapshot(&lefts, &rights, &future));
                }
            }
            let horizon = [left_frontier.frontier(), right_frontier.frontier()]
                .iter()
                .filter_map(|f| f.iter().next().copied())
                .min()
                .unwrap_or(u64::MAX);
            lefts.release_before(horizon);
            rights.release_before(horizon);
            gauges.set(lefts.len + rights.len, left_stash.len() + right_stash.len() + future.len());
            gauges.count(received, emitted);
        }
    })
}
