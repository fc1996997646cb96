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
//!   output, so a closed window's result stays;
//! - with [`Emit::Final`] a window's result is emitted once, when the frontier passes `window_end +
//!   allowed_lateness`, with no corrections: one result per window, later by the allowed lateness.
//!
//! Parameters are a [`WindowSpec`]: `Windows::tumbling(size)?.allowed_lateness(lateness).emit_final()`; a bare
//! [`Windows`] means no lateness and [`Emit::OnClose`].
//!
//! Any [`Aggregator`] works: count, sum, average, min, max, count-distinct, top-k, or a user fold over the
//! window's multiset of values; all accept retractions. Session windows are in [`session`](crate::session).
//!
//! Records are exchanged by key, so each window lives on one worker, and applied one time at a time once the
//! frontier has passed it: the results, with their times, are the same for any number of workers and
//! processes. A dedicated operator rather than differential's `reduce`: windows close by the frontier
//! and their state goes away, which an arrangement would express as a retraction of the result.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;

use differential_dataflow::Hashable;
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::aggregate::Aggregator;
use crate::checkpoint::Participant;
use crate::event_time::Timed;
use crate::late::LateRecord;
use crate::ordered::ByTime;

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

/// Why window parameters were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// A window must last at least 1 ms.
    #[error("a window must last at least 1 ms (got {0:?})")]
    EmptyWindow(std::time::Duration),
    /// Hopping windows must start at least 1 ms apart.
    #[error("hopping windows must start at least 1 ms apart (got a slide of {0:?})")]
    EmptySlide(std::time::Duration),
    /// A slide longer than the window leaves gaps: records between two windows would be in none.
    #[error("a slide of {slide:?} is longer than the window ({size:?}): records between two windows would be in none")]
    Gaps {
        /// The window length.
        size: std::time::Duration,
        /// The slide.
        slide: std::time::Duration,
    },
}

impl Windows {
    /// Back-to-back windows of `size`; a size under 1 ms is refused.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tributary_operators::window::Windows;
    /// assert_eq!(Windows::tumbling(Duration::from_secs(10)), Ok(Windows::Tumbling { size_ms: 10_000 }));
    /// assert!(Windows::tumbling(Duration::ZERO).is_err());
    /// ```
    pub fn tumbling(size: std::time::Duration) -> Result<Windows, WindowError> {
        let size_ms = crate::event_time::ms(size);
        if size_ms == 0 {
            return Err(WindowError::EmptyWindow(size));
        }
        Ok(Windows::Tumbling { size_ms })
    }

    /// Windows of `size` starting every `slide` (a record is in about `size / slide` of them); an empty window or
    /// slide, or a slide longer than the window, is refused.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tributary_operators::window::Windows;
    /// let (minute, ten_s) = (Duration::from_secs(60), Duration::from_secs(10));
    /// assert_eq!(Windows::hopping(minute, ten_s), Ok(Windows::Hopping { size_ms: 60_000, slide_ms: 10_000 }));
    /// assert!(Windows::hopping(ten_s, minute).is_err());
    /// assert!(Windows::hopping(minute, Duration::ZERO).is_err());
    /// ```
    pub fn hopping(size: std::time::Duration, slide: std::time::Duration) -> Result<Windows, WindowError> {
        let (size_ms, slide_ms) = (crate::event_time::ms(size), crate::event_time::ms(slide));
        if size_ms == 0 {
            return Err(WindowError::EmptyWindow(size));
        }
        if slide_ms == 0 {
            return Err(WindowError::EmptySlide(slide));
        }
        if slide_ms > size_ms {
            return Err(WindowError::Gaps { size, slide });
        }
        Ok(Windows::Hopping { size_ms, slide_ms })
    }

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

/// When a window's result is emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emit {
    /// When the frontier passes the window's end; a late record within the allowed lateness then corrects it: the
    /// old result retracted and the new one added at the late record's time. The default.
    #[default]
    OnClose,
    /// Once per window, when the frontier passes its end plus the allowed lateness: no corrections (one alert per
    /// window), each result later by the allowed lateness. (A bounded run's last times are final only
    /// provisionally: a later run with more input may correct them; see docs/exactly-once.md.)
    Final,
}

/// Windows with their allowed lateness and emit mode: what [`WindowAggregate::window_aggregate`] takes.
///
/// ```
/// use std::time::Duration;
/// use tributary_operators::window::{Emit, WindowSpec, Windows};
/// let spec = Windows::tumbling(Duration::from_secs(60))?.allowed_lateness(Duration::from_secs(5)).emit_final();
/// assert_eq!(spec, WindowSpec { windows: Windows::Tumbling { size_ms: 60_000 }, allowed_lateness_ms: 5_000, emit: Emit::Final });
/// # Ok::<(), tributary_operators::window::WindowError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// The windows a record falls in.
    pub windows: Windows,
    /// How long after a window's end a late record still updates it, in ms.
    pub allowed_lateness_ms: u64,
    /// When results are emitted.
    pub emit: Emit,
}

impl From<Windows> for WindowSpec {
    fn from(windows: Windows) -> Self {
        WindowSpec { windows, allowed_lateness_ms: 0, emit: Emit::OnClose }
    }
}

impl WindowSpec {
    /// A late record within `lateness` after a window's end still updates it.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.allowed_lateness_ms = crate::event_time::ms(lateness);
        self
    }

    /// Emit each window's result once, when it is final ([`Emit::Final`]).
    pub fn emit_final(mut self) -> Self {
        self.emit = Emit::Final;
        self
    }
}

impl Windows {
    /// These windows with an allowed lateness ([`WindowSpec::allowed_lateness`]).
    pub fn allowed_lateness(self, lateness: std::time::Duration) -> WindowSpec {
        WindowSpec::from(self).allowed_lateness(lateness)
    }

    /// These windows, each result emitted once when final ([`Emit::Final`]).
    pub fn emit_final(self) -> WindowSpec {
        WindowSpec::from(self).emit_final()
    }
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
    /// use std::time::Duration;
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use tributary_operators::aggregate::Count;
    /// use tributary_operators::window::{WindowAggregate, Windows};
    ///
    /// let (results, late) = timely::example(|scope| {
    ///     let clicks = vec![
    ///         (Timed::new(3, ("a".to_string(), ())), 3u64, 1isize),
    ///         (Timed::new(7, ("a".to_string(), ())), 7, 1),
    ///         (Timed::new(12, ("a".to_string(), ())), 12, 1),
    ///         // Arrives when the watermark is 30: window [0, 10) has closed, with 5 ms of lateness for good.
    ///         (Timed::new(4, ("a".to_string(), ())), 30, 1),
    ///     ];
    ///     let windows = clicks.to_stream(scope).container::<Vec<_>>().window_aggregate("Clicks", Windows::Tumbling { size_ms: 10 }.allowed_lateness(Duration::from_millis(5)), Count);
    ///     (windows.results.capture(), windows.late.capture())
    /// });
    /// let mut results: Vec<_> = results.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// results.sort();
    /// assert_eq!(results, vec![((("a".to_string(), 0), 2), 9, 1), ((("a".to_string(), 10), 1), 19, 1)]);
    /// assert_eq!(late.extract().into_iter().flat_map(|(_, v)| v).count(), 1);
    /// ```
    ///
    /// In a job with checkpoints the operator's windows (their state, what was emitted, what is due) are saved
    /// under `name` as of each checkpoint's time, and restored on a restart, keyed windows going to the
    /// worker their key now routes to (any number of workers).
    fn window_aggregate<A>(self, name: &str, spec: impl Into<WindowSpec>, aggregator: A) -> WindowStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>,
        A::State: Serialize + DeserializeOwned,
        A::Output: Serialize + DeserializeOwned;
}

/// A window operator's checkpointed state: per window start and key its state, what was emitted and when it is
/// due; and the windows due after the checkpoint's time.
type WindowSnapshot<K, S, O> = (Vec<(u64, K, S, Option<O>, Option<u64>)>, Vec<(u64, K, u64)>);

/// One window's state on a worker.
struct WindowState<S, O> {
    state: S,
    /// What was last emitted for the window, to retract on a correction.
    emitted: Option<O>,
    /// The time an emission is already scheduled at, so each record does not schedule it again.
    scheduled: Option<u64>,
}

impl<'scope, K, V> WindowAggregate<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Clone + Ord,
    V: ExchangeData + Clone,
{
    fn window_aggregate<A>(self, name: &str, spec: impl Into<WindowSpec>, aggregator: A) -> WindowStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>,
        A::State: Serialize + DeserializeOwned,
        A::Output: Serialize + DeserializeOwned,
    {
        let WindowSpec { windows, allowed_lateness_ms, emit } = spec.into();
        let size = windows.size().max(1);
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        let (index, peers) = (self.scope().index(), self.scope().peers());
        let mut participant = Participant::join(name);
        let op_name = name.to_owned();
        let mut builder = OperatorBuilder::new(name.to_owned(), self.scope());
        let exchange = Exchange::new(|(record, _time, _diff): &(Timed<(K, V)>, u64, isize)| record.value.0.hashed());
        let mut input = builder.new_input(self, exchange);
        let (results_output, results) = builder.new_output::<Vec<WindowUpdate<K, A::Output>>>();
        let (late_output, late) = builder.new_output::<Vec<LateRecord<(K, V)>>>();
        let mut results_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(results_output);
        let mut late_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(late_output);
        // A window still accepts a record at `time` while `end + allowed_lateness` is ahead of it.
        let open = move |start: u64, time: u64| start + size + allowed_lateness_ms > time;

        builder.build(move |capabilities| {
            // Per window start, each key's state: a window's whole map goes at once when it is released.
            let mut state: BTreeMap<u64, HashMap<K, WindowState<A::State, A::Output>>> = BTreeMap::new();
            // Accepted records, applied in time order once the frontier has passed their time.
            let mut stash: ByTime<(Timed<(K, V)>, isize)> = ByTime::default();
            // Windows with changes to emit once the frontier passes the time.
            let mut pending: ByTime<(K, u64)> = ByTime::default();
            if let Some((_, parts)) = participant.as_ref().and_then(Participant::restored) {
                let mine = |key: &K| (key.hashed() % peers as u64) as usize == index;
                for part in parts {
                    #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                    let (windows, due): WindowSnapshot<K, A::State, A::Output> = bincode::deserialize(&part).unwrap_or_else(|e| {
                        panic!("the checkpoint of window operator `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                    });
                    for (start, key, window_state, emitted, scheduled) in windows.into_iter().filter(|w| mine(&w.1)) {
                        state.entry(start).or_default().insert(key, WindowState { state: window_state, emitted, scheduled });
                    }
                    for (time, key, start) in due.into_iter().filter(|d| mine(&d.1)) {
                        pending.push(time, |t| capabilities[0].delayed(t), (key, start));
                    }
                }
            }
            drop(capabilities);
            let snapshot = move |state: &BTreeMap<u64, HashMap<K, WindowState<A::State, A::Output>>>, pending: &ByTime<(K, u64)>| {
                let windows: Vec<_> = state
                    .iter()
                    .flat_map(|(start, keys)| keys.iter().map(move |(key, w)| (start, key, &w.state, &w.emitted, &w.scheduled)))
                    .collect();
                let due: Vec<_> = pending.iter().flat_map(|(time, items)| items.iter().map(move |(key, start)| (time, key, start))).collect();
                #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
                bincode::serialize(&(windows, due)).expect("window state serializes")
            };
            move |frontiers| {
                let (mut received, mut emitted) = (0, 0);
                let mut late_handle = late_output.activate();
                input.for_each(|cap, data| {
                    received += data.len();
                    for (record, time, diff) in data.drain(..) {
                        if windows.starts(record.event_time).any(|start| open(start, time)) {
                            stash.push(time, |t| cap.delayed(t, 0), (record, diff));
                            continue;
                        }
                        // Too late for every window it falls in: a pure function of the record and its time.
                        let event_time = record.event_time;
                        let window_end = windows.starts(event_time).last().map_or(event_time, |start| start + size);
                        late_handle.session(&cap.delayed(&time, 1)).give(LateRecord {
                            record: record.value,
                            event_time,
                            arrived_at: time,
                            diff,
                            window_end,
                            allowed_lateness_ms,
                            origin: record.origin,
                        });
                    }
                });
                drop(late_handle);

                let frontier = &frontiers[0];
                let mut results_handle = results_output.activate();
                // One time at a time: apply its records, then emit what is due at it.
                while let Some(now) = stash.earliest(&pending).filter(|t| !frontier.less_equal(t)) {
                    if let Some(participant) = participant.as_mut() {
                        for time in participant.due_before(now) {
                            participant.put(time, snapshot(&state, &pending));
                        }
                    }
                    if let Some((cap, records)) = stash.take(now) {
                        for (record, diff) in records {
                            let (key, value) = record.value;
                            for start in windows.starts(record.event_time).filter(|&start| open(start, now)) {
                                let end = start + size;
                                let entry = state.entry(start).or_default().entry(key.clone()).or_insert_with(|| WindowState {
                                    state: A::State::default(),
                                    emitted: None,
                                    scheduled: None,
                                });
                                aggregator.update(&mut entry.state, &value, diff);
                                // The result is due when the window ends, a correction at the late record's time; a
                                // final result when the lateness has passed too (`open` keeps `now` before that).
                                let due = match emit {
                                    Emit::OnClose => now.max(end - 1),
                                    Emit::Final => end + allowed_lateness_ms - 1,
                                };
                                if entry.scheduled != Some(due) {
                                    entry.scheduled = Some(due);
                                    pending.push(due, |d| cap.delayed(d), (key.clone(), start));
                                }
                            }
                        }
                    }
                    if let Some((cap, mut windows_due)) = pending.take(now) {
                        windows_due.sort();
                        windows_due.dedup();
                        let mut session = results_handle.session(&cap);
                        for window in windows_due {
                            let Some(entry) = state.get_mut(&window.1).and_then(|keys| keys.get_mut(&window.0)) else { continue };
                            if entry.scheduled == Some(now) {
                                entry.scheduled = None;
                            }
                            let output = aggregator.output(&entry.state);
                            if output == entry.emitted {
                                continue;
                            }
                            if let Some(old) = entry.emitted.take() {
                                session.give(((window.clone(), old), now, -1));
                                emitted += 1;
                            }
                            if let Some(new) = &output {
                                session.give(((window.clone(), new.clone()), now, 1));
                                emitted += 1;
                            }
                            entry.emitted = output;
                        }
                    }
                }
                drop(results_handle);
                if let Some(participant) = participant.as_mut() {
                    for time in participant.due(frontier.frontier()) {
                        participant.put(time, snapshot(&state, &pending));
                    }
                }
                // Release windows that can no longer change: no record at or after the frontier is open for them.
                while let Some(window) = state.first_entry() {
                    if frontier.less_equal(&(window.key() + size + allowed_lateness_ms)) {
                        break;
                    }
                    window.remove();
                }
                gauges.set(state.values().map(HashMap::len).sum(), stash.len());
                gauges.count(received, emitted);
            }
        });
        WindowStreams { results, late }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_windows_are_capped_like_every_duration() {
        let max = crate::event_time::MAX_EVENT_TIME;
        assert_eq!(Windows::tumbling(std::time::Duration::MAX), Ok(Windows::Tumbling { size_ms: max }));
        let hop = Windows::hopping(std::time::Duration::MAX, std::time::Duration::MAX);
        assert_eq!(hop, Ok(Windows::Hopping { size_ms: max, slide_ms: max }));
        // The operators' arithmetic (start + size + lateness) stays in range.
        assert!(max.checked_add(max).and_then(|t| t.checked_add(max)).is_some());
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
