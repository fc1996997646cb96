//! Checkpoints of the window operator: a run that saves its state as of a random time `T`, then a run restored
//! from it (at another number of workers) that reads only the input after `T`, gives exactly the output the
//! uninterrupted run gave after `T`: the same results at the same times, the same late records.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Records, Update, arb_windows, arrivals_to_updates, consolidate, feed};
use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect};
use tributary_operators::aggregate::{Count, Fold};
use tributary_operators::checkpoint::{Checkpoints, Restored};
use tributary_operators::late::LateRecord;
use tributary_operators::window::{WindowAggregate, WindowSpec};

type Timed<O> = BTreeMap<((u8, u64), O, u64), isize>;

struct Outcome<O> {
    results: Timed<O>,
    late: Vec<Update>,
    /// The operator's parts of the checkpoint, one per worker.
    parts: Vec<Vec<u8>>,
}

/// Runs the window operator over `updates` at `workers` workers, asking every worker for a checkpoint at
/// `checkpoint` before anything is processed, or restoring `restore`.
fn run<A, O>(updates: Vec<Update>, spec: WindowSpec, workers: usize, checkpoint: Option<u64>, restore: Option<Restored>, aggregator: fn() -> A) -> Outcome<O>
where
    A: tributary_operators::Aggregator<u8, Output = O>,
    A::State: serde::Serialize + serde::de::DeserializeOwned,
    O: Ord + Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(Vec::new()));
    let (r, l, p) = (Arc::clone(&results), Arc::clone(&late), Arc::clone(&parts));
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, l) = (Arc::clone(&r), Arc::clone(&l));
        let registry = Checkpoints::install(restore.clone());
        if let Some(time) = checkpoint {
            registry.request(time);
        }
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, updates) = scope.new_input::<Records>();
            let streams = updates.window_aggregate("Window", spec, aggregator());
            streams.results.inspect(move |(((key, start), output), time, diff)| {
                r.lock().unwrap().push((((*key, *start), output.clone(), *time), *diff));
            });
            streams.late.inspect(move |x: &LateRecord<(u8, u8)>| {
                l.lock().unwrap().push((x.record.0, x.record.1, x.event_time, x.arrived_at, x.diff))
            });
            input
        });
        Checkpoints::uninstall();
        if worker.index() == 0 {
            feed(&mut [(&mut input, &updates)], || {
                worker.step();
            });
        }
        drop(input);
        while worker.step_or_park(None) {}
        for (_, mut operators) in registry.take_complete() {
            p.lock().unwrap().extend(operators.remove("Window"));
        }
    })
    .expect("timely");
    let results = consolidate(results.lock().unwrap().drain(..));
    let mut late = late.lock().unwrap().clone();
    late.sort();
    let parts = parts.lock().unwrap().clone();
    Outcome { results, late, parts }
}

fn arb_arrivals() -> impl Strategy<Value = Vec<(usize, u8, u8, u64, bool)>> {
    prop::collection::vec((0usize..3, 0u8..3, 0u8..4, 0u64..300, prop::bool::weighted(0.1)), 0..80)
}

fn check<A, O>(updates: Vec<Update>, spec: WindowSpec, at: u64, (before, after): (usize, usize), aggregator: fn() -> A) -> Result<(), TestCaseError>
where
    A: tributary_operators::Aggregator<u8, Output = O>,
    A::State: serde::Serialize + serde::de::DeserializeOwned,
    O: Ord + Clone + Send + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let whole = run(updates.clone(), spec, before, Some(at), None, aggregator);
    prop_assert_eq!(whole.parts.len(), before, "every worker saved its part");
    let later: Vec<Update> = updates.iter().copied().filter(|u| u.3 > at).collect();
    let restore = Restored { time: at, parts: BTreeMap::from([("Window".to_owned(), whole.parts.clone())]) };
    let resumed = run(later, spec, after, None, Some(restore), aggregator);
    let expected: Timed<O> = whole.results.iter().filter(|(((_, _), _, t), _)| *t > at).map(|(k, d)| (k.clone(), *d)).collect();
    prop_assert_eq!(&resumed.results, &expected, "results after {} ({} -> {} workers)", at, before, after);
    let expected_late: Vec<Update> = whole.late.iter().copied().filter(|u| u.3 > at).collect();
    prop_assert_eq!(&resumed.late, &expected_late);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_window_restored_from_a_checkpoint_continues_exactly_as_the_uninterrupted_run(
        arrivals in arb_arrivals(), ooo in 0u64..40, lateness in 0u64..30, windows in arb_windows(),
        at in 0u64..340, emit_final in any::<bool>(), before in 1usize..=2, after in 1usize..=3,
    ) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let mut spec = windows.windows().allowed_lateness(std::time::Duration::from_millis(lateness));
        if emit_final {
            spec = spec.emit_final();
        }
        check(updates.clone(), spec, at, (before, after), || Count)?;
        check(updates, spec, at, (before, after), || Fold::new(common::listing))?;
    }
}

#[test]
fn a_checkpoint_holds_only_the_state_up_to_its_time() {
    // Counts per 10 ms window; the checkpoint at 14 holds window 0 (emitted) and window 10 (one record at 12),
    // not the record at 15.
    let updates: Vec<Update> = vec![(1, 0, 3, 3, 1), (1, 0, 12, 12, 1), (1, 0, 15, 15, 1), (1, 0, 16, 16, 1)];
    let spec: WindowSpec = tributary_operators::Windows::Tumbling { size_ms: 10 }.into();
    let whole = run(updates.clone(), spec, 1, Some(14), None, || Count);
    let later: Vec<Update> = updates.into_iter().filter(|u| u.3 > 14).collect();
    let restore = Restored { time: 14, parts: BTreeMap::from([("Window".to_owned(), whole.parts.clone())]) };
    let resumed = run(later, spec, 2, None, Some(restore), || Count);
    assert_eq!(resumed.results, BTreeMap::from([(((1, 10), 3i64, 19), 1)]), "window 10 counts 12 (restored), 15 and 16");
    // Without the restored state the same input counts only what it read.
    let fresh = run(vec![(1, 0, 15, 15, 1), (1, 0, 16, 16, 1)], spec, 1, None, None, || Count);
    assert_eq!(fresh.results, BTreeMap::from([(((1, 10), 2i64, 19), 1)]));
}
