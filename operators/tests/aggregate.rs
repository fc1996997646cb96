//! Whole-collection aggregations against a plain model of their changelog: random inserts and retractions over
//! time, at 1, 2 and 3 workers, with differential's arrangements and (in a dataflow taking checkpoints) with the
//! aggregate's own checkpointed state. Each change of a key's values retracts its old result and adds the new one, at
//! the time of the change.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{consolidate, listing};
use differential_dataflow::input::Input;
use proptest::prelude::*;
use timely::dataflow::operators::Inspect;
use tributary_operators::aggregate::{Aggregate, Aggregator, Fold, Sum};
use tributary_operators::checkpoint::Checkpoints;

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `(key, value, time, diff)`, in time order.
type Change = (u8, u8, u64, isize);

/// Inserts at increasing times; a retraction withdraws the latest live record.
fn changes(ops: &[(u64, u8, u8, bool)]) -> Vec<Change> {
    let mut time = 0;
    let mut live = Vec::new();
    let mut out = Vec::new();
    for &(step, key, value, retract) in ops {
        time += step;
        if retract {
            if let Some((k, v)) = live.pop() {
                out.push((k, v, time, -1));
            }
        } else {
            live.push((key, value));
            out.push((key, value, time, 1));
        }
    }
    out
}

/// The changelog `(key, result, time) -> diff` of `f` over each key's multiset.
fn model<O: Ord + Clone>(changes: &[Change], f: impl Fn(&BTreeMap<u8, isize>) -> Option<O>) -> BTreeMap<(u8, O, u64), isize> {
    let mut values: BTreeMap<u8, BTreeMap<u8, isize>> = BTreeMap::new();
    let mut current: BTreeMap<u8, O> = BTreeMap::new();
    let mut log = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let time = changes[i].2;
        while i < changes.len() && changes[i].2 == time {
            let (k, v, _, d) = changes[i];
            *values.entry(k).or_default().entry(v).or_default() += d;
            i += 1;
        }
        for (k, multiset) in &mut values {
            multiset.retain(|_, n| *n != 0);
            let new = f(multiset);
            let old = current.remove(k);
            if old != new {
                log.extend(old.map(|o| ((*k, o, time), -1)));
                log.extend(new.clone().map(|n| ((*k, n, time), 1)));
            }
            if let Some(n) = new {
                current.insert(*k, n);
            }
        }
    }
    consolidate(log)
}

/// `checkpointed`: in a dataflow that takes checkpoints (a registry installed, no checkpoint asked for), where the
/// aggregate keeps its state in an operator of its own instead of differential's arrangements.
fn run<A, O>(changes: Vec<Change>, workers: usize, checkpointed: bool, aggregator: fn() -> A) -> BTreeMap<(u8, O, u64), isize>
where
    A: Aggregator<u8, Output = O>,
    O: differential_dataflow::ExchangeData + Send,
{
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        if checkpointed {
            Checkpoints::install(None);
        }
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<(u8, u8), isize>();
            collection
                .aggregate("Aggregate", aggregator())
                .inner
                .inspect(move |((k, o), t, d)| sink.lock().unwrap().push(((*k, o.clone(), *t), *d)));
            input
        });
        Checkpoints::uninstall();
        if worker.index() == 0 {
            common::feed_changes(&mut input, &changes, || {
                worker.step();
            });
        }
    })
    .expect("timely");
    consolidate(log.lock().unwrap().drain(..))
}

fn arb_ops() -> impl Strategy<Value = Vec<(u64, u8, u8, bool)>> {
    prop::collection::vec((0u64..3, 0u8..3, 0u8..5, prop::bool::weighted(0.3)), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn multiset_fold_matches_the_model(ops in arb_ops()) {
        let changes = changes(&ops);
        let expected = model(&changes, listing);
        for (workers, checkpointed) in (1..=3).flat_map(|w| [(w, false), (w, true)]) {
            let got = run(changes.clone(), workers, checkpointed, || Fold::new(listing));
            prop_assert_eq!(&got, &expected, "workers = {}, checkpointed = {}", workers, checkpointed);
        }
    }

    #[test]
    fn sum_matches_the_model(ops in arb_ops()) {
        let changes = changes(&ops);
        let expected = model(&changes, |m| (!m.is_empty()).then(|| m.iter().map(|(v, n)| i64::from(*v) * *n as i64).sum::<i64>()));
        for (workers, checkpointed) in (1..=3).flat_map(|w| [(w, false), (w, true)]) {
            prop_assert_eq!(&run(changes.clone(), workers, checkpointed, || Sum), &expected, "workers = {}, checkpointed = {}", workers, checkpointed);
        }
    }
}
