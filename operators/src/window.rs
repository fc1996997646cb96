//! Keyed event-time windows (tumbling, hopping) with allowed lateness and state release.
//!
//! [`WindowAggregate::window_aggregate`] takes `(Timed<(K, V)>, time, diff)` updates, as sources emit them, and
//! produces a changelog of `((K, window_start), output)` updates:
//! - a window's result is emitted once, when the frontier passes the window's end (not on every record);
//! - a late record whose window ended but `window_end + allowed_lateness` is still ahead of its dataflow time
//!   updates the window, and the output carries a correction (the old value retracted, the new one added) at the
//!   record's time;
//! - a record with `window_end + allowed_lateness <= its dataflow time` for every window it falls in goes to the
//!   late output with the reason (for hopping windows, windows that still accept it count it);
//! - a window's state is released once the frontier passes `window_end + allowed_lateness`; releasing produces no
//!   output, so a closed window's result stays.
//!
//! Aggregators: [`Count`], [`Sum`], [`Average`], [`Min`], [`Max`], [`CountDistinct`], [`TopK`], and a user
//! [`Fold`] over the window's multiset of values; all accept retractions.
//!
//! Records are exchanged by key, so each window lives on one worker; results are the same for any number of
//! workers and processes. A dedicated operator rather than differential's `reduce`: windows close by the frontier
//! and their state goes away, which an arrangement would express as a retraction of the result.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::Hashable;
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::event_time::Timed;

/// The windows a record's event time falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Back-to-back windows of `size_ms`, starting at multiples of it.
    Tumbling {
        /// Window length in ms.
        size_ms: u64,
    },
    /// Windows of `size_ms` starting every `slide_ms` (a record is in `size_ms / slide_ms` windows).
    Hopping {
        /// Window length in ms.
        size_ms: u64,
        /// Distance between window starts in ms.
        slide_ms: u64,
    },
}

impl Windows {
    /// The window length in ms.
    pub fn size(&self) -> u64 {
        match *self {
            Windows::Tumbling { size_ms } | Windows::Hopping { size_ms, .. } => size_ms,
        }
    }

    /// The starts of the windows `event_time` falls in, earliest first.
    ///
    /// ```
    /// use tributary_operators::window::Windows;
    /// assert_eq!(Windows::Tumbling { size_ms: 10 }.starts(25).collect::<Vec<_>>(), vec![20]);
    /// assert_eq!(Windows::Hopping { size_ms: 10, slide_ms: 5 }.starts(25).collect::<Vec<_>>(), vec![20, 25]);
    /// ```
    pub fn starts(&self, event_time: u64) -> impl Iterator<Item = u64> {
        let (size, slide) = match *self {
            Windows::Tumbling { size_ms } => (size_ms.max(1), size_ms.max(1)),
            Windows::Hopping { size_ms, slide_ms } => (size_ms.max(1), slide_ms.max(1)),
        };
        let last = event_time - event_time % slide;
        let first = (event_time + 1).saturating_sub(size);
        let first = first.div_ceil(slide) * slide;
        (first..=last).step_by(slide as usize)
    }
}

/// An aggregate over the values of one window that accepts retractions (`diff < 0`).
pub trait Aggregator<V>: Clone + 'static {
    /// What is kept per window.
    type State: Default + 'static;
    /// What is emitted per window.
    type Output: Clone + PartialEq + 'static;
    /// Adds `value` with multiplicity `diff`.
    fn update(&self, state: &mut Self::State, value: &V, diff: isize);
    /// The window's result; `None` when the window holds nothing (all retracted).
    fn output(&self, state: &Self::State) -> Option<Self::Output>;
}

/// Counts records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<V> Aggregator<V> for Count {
    type State = isize;
    type Output = isize;
    fn update(&self, state: &mut isize, _value: &V, diff: isize) {
        *state += diff;
    }
    fn output(&self, state: &isize) -> Option<isize> {
        (*state != 0).then_some(*state)
    }
}

/// Sums values (as `i64`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sum;

impl<V: Copy + Into<i64>> Aggregator<V> for Sum {
    /// (sum, records)
    type State = (i64, isize);
    type Output = i64;
    fn update(&self, state: &mut (i64, isize), value: &V, diff: isize) {
        state.0 += (*value).into() * diff as i64;
        state.1 += diff;
    }
    fn output(&self, state: &(i64, isize)) -> Option<i64> {
        (state.1 != 0).then_some(state.0)
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
        state.0 += (*value).into() * diff as i64;
        state.1 += diff;
    }
    fn output(&self, state: &(i64, isize)) -> Option<(i64, isize)> {
        (state.1 != 0).then_some(*state)
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

/// A user fold over the window's values (with multiplicities), recomputed when the window is emitted.
///
/// ```
/// use tributary_operators::window::{Aggregator, Fold};
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

/// A record that arrived after every window it falls in had closed for good.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LateRecord<D> {
    /// The record.
    pub record: D,
    /// Its event time (ms).
    pub event_time: u64,
    /// Its dataflow time: the watermark when it arrived (ms).
    pub arrived_at: u64,
    /// Its multiplicity (`-1` for a retraction).
    pub diff: isize,
    /// The end of the latest window it falls in (ms).
    pub window_end: u64,
    /// The allowed lateness (ms).
    pub allowed_lateness_ms: u64,
}

/// A window result update: `(((key, window_start), output), time, diff)`.
pub type WindowUpdate<K, O> = (((K, u64), O), u64, isize);

/// Window results as changelog updates, and the records too late for any window.
pub struct WindowStreams<'scope, K, O, V> {
    /// `((key, window_start), output)` updates.
    pub results: Stream<'scope, u64, Vec<WindowUpdate<K, O>>>,
    /// Records later than the allowed lateness.
    pub late: Stream<'scope, u64, Vec<LateRecord<(K, V)>>>,
}

/// Keyed event-time window aggregation on a stream of `(Timed<(K, V)>, time, diff)` updates.
pub trait WindowAggregate<'scope, K, V> {
    /// Aggregates each key's values per window with `aggregator`; see the module docs for the semantics.
    ///
    /// ```
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use tributary_operators::window::{Count, WindowAggregate, Windows};
    ///
    /// let (results, late) = timely::example(|scope| {
    ///     let clicks = vec![
    ///         (Timed { event_time: 3, value: ("a".to_string(), ()) }, 3u64, 1isize),
    ///         (Timed { event_time: 7, value: ("a".to_string(), ()) }, 7, 1),
    ///         (Timed { event_time: 12, value: ("a".to_string(), ()) }, 12, 1),
    ///         // Arrives when the watermark is 30: window [0, 10) has closed, with 5 ms of lateness for good.
    ///         (Timed { event_time: 4, value: ("a".to_string(), ()) }, 30, 1),
    ///     ];
    ///     let windows = clicks.to_stream(scope).container::<Vec<_>>().window_aggregate("Clicks", Windows::Tumbling { size_ms: 10 }, 5, Count);
    ///     (windows.results.capture(), windows.late.capture())
    /// });
    /// let mut results: Vec<_> = results.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// results.sort();
    /// assert_eq!(results, vec![((("a".to_string(), 0), 2), 9, 1), ((("a".to_string(), 10), 1), 19, 1)]);
    /// assert_eq!(late.extract().into_iter().flat_map(|(_, v)| v).count(), 1);
    /// ```
    fn window_aggregate<A>(
        self,
        name: &str,
        windows: Windows,
        allowed_lateness_ms: u64,
        aggregator: A,
    ) -> WindowStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>;
}

/// The capability to emit at a due time, and the windows due then.
type Due<K> = (Capability<u64>, Vec<(K, u64)>);

/// One window's state on a worker.
struct WindowState<S, O> {
    state: S,
    /// What was last emitted for the window, to retract on a correction.
    emitted: Option<O>,
}

impl<'scope, K, V> WindowAggregate<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Clone + Ord,
    V: ExchangeData + Clone,
{
    fn window_aggregate<A>(
        self,
        name: &str,
        windows: Windows,
        allowed_lateness_ms: u64,
        aggregator: A,
    ) -> WindowStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>,
    {
        let size = windows.size().max(1);
        let mut builder = OperatorBuilder::new(name.to_owned(), self.scope());
        let exchange = Exchange::new(|(record, _time, _diff): &(Timed<(K, V)>, u64, isize)| record.value.0.hashed());
        let mut input = builder.new_input(self, exchange);
        let (results_output, results) = builder.new_output::<Vec<WindowUpdate<K, A::Output>>>();
        let (late_output, late) = builder.new_output::<Vec<LateRecord<(K, V)>>>();
        let mut results_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(results_output);
        let mut late_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(late_output);

        builder.build(move |_capabilities| {
            let mut state: HashMap<(K, u64), WindowState<A::State, A::Output>> = HashMap::new();
            // Windows with changes to emit once the frontier passes the time (and a capability for that time).
            let mut pending: BTreeMap<u64, Due<K>> = BTreeMap::new();
            // Window ends, to release state once the frontier passes end + lateness.
            let mut ends: BTreeMap<u64, Vec<(K, u64)>> = BTreeMap::new();
            move |frontiers| {
                let mut late_handle = late_output.activate();
                input.for_each(|cap, data| {
                    let late_cap = cap.retain_least(1).expect("window input messages carry a time");
                    let mut late_session = late_handle.session(&late_cap);
                    for (record, time, diff) in data.drain(..) {
                        let event_time = record.event_time;
                        let (key, value) = record.value;
                        let mut accepted = false;
                        let mut last_end = 0;
                        for start in windows.starts(event_time) {
                            let end = start + size;
                            last_end = end;
                            if end + allowed_lateness_ms <= time {
                                continue;
                            }
                            accepted = true;
                            let window = (key.clone(), start);
                            let entry = state.entry(window.clone()).or_insert_with(|| {
                                ends.entry(end).or_default().push(window.clone());
                                WindowState { state: A::State::default(), emitted: None }
                            });
                            aggregator.update(&mut entry.state, &value, diff);
                            // The result is due when the window ends; a correction when the late record's time is done.
                            let due = time.max(end - 1);
                            pending.entry(due).or_insert_with(|| (cap.delayed(&due, 0), Vec::new())).1.push(window);
                        }
                        if !accepted {
                            late_session.give(LateRecord {
                                record: (key, value),
                                event_time,
                                arrived_at: time,
                                diff,
                                window_end: last_end,
                                allowed_lateness_ms,
                            });
                        }
                    }
                });
                drop(late_handle);

                let frontier = &frontiers[0];
                // Emit every window whose due time the frontier has passed.
                let mut results_handle = results_output.activate();
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (due, (cap, mut windows_due)) = entry.remove_entry();
                    windows_due.sort();
                    windows_due.dedup();
                    let mut session = results_handle.session(&cap);
                    for window in windows_due {
                        let Some(entry) = state.get_mut(&window) else { continue };
                        let output = aggregator.output(&entry.state);
                        if output == entry.emitted {
                            continue;
                        }
                        if let Some(old) = entry.emitted.take() {
                            session.give(((window.clone(), old), due, -1));
                        }
                        if let Some(new) = &output {
                            session.give(((window.clone(), new.clone()), due, 1));
                        }
                        entry.emitted = output;
                    }
                }
                drop(results_handle);
                // Release windows that can no longer change.
                while let Some(entry) = ends.first_entry() {
                    let end = *entry.key();
                    if frontier.less_equal(&(end + allowed_lateness_ms)) {
                        break;
                    }
                    for window in entry.remove() {
                        state.remove(&window);
                    }
                }
            }
        });
        WindowStreams { results, late }
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

    #[test]
    fn window_starts() {
        let hop = Windows::Hopping { size_ms: 10, slide_ms: 3 };
        assert_eq!(hop.starts(10).collect::<Vec<_>>(), vec![3, 6, 9]);
        assert_eq!(hop.starts(2).collect::<Vec<_>>(), vec![0]);
        assert_eq!(Windows::Tumbling { size_ms: 10 }.starts(9).collect::<Vec<_>>(), vec![0]);
        assert_eq!(Windows::Tumbling { size_ms: 10 }.starts(10).collect::<Vec<_>>(), vec![10]);
    }
}
