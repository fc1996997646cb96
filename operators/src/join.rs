//! Outer equi-joins of differential collections: left, right and full, incremental like `join`.
//!
//! Differential's `join` is the inner join. The outer parts are built from it: a left record whose key has no
//! match on the right appears once with `None` (`antijoin` against the right side's distinct keys), and when a
//! match arrives later the `None` row is retracted and the matched rows are added — a changelog, like every
//! differential output.

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use timely::progress::Timestamp;

/// Left, right and full outer joins on collections of `(key, value)` pairs.
///
/// ```
/// use differential_dataflow::input::Input;
/// use tributary_operators::join::OuterJoin;
///
/// timely::example(|scope| {
///     // Orders (customer, item) and customers (id, name initial).
///     let orders = scope.new_collection_from(vec![(1, 'p'), (2, 'i')]).1;
///     let customers = scope.new_collection_from(vec![(1, 'A'), (3, 'B')]).1;
///     let expected = scope.new_collection_from(vec![(1, (Some('p'), Some('A'))), (2, (Some('i'), None)), (3, (None, Some('B')))]).1;
///     orders.full_join(customers).assert_eq(expected);
/// });
/// ```
pub trait OuterJoin<'scope, T: Timestamp, K, V> {
    /// Every `(key, value)` of `self`, with each matching value of `other`, or `None` if there is none.
    fn left_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (V, Option<W>)), isize>;
    /// Every `(key, value)` of `other`, with each matching value of `self`, or `None` if there is none.
    fn right_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, W)), isize>;
    /// The matches, plus the unmatched records of either side with `None` for the other.
    fn full_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, Option<W>)), isize>;
}

impl<'scope, T, K, V> OuterJoin<'scope, T, K, V> for VecCollection<'scope, T, (K, V), isize>
where
    T: Timestamp + Lattice + Ord,
    K: ExchangeData + Hashable,
    V: ExchangeData,
{
    fn left_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (V, Option<W>)), isize> {
        let matched = self.clone().join(other.clone()).map(|(k, (v, w))| (k, (v, Some(w))));
        let unmatched = self.antijoin(other.map(|(k, _)| k).distinct()).map(|(k, v)| (k, (v, None)));
        matched.concat(unmatched)
    }

    fn right_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, W)), isize> {
        other.left_join(self).map(|(k, (w, v))| (k, (v, w)))
    }

    fn full_join<W: ExchangeData>(
        self,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, Option<W>)), isize> {
        let left = self.clone().left_join(other.clone()).map(|(k, (v, w))| (k, (Some(v), w)));
        let right_only = other.antijoin(self.map(|(k, _)| k).distinct()).map(|(k, w)| (k, (None, Some(w))));
        left.concat(right_only)
    }
}
