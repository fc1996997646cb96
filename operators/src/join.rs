//! Outer equi-joins of differential collections: left, right and full, incremental like `join`.
//!
//! Differential's `join` is the inner join. The outer parts are built from it: a left record whose key has no
//! match on the right appears once with `None`, and when a match arrives later the `None` row is retracted and
//! the matched rows are added — a changelog, like every differential output.
//!
//! Each side is arranged by key once, under the join's name, and that arrangement serves the matches and the
//! unmatched records alike; the only other state is each side's distinct keys. Arrangements cannot be
//! checkpointed: in a job with `--checkpoint-dir` these joins turn checkpoints off, with a message at start.

use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
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
///     orders.full_join("OrdersCustomers", customers).assert_eq(expected);
/// });
/// ```
pub trait OuterJoin<'scope, T: Timestamp, K, V> {
    /// Every `(key, value)` of `self`, with each matching value of `other`, or `None` if there is none. `name`
    /// names the join's operators.
    fn left_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (V, Option<W>)), isize>;
    /// Every `(key, value)` of `other`, with each matching value of `self`, or `None` if there is none.
    fn right_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, W)), isize>;
    /// The matches, plus the unmatched records of either side with `None` for the other.
    fn full_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, Option<W>)), isize>;
}

type ByKey<'scope, T, K, V> = Arranged<'scope, TraceAgent<ValSpine<K, V, T, isize>>>;

/// The records of `side` whose key is not among `keys` (each side's keys are distinct).
fn unmatched<'scope, T, K, V>(
    side: ByKey<'scope, T, K, V>,
    keys: VecCollection<'scope, T, K, isize>,
    name: &str,
) -> VecCollection<'scope, T, (K, V), isize>
where
    T: Timestamp + Lattice + Ord,
    K: ExchangeData + Hashable,
    V: ExchangeData,
{
    let keys = keys.distinct().arrange_by_self_named(&format!("{name}: keys"));
    let matched = side.clone().join_core(keys, |k: &K, v: &V, _: &()| Some((k.clone(), v.clone())));
    side.as_collection(|k: &K, v: &V| (k.clone(), v.clone())).concat(matched.negate())
}

impl<'scope, T, K, V> OuterJoin<'scope, T, K, V> for VecCollection<'scope, T, (K, V), isize>
where
    T: Timestamp + Lattice + Ord,
    K: ExchangeData + Hashable,
    V: ExchangeData,
{
    fn left_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (V, Option<W>)), isize> {
        // Its state lives in differential's arrangements, which cannot be checkpointed.
        crate::checkpoint::unsupported(name);
        let right_keys = other.clone().map(|(k, _)| k);
        let left = self.arrange_by_key_named(&format!("{name}: left"));
        let right = other.arrange_by_key_named(&format!("{name}: right"));
        let matched = left.clone().join_core(right, |k: &K, v: &V, w: &W| Some((k.clone(), (v.clone(), Some(w.clone())))));
        matched.concat(unmatched(left, right_keys, &format!("{name}: right")).map(|(k, v)| (k, (v, None))))
    }

    fn right_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, W)), isize> {
        other.left_join(name, self).map(|(k, (w, v))| (k, (v, w)))
    }

    fn full_join<W: ExchangeData>(
        self,
        name: &str,
        other: VecCollection<'scope, T, (K, W), isize>,
    ) -> VecCollection<'scope, T, (K, (Option<V>, Option<W>)), isize> {
        crate::checkpoint::unsupported(name);
        let (left_keys, right_keys) = (self.clone().map(|(k, _)| k), other.clone().map(|(k, _)| k));
        let left = self.arrange_by_key_named(&format!("{name}: left"));
        let right = other.arrange_by_key_named(&format!("{name}: right"));
        let matched = left.clone().join_core(right.clone(), |k: &K, v: &V, w: &W| Some((k.clone(), (Some(v.clone()), Some(w.clone())))));
        let left_only = unmatched(left, right_keys, &format!("{name}: right")).map(|(k, v)| (k, (Some(v), None)));
        let right_only = unmatched(right, left_keys, &format!("{name}: left")).map(|(k, w)| (k, (None, Some(w))));
        matched.concat(left_only).concat(right_only)
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::OuterJoin;
    use crate::checkpoint::Checkpoints;

    #[test]
    fn outer_joins_turn_checkpoints_off() {
        let unsupported = timely::execute_directly(|worker| {
            let registry = Checkpoints::install(None);
            worker.dataflow::<u64, _, _>(|scope| {
                let left = scope.new_collection_from(vec![(1u32, 'a')]).1;
                let right = scope.new_collection_from(vec![(1u32, 'b')]).1;
                drop(left.clone().left_join("Left", right.clone()));
                drop(left.full_join("Full", right));
            });
            Checkpoints::uninstall();
            registry.unsupported()
        });
        assert_eq!(unsupported, vec!["Full".to_owned(), "Left".to_owned()]);
    }
}
