//! Interval joins: each record of one keyed stream with the other stream's records near it in event time.
//!
//! [`IntervalJoin::interval_join`] pairs a left record at event time `a` with every right record of the same key
//! whose event time `b` is in `[a - before, a + after]` (an [`Interval`]). A pair is emitted as soon as both records are in
//! (at the later of their dataflow times), as `Timed<(key, (left, right))>` at the later of the two event times;
//! a retraction retracts its pairs.
//!
//! Lateness is measured per record: a record whose dataflow time is more than `allowed_lateness` past its
//! event time goes to its side's late output (with `window_end = event_time + 1`, its own instant). A left record
//! is kept until the frontier passes `a + after + allowed_lateness`, a right one until it passes
//! `b + before + allowed_lateness`: after that no record that is not late can match it. Releasing emits
//! nothing.
//!
//! Both sides are exchanged by key and processed one time at a time once both frontiers have passed it, so the
//! pairs, with their times, are the same for any number of workers and processes.

use std::hash::Hash;

use timely::ExchangeData;
use timely::dataflow::Stream;

use crate::event_time::Timed;
use crate::late::LateRecord;
use crate::ordered::split_late;
use crate::timed_join::{Joinable, timed_join};

/// How far apart in event time two records may be and still join: a left record at `a` joins right records at
/// `b` in `[a - before, a + after]`.
///
/// ```
/// use std::time::Duration;
/// use tributary_operators::interval_join::Interval;
/// let paid_within_a_minute = Interval::between(Duration::ZERO, Duration::from_secs(60));
/// assert_eq!((paid_within_a_minute.before_ms, paid_within_a_minute.after_ms), (0, 60_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// How long before the left record a right one may be (ms).
    pub before_ms: u64,
    /// How long after the left record a right one may be (ms).
    pub after_ms: u64,
}

impl Interval {
    /// Right records from `before` before a left record to `after` after it.
    pub fn between(before: std::time::Duration, after: std::time::Duration) -> Interval {
        Interval { before_ms: crate::event_time::ms(before), after_ms: crate::event_time::ms(after) }
    }
}

/// The pairs of an interval join, and each side's late records.
pub struct IntervalJoinStreams<'scope, K, V, W> {
    /// `(Timed<(key, (left, right))>, time, diff)` updates.
    pub results: Stream<'scope, u64, Vec<(Timed<(K, (V, W))>, u64, isize)>>,
    /// Left records later than the allowed lateness.
    pub late_left: Stream<'scope, u64, Vec<LateRecord<(K, V)>>>,
    /// Right records later than the allowed lateness.
    pub late_right: Stream<'scope, u64, Vec<LateRecord<(K, W)>>>,
}

/// Joins two keyed streams of `(Timed<(K, V)>, time, diff)` updates by event-time proximity.
pub trait IntervalJoin<'scope, K, V> {
    /// Pairs each record of `self` at `a` with the records of `other` with the same key at `b` in
    /// `[a - before, a + after]` ([`Interval`]); a record more than `allowed_lateness` past its event time when it
    /// arrives is late. See the module docs.
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
    /// use tributary_operators::event_time::Timed;
    /// use std::time::Duration;
    /// use tributary_operators::interval_join::{Interval, IntervalJoin};
    ///
    /// let pairs = timely::example(|scope| {
    ///     let orders = vec![(Timed::new(100, (1u32, 'o')), 100u64, 1isize)].to_stream(scope).container::<Vec<_>>();
    ///     let payments = vec![
    ///         (Timed::new(130, (1u32, 'p')), 130u64, 1isize), // within 50 ms after the order
    ///         (Timed::new(190, (1u32, 'q')), 190, 1),        // too long after
    ///     ].to_stream(scope).container::<Vec<_>>();
    ///     orders.interval_join("OrdersPaid", payments, Interval::between(Duration::ZERO, Duration::from_millis(50)), Duration::ZERO).results.capture()
    /// });
    /// let pairs: Vec<_> = pairs.extract().into_iter().flat_map(|(_, v)| v).map(|(r, t, d)| (r.event_time, r.value, t, d)).collect();
    /// assert_eq!(pairs, vec![(130, (1, ('o', 'p')), 130, 1)]);
    /// ```
    fn interval_join<W>(
        self,
        name: &str,
        other: Stream<'scope, u64, Vec<(Timed<(K, W)>, u64, isize)>>,
        interval: Interval,
        allowed_lateness: std::time::Duration,
    ) -> IntervalJoinStreams<'scope, K, V, W>
    where
        W: ExchangeData + Clone;
}

/// Splits a side into records that may join (kept for `keep_ms` past their event time plus the lateness) and
/// late ones.
fn admit<'scope, K, V>(
    stream: Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>,
    keep_ms: u64,
    allowed_lateness_ms: u64,
) -> (Stream<'scope, u64, Vec<(Joinable<K, V>, u64, isize)>>, Stream<'scope, u64, Vec<LateRecord<(K, V)>>>)
where
    K: ExchangeData + Clone,
    V: ExchangeData + Clone,
{
    split_late(stream, "Admit", move |(record, time, diff), out| {
        let Timed { event_time, value: (key, value), origin } = record;
        if event_time + allowed_lateness_ms >= time {
            let expires = event_time + keep_ms + allowed_lateness_ms;
            out.push((Joinable { key, event_time, expires, emit_from: 0, value }, time, diff));
            None
        } else {
            Some(LateRecord {
                record: (key, value),
                event_time,
                arrived_at: time,
                diff,
                window_end: event_time + 1,
                allowed_lateness_ms,
                origin,
            })
        }
    })
}

impl<'scope, K, V> IntervalJoin<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Clone,
    V: ExchangeData + Clone,
{
    fn interval_join<W>(
        self,
        name: &str,
        other: Stream<'scope, u64, Vec<(Timed<(K, W)>, u64, isize)>>,
        interval: Interval,
        allowed_lateness: std::time::Duration,
    ) -> IntervalJoinStreams<'scope, K, V, W>
    where
        W: ExchangeData + Clone,
    {
        let Interval { before_ms: lower_ms, after_ms: upper_ms } = interval;
        let allowed_lateness_ms = crate::event_time::ms(allowed_lateness);
        let (left, late_left) = admit(self, upper_ms, allowed_lateness_ms);
        let (right, late_right) = admit(other, lower_ms, allowed_lateness_ms);
        let results = timed_join(
            left,
            right,
            name,
            move |a| a.saturating_sub(lower_ms)..=a.saturating_add(upper_ms),
            move |b| b.saturating_sub(upper_ms)..=b.saturating_add(lower_ms),
        );
        IntervalJoinStreams { results, late_left, late_right }
    }
}
