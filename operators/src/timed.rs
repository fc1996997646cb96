//! Mapping and keying streams of timed records without rebuilding their `(Timed<T>, time, diff)` updates.
//!
//! Sources emit `(Timed<T>, time, diff)` updates: the record with its event time, at its dataflow time. The
//! event-time operators ([`window`](crate::window), [`session`](crate::session), the timed joins) take keyed
//! records `Timed<(K, V)>`. [`TimedStream`] maps the records in between and keeps their event and dataflow
//! times, so a program says what it computes:
//!
//! ```
//! use timely::dataflow::operators::{Capture, ToStream};
//! use timely::dataflow::operators::capture::Extract;
//! use tributary_operators::{TimedStream, Timed};
//!
//! #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
//! struct Payment { card: String, cents: u64 }
//!
//! let captured = timely::example(|scope| {
//!     let payments = vec![
//!         (Timed::new(5, Payment { card: "a".into(), cents: 250 }), 0u64, 1isize),
//!         (Timed::new(7, Payment { card: "b".into(), cents: 0 }), 0, 1),
//!     ];
//!     payments
//!         .to_stream(scope)
//!         .filter_timed(|p| p.cents > 0)
//!         .key_by(|p| p.card.clone())
//!         .map_timed(|(card, p)| (card, p.cents))
//!         .capture()
//! });
//! let out: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
//! assert_eq!(out, vec![(Timed::new(5, ("a".to_string(), 250)), 0, 1)]);
//! ```

use timely::dataflow::Stream;
use timely::dataflow::operators::vec::{Filter, Map};

use crate::event_time::Timed;

/// Record-wise operations on a stream of `(Timed<T>, time, diff)` updates that keep each record's event time,
/// dataflow time and multiplicity.
pub trait TimedStream<'scope, T> {
    /// Each record's value mapped by `f`.
    fn map_timed<U: 'static>(self, f: impl FnMut(T) -> U + 'static) -> Stream<'scope, u64, Vec<(Timed<U>, u64, isize)>>;

    /// Each record keyed by `key`: `Timed<(key, record)>`, the shape the keyed event-time operators take.
    fn key_by<K: 'static>(self, key: impl FnMut(&T) -> K + 'static) -> Stream<'scope, u64, Vec<(Timed<(K, T)>, u64, isize)>>;

    /// Only the records for which `keep` holds.
    fn filter_timed(self, keep: impl FnMut(&T) -> bool + 'static) -> Stream<'scope, u64, Vec<(Timed<T>, u64, isize)>>;

    /// Every value `f` returns for a record, each with the record's event time.
    fn flat_map_timed<I: IntoIterator>(self, f: impl FnMut(T) -> I + 'static) -> Stream<'scope, u64, Vec<(Timed<I::Item>, u64, isize)>>
    where
        I::Item: 'static;
}

impl<'scope, T: 'static> TimedStream<'scope, T> for Stream<'scope, u64, Vec<(Timed<T>, u64, isize)>> {
    fn map_timed<U: 'static>(self, mut f: impl FnMut(T) -> U + 'static) -> Stream<'scope, u64, Vec<(Timed<U>, u64, isize)>> {
        self.map(move |(record, time, diff)| (record.map(&mut f), time, diff))
    }

    fn key_by<K: 'static>(self, mut key: impl FnMut(&T) -> K + 'static) -> Stream<'scope, u64, Vec<(Timed<(K, T)>, u64, isize)>> {
        self.map_timed(move |value| (key(&value), value))
    }

    fn filter_timed(self, mut keep: impl FnMut(&T) -> bool + 'static) -> Stream<'scope, u64, Vec<(Timed<T>, u64, isize)>> {
        self.filter(move |(record, _, _)| keep(&record.value))
    }

    fn flat_map_timed<I: IntoIterator>(self, mut f: impl FnMut(T) -> I + 'static) -> Stream<'scope, u64, Vec<(Timed<I::Item>, u64, isize)>>
    where
        I::Item: 'static,
    {
        self.flat_map(move |(record, time, diff)| {
            let Timed { event_time, value, origin } = record;
            f(value).into_iter().map(move |value| (Timed { event_time, value, origin: origin.clone() }, time, diff))
        })
    }
}
