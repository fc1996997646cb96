//! Outer joins against a plain reference model: random collections with retractions, fed in rounds, at 1, 2
//! and 3 workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use proptest::prelude::*;
use tributary_operators::join::OuterJoin;

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

type Row = (u8, (Option<u8>, Option<u8>));

/// Adds `(key, value, diff)` updates, never retracting what is not there (so the final collections are sets
/// with positive multiplicities).
fn final_multiset(updates: &[(u8, u8, bool)]) -> (Vec<(u8, u8, isize)>, BTreeMap<(u8, u8), isize>) {
    let mut state: BTreeMap<(u8, u8), isize> = BTreeMap::new();
    let mut applied = Vec::new();
    for &(k, v, retract) in updates {
        let count = state.entry((k, v)).or_default();
        if retract {
            if *count > 0 {
                *count -= 1;
                applied.push((k, v, -1));
            }
        } else {
            *count += 1;
            applied.push((k, v, 1));
        }
    }
    state.retain(|_, c| *c != 0);
    (applied, state)
}

fn full_join_model(a: &BTreeMap<(u8, u8), isize>, b: &BTreeMap<(u8, u8), isize>) -> BTreeMap<Row, isize> {
    let mut out: BTreeMap<Row, isize> = BTreeMap::new();
    for (&(k, v), &ca) in a {
        let matches: Vec<_> = b.iter().filter(|((kb, _), _)| *kb == k).collect();
        if matches.is_empty() {
            *out.entry((k, (Some(v), None))).or_default() += ca;
        }
        for (&(_, w), &cb) in matches {
            *out.entry((k, (Some(v), Some(w)))).or_default() += ca * cb;
        }
    }
    for (&(k, w), &cb) in b {
        if !a.keys().any(|(ka, _)| *ka == k) {
            *out.entry((k, (None, Some(w)))).or_default() += cb;
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Left,
    Right,
    Full,
}

fn run(a: Vec<(u8, u8, isize)>, b: Vec<(u8, u8, isize)>, kind: Kind, workers: usize) -> BTreeMap<Row, isize> {
    let out = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = Arc::clone(&out);
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let (mut left, mut right) = worker.dataflow::<u64, _, _>(|scope| {
            let (left, a) = scope.new_collection::<(u8, u8), isize>();
            let (right, b) = scope.new_collection::<(u8, u8), isize>();
            let joined = match kind {
                Kind::Left => a.left_join("Left", b).map(|(k, (v, w))| (k, (Some(v), w))),
                Kind::Right => a.right_join("Right", b).map(|(k, (v, w))| (k, (v, Some(w)))),
                Kind::Full => a.full_join("Full", b),
            };
            joined.inspect(move |(row, _time, diff)| *sink.lock().unwrap().entry(*row).or_default() += diff);
            (left, right)
        });
        if worker.index() == 0 {
            // Interleave the two sides over rounds, so matches come and go incrementally.
            let rounds = a.len().max(b.len());
            for round in 0..rounds {
                if let Some(&(k, v, d)) = a.get(round) {
                    left.update((k, v), d);
                }
                if let Some(&(k, w, d)) = b.get(round) {
                    right.update((k, w), d);
                }
                left.advance_to(round as u64 + 1);
                right.advance_to(round as u64 + 1);
                left.flush();
                right.flush();
                worker.step();
            }
        }
    })
    .expect("timely");
    let mut out = out.lock().unwrap().clone();
    out.retain(|_, d| *d != 0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn outer_joins_match_the_model(
        a in prop::collection::vec((0u8..4, 0u8..3, prop::bool::weighted(0.3)), 0..30),
        b in prop::collection::vec((0u8..4, 0u8..3, prop::bool::weighted(0.3)), 0..30),
    ) {
        let (a_updates, a_final) = final_multiset(&a);
        let (b_updates, b_final) = final_multiset(&b);
        let full = full_join_model(&a_final, &b_final);
        let left: BTreeMap<Row, isize> = full.iter().filter(|((_, (v, _)), _)| v.is_some()).map(|(r, d)| (*r, *d)).collect();
        let right: BTreeMap<Row, isize> = full.iter().filter(|((_, (_, w)), _)| w.is_some()).map(|(r, d)| (*r, *d)).collect();
        for workers in 1..=3 {
            prop_assert_eq!(&run(a_updates.clone(), b_updates.clone(), Kind::Full, workers), &full, "full, {} workers", workers);
            prop_assert_eq!(&run(a_updates.clone(), b_updates.clone(), Kind::Left, workers), &left, "left, {} workers", workers);
            prop_assert_eq!(&run(a_updates.clone(), b_updates.clone(), Kind::Right, workers), &right, "right, {} workers", workers);
        }
    }
}
