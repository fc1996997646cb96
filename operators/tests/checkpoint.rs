//! Checkpoints of the stateful operators (windows, upsert tables, temporal joins, sessions, window and interval
//! joins, whole-collection aggregates): a run that saves its state as of a random time `T`, then a run restored
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

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

type Timed<O> = BTreeMap<((u8, u64), O, u64), isize>;

struct Outcome<O> {
    results: Timed<O>,
    late: Vec<Update>,
    /// The operator's parts of the checkpoint, one per worker.
    parts: Vec<Vec<u8>>,
}

/// Runs the window operator over `updates` at `workers` workers, asking every worker for a checkpoint at
/// `checkpoint` before anything is processed, or restoring `restore`.
fn run<A, O>(
    updates: Vec<Update>,
    spec: WindowSpec,
    workers: usize,
    checkpoint: Option<u64>,
    restore: Option<Restored>,
    aggregator: fn() -> A,
) -> Outcome<O>
where
    A: tributary_operators::Aggregator<u8, Output = O>,
    A::State: serde::Serialize + serde::de::DeserializeOwned,
    O: Ord + Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(Vec::new()));
    let (r, l, p) = (Arc::clone(&results), Arc::clone(&late), Arc::clone(&parts));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
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

fn check<A, O>(
    updates: Vec<Update>,
    spec: WindowSpec,
    at: u64,
    (before, after): (usize, usize),
    aggregator: fn() -> A,
) -> Result<(), TestCaseError>
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

/// Upserts `(key, value or delete, time)` and records `(key, value, time)` joined with the table as of each
/// record's time, at `workers` workers, with a checkpoint asked for at `checkpoint` or restored from `restore`:
/// the table's changes and the joined rows by time, and the parts saved.
type Joined = BTreeMap<(u8, u8, Option<u8>, u64), isize>;
type TableChanges = BTreeMap<((u8, u8), u64), isize>;

fn run_join(
    upserts: Vec<(u8, Option<u8>, u64)>,
    records: Vec<(u8, u8, u64)>,
    workers: usize,
    checkpoint: Option<u64>,
    restore: Option<Restored>,
) -> (TableChanges, Joined, BTreeMap<String, Vec<Vec<u8>>>) {
    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::vec::Map;
    use tributary_operators::event_time::Timed as T;
    use tributary_operators::temporal_join::TemporalJoin;
    use tributary_operators::upsert::Upsert;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let joined = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(BTreeMap::<String, Vec<Vec<u8>>>::new()));
    let (c, j, p) = (Arc::clone(&changes), Arc::clone(&joined), Arc::clone(&parts));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (c, j) = (Arc::clone(&c), Arc::clone(&j));
        let registry = Checkpoints::install(restore.clone());
        if let Some(time) = checkpoint {
            registry.request(time);
        }
        let (mut table_in, mut records_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (table_in, updates) = scope.new_input::<Vec<(T<(u8, Option<u8>)>, u64, isize)>>();
            let (records_in, records) = scope.new_input::<Vec<(T<(u8, u8)>, u64, isize)>>();
            let table = updates.upsert("Table");
            table.inner.clone().inspect(move |((k, v), t, d)| c.lock().unwrap().push((((*k, *v), *t), *d)));
            let rows = records.temporal_join("Join", table);
            let (probe, _) = rows
                .map(|(r, t, d)| ((r.value.0, r.value.1.0, r.value.1.1, t), d))
                .inspect(move |(row, d)| j.lock().unwrap().push((*row, *d)))
                .probe();
            (table_in, records_in, probe)
        });
        Checkpoints::uninstall();
        if worker.index() == 0 {
            let mut times: Vec<u64> = upserts.iter().map(|u| u.2).chain(records.iter().map(|r| r.2)).collect();
            times.sort();
            times.dedup();
            for time in times {
                table_in.advance_to(time);
                records_in.advance_to(time);
                for &(k, v, _) in upserts.iter().filter(|u| u.2 == time) {
                    table_in.send((T::new(time, (k, v)), time, 1));
                }
                for &(k, v, _) in records.iter().filter(|r| r.2 == time) {
                    records_in.send((T::new(time, (k, v)), time, 1));
                }
                worker.step();
            }
        }
        drop((table_in, records_in));
        while !probe.done() {
            worker.step();
        }
        for (_, operators) in registry.take_complete() {
            let mut p = p.lock().unwrap();
            for (name, part) in operators {
                p.entry(name).or_default().push(part);
            }
        }
    })
    .expect("timely");
    let changes = consolidate(changes.lock().unwrap().drain(..));
    let joined = consolidate(joined.lock().unwrap().drain(..));
    let parts = parts.lock().unwrap().clone();
    (changes, joined, parts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn an_upsert_table_and_a_temporal_join_restored_from_a_checkpoint_continue_exactly(
        upserts in prop::collection::vec((0u8..4, prop::option::weighted(0.8, 0u8..5), 0u64..100), 0..40),
        records in prop::collection::vec((0u8..4, 0u8..5, 0u64..100), 0..40),
        at in 0u64..110, before in 1usize..=2, after in 1usize..=3,
    ) {
        let (changes, joined, parts) = run_join(upserts.clone(), records.clone(), before, Some(at), None);
        prop_assert_eq!(parts.get("Table").map_or(0, Vec::len), before);
        prop_assert_eq!(parts.get("Join").map_or(0, Vec::len), before);
        let later_upserts: Vec<_> = upserts.iter().copied().filter(|u| u.2 > at).collect();
        let later_records: Vec<_> = records.iter().copied().filter(|r| r.2 > at).collect();
        let (resumed_changes, resumed_joined, _) =
            run_join(later_upserts, later_records, after, None, Some(Restored { time: at, parts }));
        let expected_changes: TableChanges = changes.into_iter().filter(|((_, t), _)| *t > at).collect();
        let expected_joined: Joined = joined.into_iter().filter(|((_, _, _, t), _)| *t > at).collect();
        prop_assert_eq!(resumed_changes, expected_changes);
        prop_assert_eq!(resumed_joined, expected_joined);
    }
}

/// The other stateful event-time operators: sessions, the window join and the interval join.
#[derive(Clone, Copy, Debug)]
enum Op {
    Sessions { gap: u64, lateness: u64 },
    WindowJoin(common::Shape, u64),
    IntervalJoin { lower: u64, upper: u64, lateness: u64 },
}

/// An operator's results as `(row, time) -> diff` (the row printed, whatever its type), its late records with
/// their side, and its parts of the checkpoint.
type OpOutcome = (BTreeMap<(String, u64), isize>, Vec<(bool, Update)>, Vec<Vec<u8>>);

fn run_op(left: Vec<Update>, right: Vec<Update>, op: Op, workers: usize, checkpoint: Option<u64>, restore: Option<Restored>) -> OpOutcome {
    use std::time::Duration;
    use tributary_operators::interval_join::{Interval, IntervalJoin};
    use tributary_operators::session::{SessionAggregate, Sessions};
    use tributary_operators::window_join::WindowJoin;
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(Vec::new()));
    let (r, l, p) = (Arc::clone(&results), Arc::clone(&late), Arc::clone(&parts));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, l, l2) = (Arc::clone(&r), Arc::clone(&l), Arc::clone(&l));
        let registry = Checkpoints::install(restore.clone());
        if let Some(time) = checkpoint {
            registry.request(time);
        }
        let late_record = |x: &LateRecord<(u8, u8)>| (x.record.0, x.record.1, x.event_time, x.arrived_at, x.diff);
        let (mut left_in, mut right_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (left_in, left) = scope.new_input::<Records>();
            let (right_in, right) = scope.new_input::<Records>();
            let (late_left, late_right) = match op {
                Op::Sessions { gap, lateness } => {
                    let sessions = Sessions { gap_ms: gap, allowed_lateness_ms: lateness };
                    let streams = left.session_aggregate("Op", sessions, Fold::new(common::listing));
                    streams.results.inspect(move |(row, time, diff)| r.lock().unwrap().push(((format!("{row:?}"), *time), *diff)));
                    // The right input stays empty: its late stream is the left one's, shown once.
                    (streams.late, None)
                }
                Op::WindowJoin(shape, lateness) => {
                    let streams = left.window_join("Op", right, shape.windows(), Duration::from_millis(lateness));
                    streams.results.inspect(move |(row, time, diff)| r.lock().unwrap().push(((format!("{row:?}"), *time), *diff)));
                    (streams.late_left, Some(streams.late_right))
                }
                Op::IntervalJoin { lower, upper, lateness } => {
                    let interval = Interval { before_ms: lower, after_ms: upper };
                    let streams = left.interval_join("Op", right, interval, Duration::from_millis(lateness));
                    streams.results.inspect(move |(row, time, diff)| {
                        r.lock().unwrap().push(((format!("{:?}", (row.event_time, &row.value)), *time), *diff))
                    });
                    (streams.late_left, Some(streams.late_right))
                }
            };
            late_left.inspect(move |x| l.lock().unwrap().push((true, late_record(x))));
            if let Some(late_right) = late_right {
                late_right.inspect(move |x| l2.lock().unwrap().push((false, late_record(x))));
            }
            (left_in, right_in)
        });
        Checkpoints::uninstall();
        if worker.index() == 0 {
            feed(&mut [(&mut left_in, &left), (&mut right_in, &right)], || {
                worker.step();
            });
        }
        drop((left_in, right_in));
        while worker.step_or_park(None) {}
        for (_, mut operators) in registry.take_complete() {
            p.lock().unwrap().extend(operators.remove("Op"));
        }
    })
    .expect("timely");
    let results = consolidate(results.lock().unwrap().drain(..));
    let mut late = late.lock().unwrap().clone();
    late.sort();
    let parts = parts.lock().unwrap().clone();
    (results, late, parts)
}

fn check_op(left: Vec<Update>, right: Vec<Update>, op: Op, at: u64, (before, after): (usize, usize)) -> Result<(), TestCaseError> {
    let (results, late, parts) = run_op(left.clone(), right.clone(), op, before, Some(at), None);
    prop_assert_eq!(parts.len(), before, "every worker saved its part");
    let later = |updates: &[Update]| updates.iter().copied().filter(|u| u.3 > at).collect::<Vec<_>>();
    let restore = Restored { time: at, parts: BTreeMap::from([("Op".to_owned(), parts)]) };
    let (resumed, resumed_late, _) = run_op(later(&left), later(&right), op, after, None, Some(restore));
    let expected: BTreeMap<(String, u64), isize> = results.into_iter().filter(|((_, t), _)| *t > at).collect();
    prop_assert_eq!(&resumed, &expected, "{:?}: results after {} ({} -> {} workers)", op, at, before, after);
    let expected_late: Vec<(bool, Update)> = late.into_iter().filter(|(_, u)| u.3 > at).collect();
    prop_assert_eq!(&resumed_late, &expected_late);
    Ok(())
}

fn arb_side() -> impl Strategy<Value = Vec<(usize, u8, u8, u64, bool)>> {
    prop::collection::vec((0usize..2, 0u8..3, 0u8..4, 0u64..200, prop::bool::weighted(0.1)), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sessions_restored_from_a_checkpoint_continue_exactly_as_the_uninterrupted_run(
        arrivals in arb_arrivals(), ooo in 0u64..40, gap in 1u64..40, lateness in 0u64..30,
        at in 0u64..340, before in 1usize..=2, after in 1usize..=3,
    ) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        check_op(updates, Vec::new(), Op::Sessions { gap, lateness }, at, (before, after))?;
    }

    #[test]
    fn window_and_interval_joins_restored_from_a_checkpoint_continue_exactly(
        left in arb_side(), right in arb_side(), ooo in 0u64..30, lateness in 0u64..30, windows in arb_windows(),
        lower in 0u64..30, upper in 0u64..30, at in 0u64..240, before in 1usize..=2, after in 1usize..=3,
    ) {
        let (left, right) = (arrivals_to_updates(&left, ooo), arrivals_to_updates(&right, ooo));
        check_op(left.clone(), right.clone(), Op::WindowJoin(windows, lateness), at, (before, after))?;
        check_op(left, right, Op::IntervalJoin { lower, upper, lateness }, at, (before, after))?;
    }
}

/// Whole-collection aggregation (`aggregate`) over `(key, value, time, diff)` changes at `workers` workers,
/// with a checkpoint asked for at `checkpoint` or restored from `restore`: its changes `((key, result), time)
/// -> diff` and its parts of the checkpoint.
fn run_aggregate<A, O>(
    changes: Vec<(u8, u8, u64, isize)>,
    workers: usize,
    checkpoint: Option<u64>,
    restore: Option<Restored>,
    aggregator: fn() -> A,
) -> (BTreeMap<((u8, O), u64), isize>, Vec<Vec<u8>>)
where
    A: tributary_operators::Aggregator<u8, Output = O>,
    O: differential_dataflow::ExchangeData + Send,
{
    use differential_dataflow::input::Input as _;
    use tributary_operators::aggregate::Aggregate;
    let log = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(Vec::new()));
    let (sink, p) = (Arc::clone(&log), Arc::clone(&parts));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let registry = Checkpoints::install(restore.clone());
        if let Some(time) = checkpoint {
            registry.request(time);
        }
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<(u8, u8), isize>();
            collection
                .aggregate("Totals", aggregator())
                .inner
                .inspect(move |((k, o), t, d)| sink.lock().unwrap().push((((*k, o.clone()), *t), *d)));
            input
        });
        Checkpoints::uninstall();
        if worker.index() == 0 {
            common::feed_changes(&mut input, &changes, || {
                worker.step();
            });
        }
        drop(input);
        while worker.step_or_park(None) {}
        for (_, mut operators) in registry.take_complete() {
            p.lock().unwrap().extend(operators.remove("Totals"));
        }
    })
    .expect("timely");
    let results = consolidate(log.lock().unwrap().drain(..));
    let parts = parts.lock().unwrap().clone();
    (results, parts)
}

fn check_aggregate<A, O>(
    changes: &[(u8, u8, u64, isize)],
    at: u64,
    (before, after): (usize, usize),
    aggregator: fn() -> A,
) -> Result<(), TestCaseError>
where
    A: tributary_operators::Aggregator<u8, Output = O>,
    O: differential_dataflow::ExchangeData + Send + std::fmt::Debug,
{
    let (whole, parts) = run_aggregate(changes.to_vec(), before, Some(at), None, aggregator);
    prop_assert_eq!(parts.len(), before, "every worker saved its part");
    let later: Vec<_> = changes.iter().copied().filter(|c| c.2 > at).collect();
    let restore = Restored { time: at, parts: BTreeMap::from([("Totals".to_owned(), parts)]) };
    let (resumed, _) = run_aggregate(later, after, None, Some(restore), aggregator);
    let expected: BTreeMap<_, _> = whole.into_iter().filter(|((_, t), _)| *t > at).collect();
    prop_assert_eq!(resumed, expected, "changes after {} ({} -> {} workers)", at, before, after);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The aggregate's groups as of `T` restored at another number of workers, and only the changes after `T`
    /// read again, give the changes the uninterrupted run gave after `T`: for running totals (count, sum) and
    /// for aggregates over the whole multiset (max, a listing of every value).
    #[test]
    fn an_aggregate_restored_from_a_checkpoint_continues_exactly_as_the_uninterrupted_run(
        ops in prop::collection::vec((0u64..40, 0u8..3, 0u8..5, prop::bool::weighted(0.3)), 0..60),
        at in 0u64..45, before in 1usize..=2, after in 1usize..=3, stray in any::<bool>(),
    ) {
        use tributary_operators::aggregate::{Max, Sum, over};
        // Retractions mostly retract a value inserted before (or at the same time), as a collection's would; with
        // `stray` any value is retracted, so counts go negative and totals become `(x, 0)`.
        let mut held: Vec<(u8, u8)> = Vec::new();
        let mut changes = Vec::new();
        let mut ops = ops;
        ops.sort_by_key(|op| op.0);
        for (time, key, value, retract) in ops {
            if retract && stray {
                changes.push((key, value, time, -1));
            } else if retract && !held.is_empty() {
                let (k, v) = held.remove(usize::from(value) % held.len());
                changes.push((k, v, time, -1));
            } else {
                held.push((key, value));
                changes.push((key, value, time, 1));
            }
        }
        check_aggregate(&changes, at, (before, after), || Count)?;
        check_aggregate(&changes, at, (before, after), || over(|v: &u8| i64::from(*v), Sum))?;
        check_aggregate(&changes, at, (before, after), || Max)?;
        check_aggregate(&changes, at, (before, after), || Fold::new(common::listing))?;
    }
}
