//! The windowed and interval joins against plain reference models, with the exact time of every pair: random
//! keyed events on two streams with disorder, late records and retractions, at 1, 2 and 3 workers.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Records, Shape, Update, arb_windows, arrivals_to_updates, consolidate, feed};
use proptest::prelude::*;
use std::time::Duration;
use timely::dataflow::operators::{Input, Inspect};

use tributary_operators::interval_join::{Interval, IntervalJoin};
use tributary_operators::late::LateRecord;
use tributary_operators::window_join::WindowJoin;

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `(key, window start or event time, left value, right value, time)`.
type Pair = (u8, u64, u8, u8, u64);
type Late = Vec<(bool, Update)>;

fn window_model(left: &[Update], right: &[Update], shape: Shape, lateness: u64) -> (BTreeMap<Pair, isize>, Late) {
    let size = shape.size;
    let open = |et: u64, time: u64| shape.starts(et).into_iter().filter(move |s| s + size + lateness > time);
    let mut pairs = Vec::new();
    for &(k, v, ea, ta, da) in left {
        for &(k2, w, eb, tb, db) in right {
            if k != k2 {
                continue;
            }
            for start in open(ea, ta).filter(|s| open(eb, tb).any(|s2| s2 == *s)) {
                pairs.push(((k, start, v, w, ta.max(tb).max(start + size - 1)), da * db));
            }
        }
    }
    let mut late: Late =
        left.iter().map(|u| (true, *u)).chain(right.iter().map(|u| (false, *u))).filter(|(_, u)| open(u.2, u.3).next().is_none()).collect();
    late.sort();
    (consolidate(pairs), late)
}

fn interval_model(left: &[Update], right: &[Update], lower: u64, upper: u64, lateness: u64) -> (BTreeMap<Pair, isize>, Late) {
    let admitted = |u: &Update| u.2 + lateness >= u.3;
    let mut pairs = Vec::new();
    for a in left.iter().filter(|u| admitted(u)) {
        for b in right.iter().filter(|u| admitted(u) && u.0 == a.0) {
            if b.2 + lower >= a.2 && b.2 <= a.2 + upper {
                pairs.push(((a.0, a.2.max(b.2), a.1, b.1, a.3.max(b.3)), a.4 * b.4));
            }
        }
    }
    let mut late: Late = left.iter().map(|u| (true, *u)).chain(right.iter().map(|u| (false, *u))).filter(|(_, u)| !admitted(u)).collect();
    late.sort();
    (consolidate(pairs), late)
}

#[derive(Clone, Copy, Debug)]
enum Join {
    Window(Shape, u64),
    Interval { lower: u64, upper: u64, lateness: u64 },
}

fn run(left: Vec<Update>, right: Vec<Update>, join: Join, workers: usize) -> (BTreeMap<Pair, isize>, Late) {
    let pairs = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let (p, l) = (Arc::clone(&pairs), Arc::clone(&late));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (p, l, l2) = (Arc::clone(&p), Arc::clone(&l), Arc::clone(&l));
        let late_record = |side: bool, x: &LateRecord<(u8, u8)>| (side, (x.record.0, x.record.1, x.event_time, x.arrived_at, x.diff));
        let (mut left_in, mut right_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (left_in, left) = scope.new_input::<Records>();
            let (right_in, right) = scope.new_input::<Records>();
            let (late_left, late_right) = match join {
                Join::Window(windows, lateness) => {
                    let streams = left.window_join("WindowJoin", right, windows.windows(), Duration::from_millis(lateness));
                    streams
                        .results
                        .inspect(move |(((k, start), (v, w)), time, diff)| p.lock().unwrap().push(((*k, *start, *v, *w, *time), *diff)));
                    (streams.late_left, streams.late_right)
                }
                Join::Interval { lower, upper, lateness } => {
                    let streams = left.interval_join(
                        "IntervalJoin",
                        right,
                        Interval { before_ms: lower, after_ms: upper },
                        Duration::from_millis(lateness),
                    );
                    streams.results.inspect(move |(pair, time, diff)| {
                        let (k, (v, w)) = pair.value;
                        p.lock().unwrap().push(((k, pair.event_time, v, w, *time), *diff));
                    });
                    (streams.late_left, streams.late_right)
                }
            };
            // Late records leave at their own dataflow time, whatever message carried them.
            late_left.inspect_core(move |event| {
                if let Ok((stamp, xs)) = event {
                    for x in xs {
                        assert_eq!(stamp.elements(), [x.arrived_at], "a late record at its arrival time");
                        l.lock().unwrap().push(late_record(true, x));
                    }
                }
            });
            late_right.inspect_core(move |event| {
                if let Ok((stamp, xs)) = event {
                    for x in xs {
                        assert_eq!(stamp.elements(), [x.arrived_at], "a late record at its arrival time");
                        l2.lock().unwrap().push(late_record(false, x));
                    }
                }
            });
            (left_in, right_in)
        });
        if worker.index() == 0 {
            feed(&mut [(&mut left_in, &left), (&mut right_in, &right)], || {
                worker.step();
            });
        }
    })
    .expect("timely");
    let pairs = consolidate(pairs.lock().unwrap().drain(..));
    let mut late = late.lock().unwrap().clone();
    late.sort();
    (pairs, late)
}

fn arb_arrivals() -> impl Strategy<Value = Vec<(usize, u8, u8, u64, bool)>> {
    prop::collection::vec((0usize..2, 0u8..3, 0u8..4, 0u64..200, prop::bool::weighted(0.1)), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn window_join_matches_the_model(left in arb_arrivals(), right in arb_arrivals(), ooo in 0u64..30, lateness in 0u64..30, windows in arb_windows()) {
        let (left, right) = (arrivals_to_updates(&left, ooo), arrivals_to_updates(&right, ooo));
        let expected = window_model(&left, &right, windows, lateness);
        for workers in 1..=3 {
            let observed = run(left.clone(), right.clone(), Join::Window(windows, lateness), workers);
            prop_assert_eq!(&observed, &expected, "workers = {}", workers);
        }
    }

    #[test]
    fn interval_join_matches_the_model(left in arb_arrivals(), right in arb_arrivals(), ooo in 0u64..30, lateness in 0u64..30, lower in 0u64..30, upper in 0u64..30) {
        let (left, right) = (arrivals_to_updates(&left, ooo), arrivals_to_updates(&right, ooo));
        let expected = interval_model(&left, &right, lower, upper, lateness);
        for workers in 1..=3 {
            let observed = run(left.clone(), right.clone(), Join::Interval { lower, upper, lateness }, workers);
            prop_assert_eq!(&observed, &expected, "workers = {}", workers);
        }
    }
}
