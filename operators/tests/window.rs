//! The window operator against a plain reference model: random keyed events from several partitions with
//! disorder, late records and retractions, at 1, 2 and 3 workers; the timed output is the same at each.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Records, Shape, Update, arb_windows, arrivals_to_updates, consolidate, feed, listing};
use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect};
use tributary_operators::aggregate::{Aggregator, Count, Fold};
use tributary_operators::late::LateRecord;
use tributary_operators::window::{Emit, WindowAggregate, WindowSpec, Windows};

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Final values per (key, window start) by the model, and the late updates.
fn model(updates: &[Update], shape: Shape, lateness: u64) -> (BTreeMap<(u8, u64), BTreeMap<u8, isize>>, Vec<Update>) {
    let mut values: BTreeMap<(u8, u64), BTreeMap<u8, isize>> = BTreeMap::new();
    let mut late = Vec::new();
    for &(key, value, et, time, diff) in updates {
        let mut accepted = false;
        for start in shape.starts(et) {
            if start + shape.size + lateness > time {
                *values.entry((key, start)).or_default().entry(value).or_default() += diff;
                accepted = true;
            }
        }
        if !accepted {
            late.push((key, value, et, time, diff));
        }
    }
    for multiset in values.values_mut() {
        multiset.retain(|_, n| *n != 0);
    }
    values.retain(|_, m| !m.is_empty());
    late.sort();
    (values, late)
}

/// Timed results `((key, start), output, time) -> diff`, and the late updates.
type Observed<O> = (BTreeMap<((u8, u64), O, u64), isize>, Vec<Update>);

fn run<A, O>(updates: Vec<Update>, windows: Windows, lateness: u64, workers: usize, aggregator: fn() -> A) -> Observed<O>
where
    A: Aggregator<u8, Output = O>,
    A::State: serde::Serialize + serde::de::DeserializeOwned,
    O: Ord + Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    run_emitting(updates, WindowSpec { windows, allowed_lateness_ms: lateness, emit: Emit::OnClose }, workers, aggregator)
}

fn run_emitting<A, O>(updates: Vec<Update>, spec: WindowSpec, workers: usize, aggregator: fn() -> A) -> Observed<O>
where
    A: Aggregator<u8, Output = O>,
    A::State: serde::Serialize + serde::de::DeserializeOwned,
    O: Ord + Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let (r, l) = (Arc::clone(&results), Arc::clone(&late));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, l) = (Arc::clone(&r), Arc::clone(&l));
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, updates) = scope.new_input::<Records>();
            let streams = updates.window_aggregate("Window", spec, aggregator());
            let windows = spec.windows;
            streams.results.inspect(move |(((key, start), output), time, diff)| {
                assert!(*time + 1 >= start + windows.size(), "a result before its window ended");
                r.lock().unwrap().push((((*key, *start), output.clone(), *time), *diff));
            });
            streams.late.inspect(move |x: &LateRecord<(u8, u8)>| {
                l.lock().unwrap().push((x.record.0, x.record.1, x.event_time, x.arrived_at, x.diff))
            });
            input
        });
        if worker.index() == 0 {
            feed(&mut [(&mut input, &updates)], || {
                worker.step();
            });
        }
    })
    .expect("timely");
    let results = consolidate(results.lock().unwrap().drain(..));
    let mut late = late.lock().unwrap().clone();
    late.sort();
    (results, late)
}

/// The final result per window: every timed update summed, which must leave exactly one `+1` per window.
fn finals<O: Ord + Clone>(timed: &BTreeMap<((u8, u64), O, u64), isize>) -> BTreeMap<((u8, u64), O), isize> {
    consolidate(timed.iter().map(|((window, output, _), diff)| ((*window, output.clone()), *diff)))
}

fn arb_arrivals() -> impl Strategy<Value = Vec<(usize, u8, u8, u64, bool)>> {
    prop::collection::vec((0usize..3, 0u8..3, 0u8..4, 0u64..300, prop::bool::weighted(0.1)), 0..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn window_counts_match_the_model(arrivals in arb_arrivals(), ooo in 0u64..40, lateness in 0u64..30, windows in arb_windows()) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let (values, late) = model(&updates, windows, lateness);
        // Every window's final result appears exactly once, with +1: corrections cancel, releases emit nothing.
        let expected: BTreeMap<((u8, u64), i64), isize> =
            values.into_iter().map(|(w, m)| ((w, m.values().sum::<isize>() as i64), 1)).filter(|((_, c), _)| *c != 0).collect();
        let (timed, observed_late) = run(updates.clone(), windows.windows(), lateness, 1, || Count);
        prop_assert_eq!(&finals(&timed), &expected);
        prop_assert_eq!(&observed_late, &late);
        for workers in 2..=3 {
            let (other, other_late) = run(updates.clone(), windows.windows(), lateness, workers, || Count);
            prop_assert_eq!(&other, &timed, "timed results at {} workers", workers);
            prop_assert_eq!(&other_late, &late, "workers = {}", workers);
        }
    }

    #[test]
    fn window_multisets_match_the_model(arrivals in arb_arrivals(), ooo in 0u64..40, lateness in 0u64..30, windows in arb_windows()) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let (values, _) = model(&updates, windows, lateness);
        let expected: BTreeMap<((u8, u64), Vec<(u8, isize)>), isize> =
            values.iter().filter_map(|(w, m)| listing(m).map(|l| ((*w, l), 1))).collect();
        let multiset = || Fold::new(listing);
        let (timed, _) = run(updates.clone(), windows.windows(), lateness, 1, multiset);
        prop_assert_eq!(&finals(&timed), &expected);
        for workers in 2..=3 {
            let (other, _) = run(updates.clone(), windows.windows(), lateness, workers, multiset);
            prop_assert_eq!(&other, &timed, "timed results at {} workers", workers);
        }
    }

    #[test]
    fn emit_final_gives_each_window_one_result_once_its_lateness_has_passed(
        arrivals in arb_arrivals(), ooo in 0u64..40, lateness in 0u64..30, windows in arb_windows(),
    ) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let (values, late) = model(&updates, windows, lateness);
        // One `+1` per window, at the last time a record may still reach it, and nothing else: no corrections.
        let expected: BTreeMap<((u8, u64), i64, u64), isize> = values
            .into_iter()
            .map(|((key, start), m)| (((key, start), m.values().sum::<isize>() as i64, start + windows.size + lateness - 1), 1))
            .filter(|((_, c, _), _)| *c != 0)
            .collect();
        let spec = windows.windows().emit_final().allowed_lateness(std::time::Duration::from_millis(lateness));
        for workers in 1..=3 {
            let (timed, observed_late) = run_emitting(updates.clone(), spec, workers, || Count);
            prop_assert_eq!(&timed, &expected, "workers = {}", workers);
            prop_assert_eq!(&observed_late, &late, "workers = {}", workers);
        }
    }
}
