//! Aggregates over multisets of values, and incremental aggregation of whole differential collections.
//!
//! [`Aggregator`] is one aggregate that accepts retractions: [`Count`], [`Sum`], [`Average`], [`Min`], [`Max`],
//! [`CountDistinct`], [`TopK`], and a user [`Fold`]. The same aggregators serve event-time windows
//! ([`window`](crate::window), [`session`](crate::session)) and whole collections: [`Aggregate::aggregate`] keeps
//! one result per key of a `(key, value)` collection and emits a changelog, so an input retraction retracts the
//! old result and adds the new one.
//!
//! Aggregators combine: a tuple of them is one (`(Count, Sum)` emits `(count, sum)`; a group emits nothing while
//! any part has no value), and [`over`] aggregates one field of the values, so a window can count payments and
//! sum their cents while the records travel whole:
//!
//! ```
//! use tributary_operators::aggregate::{Aggregator, Count, Max, Sum, over};
//! #[derive(Clone)]
//! struct Payment { cents: u32 }
//! let spent = (Count, over(|p: &Payment| p.cents, Sum), over(|p: &Payment| p.cents, Max));
//! let mut state = Default::default();
//! for cents in [250, 1200, 40] {
//!     spent.update(&mut state, &Payment { cents }, 1);
//! }
//! spent.update(&mut state, &Payment { cents: 40 }, -1);
//! assert_eq!(spent.output(&state), Some((2, 1450, 1200)));
//! ```

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::progress::Timestamp;

/// An aggregate over a multiset of values (a window's, or a key's in a collection) that accepts retractions
/// (`diff < 0`).
pub trait Aggregator<V>: Clone + 'static {
    /// What is kept per group.
    type State: Default + 'static;
    /// What is emitted per group.
    type Output: Clone + PartialEq + 'static;
    /// Adds `value` with multiplicity `diff`.
    fn update(&self, state: &mut Self::State, value: &V, diff: isize);
    /// The group's result; `None` when the group holds nothing (all retracted) or the aggregate has no value.
    fn output(&self, state: &Self::State) -> Option<Self::Output>;
    /// Whether the aggregate is a running total (see [`linear`](Self::linear)).
    fn is_linear(&self) -> bool {
        false
    }
    /// For aggregates that are running totals (count, sum, average): the value's contribution `(sum, count)`.
    /// Whole-collection aggregation then keeps one total per key instead of rescanning the key's values on
    /// every change. `None` (the default): not a running total.
    fn linear(&self, _value: &V) -> Option<(isize, isize)> {
        None
    }
    /// The output for a key's running totals `(sum, count)`, for aggregates whose [`linear`](Self::linear) is
    /// `Some`.
    fn linear_output(&self, _totals: (isize, isize)) -> Option<Self::Output> {
        None
    }
}

/// Counts records, as an `i64` (like [`Sum`], so counts and sums compare and combine without casts).
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<V> Aggregator<V> for Count {
    type State = i64;
    type Output = i64;
    fn update(&self, state: &mut i64, _value: &V, diff: isize) {
        *state = state.wrapping_add(diff as i64);
    }
    fn output(&self, state: &i64) -> Option<i64> {
        (*state != 0).then_some(*state)
    }
    fn is_linear(&self) -> bool {
        true
    }
    fn linear(&self, _value: &V) -> Option<(isize, isize)> {
        Some((0, 1))
    }
    fn linear_output(&self, (_, count): (isize, isize)) -> Option<i64> {
        (count != 0).then_some(count as i64)
    }
}

/// Sums values (as `i64`).
///
/// Sums wrap around on overflow, in debug and release builds alike: wrapping arithmetic is still exact under
/// retractions (a retraction undoes its record whatever came between), where saturating is not; a sum that does
/// not fit an `i64` needs a wider value type.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sum;

impl<V: Copy + Into<i64>> Aggregator<V> for Sum {
    /// (sum, records)
    type State = (i64, isize);
    type Output = i64;
    fn update(&self, state: &mut (i64, isize), value: &V, diff: isize) {
        state.0 = state.0.wrapping_add((*value).into().wrapping_mul(diff as i64));
        state.1 = state.1.wrapping_add(diff);
    }
    fn output(&self, state: &(i64, isize)) -> Option<i64> {
        (state.1 != 0).then_some(state.0)
    }
    fn is_linear(&self) -> bool {
        true
    }
    fn linear(&self, value: &V) -> Option<(isize, isize)> {
        Some(((*value).into() as isize, 1))
    }
    fn linear_output(&self, (sum, count): (isize, isize)) -> Option<i64> {
        (count != 0).then_some(sum as i64)
    }
}

/// The average of the values, emitted as `(sum, count)` so it stays exact and comparable (an `f64` is neither
/// `Eq` nor exact under retractions); divide when presenting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Average;

impl<V: Copy + Into<i64>> Aggregator<V> for Average {
    type State = (i64, isize);
    type Output = (i64, isize);
    fn update(&self, state: &mut (i64, isize), value: &V, diff: isize) {
        state.0 = state.0.wrapping_add((*value).into().wrapping_mul(diff as i64));
        state.1 = state.1.wrapping_add(diff);
    }
    fn output(&self, state: &(i64, isize)) -> Option<(i64, isize)> {
        (state.1 != 0).then_some(*state)
    }
    fn is_linear(&self) -> bool {
        true
    }
    fn linear(&self, value: &V) -> Option<(isize, isize)> {
        Some(((*value).into() as isize, 1))
    }
    fn linear_output(&self, (sum, count): (isize, isize)) -> Option<(i64, isize)> {
        (count != 0).then_some((sum as i64, count))
    }
}

/// The values with their multiplicities, for aggregates that must survive retractions of any value.
pub type Multiset<V> = BTreeMap<V, isize>;

fn add_to_multiset<V: Ord + Clone>(set: &mut Multiset<V>, value: &V, diff: isize) {
    let count = set.entry(value.clone()).or_default();
    *count += diff;
    if *count == 0 {
        set.remove(value);
    }
}

/// The least value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Min;

impl<V: Ord + Clone + 'static> Aggregator<V> for Min {
    type State = Multiset<V>;
    type Output = V;
    fn update(&self, state: &mut Multiset<V>, value: &V, diff: isize) {
        add_to_multiset(state, value, diff);
    }
    fn output(&self, state: &Multiset<V>) -> Option<V> {
        state.keys().next().cloned()
    }
}

/// The greatest value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Max;

impl<V: Ord + Clone + 'static> Aggregator<V> for Max {
    type State = Multiset<V>;
    type Output = V;
    fn update(&self, state: &mut Multiset<V>, value: &V, diff: isize) {
        add_to_multiset(state, value, diff);
    }
    fn output(&self, state: &Multiset<V>) -> Option<V> {
        state.keys().next_back().cloned()
    }
}

/// How many distinct values.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountDistinct;

impl<V: Ord + Clone + 'static> Aggregator<V> for CountDistinct {
    type State = Multiset<V>;
    type Output = usize;
    fn update(&self, state: &mut Multiset<V>, value: &V, diff: isize) {
        add_to_multiset(state, value, diff);
    }
    fn output(&self, state: &Multiset<V>) -> Option<usize> {
        (!state.is_empty()).then_some(state.len())
    }
}

/// The `k` greatest values (with repeats), greatest first.
#[derive(Clone, Copy, Debug)]
pub struct TopK(pub usize);

impl<V: Ord + Clone + 'static> Aggregator<V> for TopK {
    type State = Multiset<V>;
    type Output = Vec<V>;
    fn update(&self, state: &mut Multiset<V>, value: &V, diff: isize) {
        add_to_multiset(state, value, diff);
    }
    fn output(&self, state: &Multiset<V>) -> Option<Vec<V>> {
        let top: Vec<V> = state.iter().rev().flat_map(|(v, n)| std::iter::repeat_n(v.clone(), (*n).max(0) as usize)).take(self.0).collect();
        (!top.is_empty()).then_some(top)
    }
}

/// A user fold over the group's values (with multiplicities), recomputed when the result is emitted.
///
/// ```
/// use tributary_operators::aggregate::{Aggregator, Fold};
/// let longest = Fold::new(|values: &std::collections::BTreeMap<String, isize>| values.keys().map(|s| s.len()).max());
/// let mut state = Default::default();
/// longest.update(&mut state, &"tributary".to_string(), 1);
/// assert_eq!(longest.output(&state), Some(9));
/// ```
pub struct Fold<V, O> {
    fold: std::rc::Rc<dyn Fn(&Multiset<V>) -> Option<O>>,
}

impl<V, O> Clone for Fold<V, O> {
    fn clone(&self) -> Self {
        Fold { fold: std::rc::Rc::clone(&self.fold) }
    }
}

impl<V, O> Fold<V, O> {
    /// A fold from a function of the window's multiset of values; `None` emits nothing.
    pub fn new(fold: impl Fn(&Multiset<V>) -> Option<O> + 'static) -> Self {
        Fold { fold: std::rc::Rc::new(fold) }
    }
}

impl<V: Ord + Clone + 'static, O: Clone + PartialEq + 'static> Aggregator<V> for Fold<V, O> {
    type State = Multiset<V>;
    type Output = O;
    fn update(&self, state: &mut Multiset<V>, value: &V, diff: isize) {
        add_to_multiset(state, value, diff);
    }
    fn output(&self, state: &Multiset<V>) -> Option<O> {
        (self.fold)(state)
    }
}

// Tuples of aggregators (see the module docs).
macro_rules! tuple_aggregator {
    ($($name:ident $index:tt),+) => {
        impl<V, $($name: Aggregator<V>),+> Aggregator<V> for ($($name,)+) {
            type State = ($($name::State,)+);
            type Output = ($($name::Output,)+);
            fn update(&self, state: &mut Self::State, value: &V, diff: isize) {
                $(self.$index.update(&mut state.$index, value, diff);)+
            }
            fn output(&self, state: &Self::State) -> Option<Self::Output> {
                Some(($(self.$index.output(&state.$index)?,)+))
            }
        }
    };
}
tuple_aggregator!(A 0, B 1);
tuple_aggregator!(A 0, B 1, C 2);
tuple_aggregator!(A 0, B 1, C 2, D 3);

/// An aggregate of one field of the values: `over(|p: &Payment| p.cents, Sum)` sums the payments' cents while
/// the records themselves travel on (e.g. for a window's dead letters). Running totals stay running totals.
///
/// ```
/// use tributary_operators::aggregate::{Aggregator, Count, Sum, over};
/// #[derive(Clone)]
/// struct Payment { card: &'static str, cents: u32 }
/// let spent = (Count, over(|p: &Payment| p.cents, Sum));
/// let mut state = Default::default();
/// spent.update(&mut state, &Payment { card: "a", cents: 250 }, 1);
/// spent.update(&mut state, &Payment { card: "a", cents: 1200 }, 1);
/// assert_eq!(spent.output(&state), Some((2, 1450)));
/// ```
pub fn over<V, W, F, A>(field: F, aggregator: A) -> Over<F, A>
where
    F: Fn(&V) -> W + Clone + 'static,
    A: Aggregator<W>,
{
    Over { field, aggregator }
}

/// An aggregate of a field of the values (see [`over`]).
#[derive(Clone, Copy, Debug)]
pub struct Over<F, A> {
    field: F,
    aggregator: A,
}

impl<V, W, F, A> Aggregator<V> for Over<F, A>
where
    F: Fn(&V) -> W + Clone + 'static,
    A: Aggregator<W>,
{
    type State = A::State;
    type Output = A::Output;
    fn update(&self, state: &mut A::State, value: &V, diff: isize) {
        self.aggregator.update(state, &(self.field)(value), diff);
    }
    fn output(&self, state: &A::State) -> Option<A::Output> {
        self.aggregator.output(state)
    }
    fn is_linear(&self) -> bool {
        self.aggregator.is_linear()
    }
    fn linear(&self, value: &V) -> Option<(isize, isize)> {
        self.aggregator.linear(&(self.field)(value))
    }
    fn linear_output(&self, totals: (isize, isize)) -> Option<A::Output> {
        self.aggregator.linear_output(totals)
    }
}

/// Incremental per-key aggregation of a differential collection of `(key, value)` pairs.
pub trait Aggregate<'scope, T: Timestamp, K, V> {
    /// One `(key, result)` per key whose values are not all retracted; a change of a key's values retracts its
    /// old result and adds the new one at the time of the change.
    ///
    /// Times are the job's `u64` event times (both implementations below need a total order).
    ///
    /// In a job with checkpoints each key's consolidated values (for running totals, its `(sum, count)`) are
    /// saved under `name` and restored on a restart, at any number of workers; without, the state lives in
    /// differential's arrangements (`reduce`, `count_total`), which are faster but cannot be saved.
    ///
    /// ```
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::{Capture, capture::Extract};
    /// use tributary_operators::aggregate::{Aggregate, Max};
    ///
    /// let changes = timely::example(|scope| {
    ///     let (mut bids, collection) = scope.new_collection::<(char, u32), isize>();
    ///     for bid in [('a', 5), ('a', 9), ('a', 7), ('b', 3)] {
    ///         bids.insert(bid);
    ///     }
    ///     bids.advance_to(1);
    ///     bids.remove(('a', 9));
    ///     collection.aggregate("Highest", Max).inner.capture()
    /// });
    /// let mut changes: Vec<_> = changes.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// changes.sort_by_key(|&(_, time, diff)| (time, diff));
    /// // Retracting the maximum retracts the old result and adds the new one.
    /// assert_eq!(changes, vec![(('a', 9), 0, 1), (('b', 3), 0, 1), (('a', 9), 1, -1), (('a', 7), 1, 1)]);
    /// ```
    fn aggregate<A>(self, name: &str, aggregator: A) -> VecCollection<'scope, T, (K, A::Output), isize>
    where
        A: Aggregator<V>,
        A::Output: ExchangeData;
}

impl<'scope, K, V> Aggregate<'scope, u64, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: ExchangeData + Hashable,
    V: ExchangeData,
{
    fn aggregate<A>(self, name: &str, aggregator: A) -> VecCollection<'scope, u64, (K, A::Output), isize>
    where
        A: Aggregator<V>,
        A::Output: ExchangeData,
    {
        let Some(mut participant) = crate::checkpoint::Participant::join(name) else {
            // No checkpoints: differential's operators, which keep the state in arrangements.
            // Running totals: one `(sum, count)` per key as the update's weight, accumulated by `count_total`,
            // whose changelog retracts a key's old totals and adds the new ones.
            if aggregator.is_linear() {
                let (contribute, finish) = (aggregator.clone(), aggregator);
                return self
                    .explode(move |(key, value)| contribute.linear(&value).map(|totals| (key, totals)))
                    .count_total()
                    .flat_map(move |(key, totals)| finish.linear_output(totals).map(|output| (key, output)));
            }
            // `reduce` hands the key's whole consolidated input and diffs the outputs against the previous ones,
            // which is the changelog the aggregators' retractions need.
            return self.reduce_named(name, move |_key, values, output| {
                let mut state = A::State::default();
                for (value, diff) in values {
                    aggregator.update(&mut state, value, *diff);
                }
                if let Some(result) = aggregator.output(&state) {
                    output.push((result, 1));
                }
            });
        };
        // With checkpoints: one operator keeps each key's consolidated values (or, for running totals, its
        // `(sum, count)`) where it can save them, applies the updates one time at a time once the frontier has
        // passed it, and emits the changes of each key's result, as the operators above do (the same tests
        // check both against one model).
        let exchange = Exchange::new(|((key, _), _, _): &((K, V), u64, isize)| key.hashed().into());
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        let (index, peers) = (self.scope().index(), self.scope().peers());
        let op_name = name.to_owned();
        let linear = aggregator.is_linear();
        let contribute = aggregator.clone();
        self.inner
            .unary_frontier(exchange, name, move |_capability, _info| {
                let result = move |group: &Group<V>| -> Option<A::Output> {
                    if linear {
                        (group.totals != (0, 0)).then(|| aggregator.linear_output(group.totals)).flatten()
                    } else if group.values.is_empty() {
                        None
                    } else {
                        let mut state = A::State::default();
                        for (value, diff) in &group.values {
                            aggregator.update(&mut state, value, *diff);
                        }
                        aggregator.output(&state)
                    }
                };
                // Each key's group, and its current result (what the next change retracts).
                let mut groups: BTreeMap<K, (Group<V>, Option<A::Output>)> = BTreeMap::new();
                // Restored: the groups as of the checkpoint whose keys route to this worker now.
                for part in participant.restored().map(|(_, parts)| parts).unwrap_or_default() {
                    #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                    let rows: Vec<(K, Group<V>)> = bincode::deserialize(&part).unwrap_or_else(|e| {
                        panic!("the checkpoint of aggregate `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                    });
                    for (key, group) in rows {
                        if (key.hashed().into() % peers as u64) as usize == index {
                            let current = result(&group);
                            groups.insert(key, (group, current));
                        }
                    }
                }
                let snapshot = |groups: &BTreeMap<K, (Group<V>, Option<A::Output>)>| {
                    let rows: Vec<(&K, &Group<V>)> = groups.iter().map(|(key, (group, _))| (key, group)).collect();
                    #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
                    bincode::serialize(&rows).expect("aggregate groups serialize")
                };
                // Updates waiting for their time to complete, with a capability for that time.
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<((K, V), isize)>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    let (mut received, mut emitted) = (0, 0);
                    input.for_each(|cap, data| {
                        received += data.len();
                        for (record, time, diff) in data.drain(..) {
                            pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Vec::new())).1.push((record, diff));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        for due in participant.due_before(*entry.key()) {
                            participant.put(due, snapshot(&groups));
                        }
                        let (time, (cap, updates)) = entry.remove_entry();
                        let mut by_key: BTreeMap<K, Vec<(V, isize)>> = BTreeMap::new();
                        for ((key, value), diff) in updates {
                            by_key.entry(key).or_default().push((value, diff));
                        }
                        let mut session = output.session(&cap);
                        for (key, changes) in by_key {
                            let (group, current) = groups.entry(key.clone()).or_insert_with(|| (Group::default(), None));
                            let before = current.take();
                            for (value, diff) in changes {
                                if linear {
                                    if let Some((sum, count)) = contribute.linear(&value) {
                                        // Wrapping, as `Sum` promises.
                                        group.totals = (group.totals.0.wrapping_add(sum.wrapping_mul(diff)), group.totals.1.wrapping_add(count.wrapping_mul(diff)));
                                    }
                                } else {
                                    match group.values.entry(value) {
                                        Entry::Occupied(mut held) => {
                                            *held.get_mut() += diff;
                                            if *held.get() == 0 {
                                                held.remove();
                                            }
                                        }
                                        Entry::Vacant(new) => {
                                            if diff != 0 {
                                                new.insert(diff);
                                            }
                                        }
                                    }
                                }
                            }
                            let after = result(group);
                            if group.is_empty() {
                                groups.remove(&key);
                            } else {
                                current.clone_from(&after);
                            }
                            if before != after {
                                if let Some(old) = before {
                                    session.give(((key.clone(), old), time, -1));
                                    emitted += 1;
                                }
                                if let Some(new) = after {
                                    session.give(((key, new), time, 1));
                                    emitted += 1;
                                }
                            }
                        }
                    }
                    for due in participant.due(frontier.frontier()) {
                        participant.put(due, snapshot(&groups));
                    }
                    gauges.set(groups.len(), pending.values().map(|(_, updates)| updates.len()).sum());
                    gauges.count(received, emitted);
                }
            })
            .as_collection()
    }
}

/// One key's state in [`Aggregate::aggregate`]: its consolidated values, or for running totals its `(sum, count)`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(serialize = "V: serde::Serialize", deserialize = "V: serde::de::DeserializeOwned + Ord"))]
struct Group<V> {
    values: BTreeMap<V, isize>,
    totals: (isize, isize),
}

impl<V> Default for Group<V> {
    fn default() -> Self {
        Group { values: BTreeMap::new(), totals: (0, 0) }
    }
}

impl<V: Ord> Group<V> {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.totals == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregators_survive_retractions() {
        let mut state = Multiset::default();
        for (v, d) in [(5, 1), (9, 1), (9, 1), (2, 1), (9, -1), (2, -1)] {
            Aggregator::<i32>::update(&Max, &mut state, &v, d);
        }
        assert_eq!(Aggregator::<i32>::output(&Max, &state), Some(9));
        assert_eq!(Aggregator::<i32>::output(&Min, &state), Some(5));
        assert_eq!(Aggregator::<i32>::output(&CountDistinct, &state), Some(2));
        assert_eq!(Aggregator::<i32>::output(&TopK(2), &state), Some(vec![9, 5]));
        let mut sum = Default::default();
        for (v, d) in [(5i32, 1), (7, 1), (5, -1)] {
            Aggregator::<i32>::update(&Sum, &mut sum, &v, d);
        }
        assert_eq!(Aggregator::<i32>::output(&Sum, &sum), Some(7));
        Aggregator::<i32>::update(&Sum, &mut sum, &7, -1);
        assert_eq!(Aggregator::<i32>::output(&Sum, &sum), None, "an emptied window emits nothing");
    }
}
