//! Session windows against a plain reference model: random keyed events from several partitions with disorder,
//! late records and retractions (which split sessions), at 1, 2 and 3 workers; the timed output is the same at
//! each.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Records, Update, arrivals_to_updates, consolidate, feed, listing};
use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect};
use tributary_operators::aggregate::Fold;
use tributary_operators::late::LateRecord;
use tributary_operators::session::{Session, SessionAggregate, Sessions};

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

type Multiset = BTreeMap<u8, isize>;

/// The final sessions per key with their values by the model, and the late updates.
fn model(updates: &[Update], gap: u64, lateness: u64) -> (BTreeMap<(u8, Session), Multiset>, Vec<Update>) {
    let mut events: BTreeMap<u8, BTreeMap<u64, Multiset>> = BTreeMap::new();
    let mut late = Vec::new();
    for &(key, value, et, time, diff) in updates {
        if et + gap + lateness > time {
            *events.entry(key).or_default().entry(et).or_default().entry(value).or_default() += diff;
        } else {
            late.push((key, value, et, time, diff));
        }
    }
    let mut sessions = BTreeMap::new();
    for (key, times) in events {
        let mut current: Option<(u64, u64, Multiset)> = None;
        for (et, values) in times {
            if values.values().all(|n| *n == 0) {
                continue;
            }
            if let Some((start, last, acc)) = current.take() {
                if et - last < gap {
                    current = Some((start, et, acc));
                } else {
                    sessions.insert((key, Session { start, end: last + gap }), acc);
                    current = Some((et, et, Multiset::new()));
                }
            } else {
                current = Some((et, et, Multiset::new()));
            }
            let acc = &mut current.as_mut().expect("set").2;
            for (v, n) in values {
                *acc.entry(v).or_default() += n;
            }
        }
        if let Some((start, last, acc)) = current {
            sessions.insert((key, Session { start, end: last + gap }), acc);
        }
    }
    late.sort();
    (sessions, late)
}

type Observed = (BTreeMap<((u8, Session), Vec<(u8, isize)>, u64), isize>, Vec<Update>);

fn run(updates: Vec<Update>, gap: u64, lateness: u64, workers: usize) -> Observed {
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let (r, l) = (Arc::clone(&results), Arc::clone(&late));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, l) = (Arc::clone(&r), Arc::clone(&l));
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, updates) = scope.new_input::<Records>();
            let streams =
                updates.session_aggregate("Sessions", Sessions { gap_ms: gap, allowed_lateness_ms: lateness }, Fold::new(listing));
            streams.results.inspect(move |(((key, session), output), time, diff)| {
                assert!(*time + 1 >= session.end, "a result before its session ended");
                r.lock().unwrap().push((((*key, *session), output.clone(), *time), *diff));
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sessions_match_the_model(
        arrivals in prop::collection::vec((0usize..3, 0u8..3, 0u8..4, 0u64..300, prop::bool::weighted(0.15)), 0..80),
        ooo in 0u64..40,
        lateness in 0u64..30,
        gap in 1u64..30,
    ) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let (sessions, late) = model(&updates, gap, lateness);
        let expected: BTreeMap<((u8, Session), Vec<(u8, isize)>), isize> =
            sessions.iter().filter_map(|(s, m)| listing(m).map(|l| ((*s, l), 1))).collect();
        let (timed, observed_late) = run(updates.clone(), gap, lateness, 1);
        // Every final session exactly once: corrections cancel, absorbed and split sessions are retracted.
        let finals = consolidate(timed.iter().map(|((s, o, _), d)| ((*s, o.clone()), *d)));
        prop_assert_eq!(&finals, &expected);
        prop_assert_eq!(&observed_late, &late);
        for workers in 2..=3 {
            let (other, other_late) = run(updates.clone(), gap, lateness, workers);
            prop_assert_eq!(&other, &timed, "timed results at {} workers", workers);
            prop_assert_eq!(&other_late, &late, "workers = {}", workers);
        }
    }
}
