//! Upsert tables against a plain model: the table is each key's latest value in (time, arrival) order, with
//! `None` deleting, at 1, 2 and 3 workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use timely::dataflow::operators::Input;
use tributary_operators::event_time::Timed;
use tributary_operators::upsert::Upsert;

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

fn run(updates: Vec<(u8, Option<u8>, u64)>, workers: usize) -> BTreeMap<(u8, u8), isize> {
    let table = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = Arc::clone(&table);
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<(Timed<(u8, Option<u8>)>, u64, isize)>>();
            stream.upsert("Table").inspect(move |(row, _time, diff)| *sink.lock().unwrap().entry(*row).or_default() += diff);
            input
        });
        if worker.index() == 0 {
            for (i, &(key, value, time)) in updates.iter().enumerate() {
                let floor = updates[i..].iter().map(|u| u.2).min().unwrap_or(time);
                if floor > *input.time() {
                    input.advance_to(floor);
                }
                input.send((Timed::new(time, (key, value)), time, 1));
                worker.step();
            }
        }
    })
    .expect("timely");
    let mut table = table.lock().unwrap().clone();
    table.retain(|_, d| *d != 0);
    table
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn upsert_matches_the_model(updates in prop::collection::vec((0u8..4, prop::option::weighted(0.8, 0u8..5), 0u64..20), 0..40)) {
        // The model: stable sort by time keeps arrival order within a time.
        let mut ordered: Vec<_> = updates.clone();
        ordered.sort_by_key(|u| u.2);
        let mut latest: BTreeMap<u8, u8> = BTreeMap::new();
        for (key, value, _) in ordered {
            match value {
                Some(v) => { latest.insert(key, v); }
                None => { latest.remove(&key); }
            }
        }
        let expected: BTreeMap<(u8, u8), isize> = latest.into_iter().map(|kv| (kv, 1)).collect();
        for workers in 1..=3 {
            prop_assert_eq!(&run(updates.clone(), workers), &expected, "workers = {}", workers);
        }
    }
}
