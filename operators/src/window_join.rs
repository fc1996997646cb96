//! Windowed stream-stream joins: records of two keyed streams that fall in the same event-time window.
//!
//! [`WindowJoin::window_join`] pairs each record of one stream with the records of the other that have the same
//! key and fall in the same window ([`Windows`]: tumbling or hopping; a record in several hopping windows joins in
//! each). Pairs are emitted as `((key, window_start), (left, right))` updates:
//! - the pairs of a window are emitted when the frontier passes its end;
//! - a late record whose window ended but `window_end + allowed_lateness` is still ahead of its dataflow time adds
//!   its pairs at its own time (a retraction retracts them), the same rule as
//!   [`window_aggregate`](crate::window::WindowAggregate::window_aggregate);
//! - a record later than that for every window it falls in goes to its side's late output;
//! - a window's records are released once the frontier passes `window_end + allowed_lateness`; releasing emits
//!   nothing.
//!
//! Both sides are exchanged by key and processed one time at a time once both frontiers have passed it, so the
//! pairs, with their times, are the same for any number of workers and processes.

use std::hash::Hash;

use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Map;

use crate::event_time::Timed;
use crate::late::LateRecord;
use crate::ordered::split_late;
use crate::timed_join::{Joinable, timed_join};
use crate::window::Windows;

/// A windowed join update: `(((key, window_start), (left, right)), time, diff)`.
pub type WindowJoinUpdate<K, V, W> = (((K, u64), (V, W)), u64, isize);

/// The pairs of a windowed join, and each side's records too late for any window.
pub struct WindowJoinStreams<'scope, K, V, W> {
    /// `((key, window_start), (left, right))` updates.
    pub results: Stream<'scope, u64, Vec<WindowJoinUpdate<K, V, W>>>,
    /// Left records later than the allowed lateness.
    pub late_left: Stream<'scope, u64, Vec<LateRecord<(K, V)>>>,
    /// Right records later than the allowed lateness.
    pub late_right: Stream<'scope, u64, Vec<LateRecord<(K, W)>>>,
}

/// Joins two keyed streams of `(Timed<(K, V)>, time, diff)` updates window by window.
pub trait WindowJoin<'scope, K, V> {
    /// Pairs records of `self` and `other` with the same key in the same window; see the module docs.
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use std::time::Duration;
    /// use tributary_operators::window::Windows;
    /// use tributary_operators::window_join::WindowJoin;
    ///
    /// let pairs = timely::example(|scope| {
    ///     let views = vec![(Timed::new(2, (7u32, 'v')), 2u64, 1isize)].to_stream(scope).container::<Vec<_>>();
    ///     let clicks = vec![
    ///         (Timed::new(8, (7u32, 'c')), 8u64, 1isize),
    ///         (Timed::new(12, (7u32, 'x')), 12, 1), // the next window
    ///     ].to_stream(scope).container::<Vec<_>>();
    ///     views.window_join("ViewsToClicks", clicks, Windows::Tumbling { size_ms: 10 }, Duration::ZERO).results.capture()
    /// });
    /// let pairs: Vec<_> = pairs.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(pairs, vec![(((7, 0), ('v', 'c')), 9, 1)]);
    /// ```
    fn window_join<W>(
        self,
        name: &str,
        other: Stream<'scope, u64, Vec<(Timed<(K, W)>, u64, isize)>>,
        windows: Windows,
        allowed_lateness: std::time::Duration,
    ) -> WindowJoinStreams<'scope, K, V, W>
    where
        W: ExchangeData + Clone;
}

/// Splits a side into its records per open window, and its records too late for every window.
fn per_window<'scope, K, V>(
    stream: Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>,
    windows: Windows,
    allowed_lateness_ms: u64,
) -> (Stream<'scope, u64, Vec<(Joinable<(K, u64), V>, u64, isize)>>, Stream<'scope, u64, Vec<LateRecord<(K, V)>>>)
where
    K: ExchangeData + Clone,
    V: ExchangeData + Clone,
{
    let size = windows.size().max(1);
    split_late(stream, "WindowsOf", move |(record, time, diff), out| {
        let Timed { event_time, value: (key, value), origin } = record;
        for start in windows.starts(event_time).filter(|start| start + size + allowed_lateness_ms > time) {
            let joinable = Joinable {
                key: (key.clone(), start),
                event_time,
                expires: start + size + allowed_lateness_ms - 1,
                emit_from: start + size - 1,
                value: value.clone(),
            };
            out.push((joinable, time, diff));
        }
        if !out.is_empty() {
            return None;
        }
        let window_end = windows.starts(event_time).last().map_or(event_time, |start| start + size);
        Some(LateRecord { record: (key, value), event_time, arrived_at: time, diff, window_end, allowed_lateness_ms, origin })
    })
}

impl<'scope, K, V> WindowJoin<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Clone,
    V: ExchangeData + Clone,
{
    fn window_join<W>(
        self,
        name: &str,
        other: Stream<'scope, u64, Vec<(Timed<(K, W)>, u64, isize)>>,
        windows: Windows,
        allowed_lateness: std::time::Duration,
    ) -> WindowJoinStreams<'scope, K, V, W>
    where
        W: ExchangeData + Clone,
    {
        let allowed_lateness_ms = crate::event_time::ms(allowed_lateness);
        let (left, late_left) = per_window(self, windows, allowed_lateness_ms);
        let (right, late_right) = per_window(other, windows, allowed_lateness_ms);
        // The window is part of the key, so every event time in it matches.
        let results = timed_join(left, right, name, |_| 0..=u64::MAX, |_| 0..=u64::MAX).map(|(pair, time, diff)| (pair.value, time, diff));
        WindowJoinStreams { results, late_left, late_right }
    }
}
