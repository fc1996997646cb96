//! The temporal join against a plain model: each record sees the table changes at times up to its own, at 1, 2
//! and 3 workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect};
use tributary_operators::event_time::Timed;
use tributary_operators::temporal_join::TemporalJoin;

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

type Out = BTreeMap<(u8, u8, Option<u8>, u64), isize>;

fn model(table: &[(u8, u8, u64)], records: &[(u8, u8, u64)]) -> Out {
    let mut out = Out::new();
    for &(k, v, t) in records {
        let mut values: BTreeMap<u8, isize> = BTreeMap::new();
        for &(tk, w, tt) in table {
            if tk == k && tt <= t {
                *values.entry(w).or_default() += 1;
            }
        }
        if values.is_empty() {
            *out.entry((k, v, None, t)).or_default() += 1;
        }
        for (w, n) in values {
            *out.entry((k, v, Some(w), t)).or_default() += n;
        }
    }
    out
}

fn run(table: Vec<(u8, u8, u64)>, records: Vec<(u8, u8, u64)>, workers: usize) -> Out {
    let out = Arc::new(Mutex::new(Out::new()));
    let sink = Arc::clone(&out);
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let (mut table_in, mut records_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (table_in, changes) = scope.new_input::<Vec<((u8, u8), u64, isize)>>();
            let (records_in, stream) = scope.new_input::<Vec<(Timed<(u8, u8)>, u64, isize)>>();
            stream.temporal_join("Join", changes.as_collection()).inspect(move |x: &(Timed<(u8, (u8, Option<u8>))>, u64, isize)| {
                let (record, time, diff) = x;
                let (k, (v, w)) = record.value;
                *sink.lock().unwrap().entry((k, v, w, *time)).or_default() += diff;
            });
            (table_in, records_in)
        });
        if worker.index() == 0 {
            let rounds = table.len().max(records.len());
            for i in 0..rounds {
                let floor = |items: &[(u8, u8, u64)]| items.get(i..).and_then(|rest| rest.iter().map(|x| x.2).min());
                if let Some(f) = floor(&table).filter(|f| f > table_in.time()) {
                    table_in.advance_to(f);
                }
                if let Some(f) = floor(&records).filter(|f| f > records_in.time()) {
                    records_in.advance_to(f);
                }
                if let Some(&(k, w, t)) = table.get(i) {
                    table_in.send(((k, w), t, 1));
                }
                if let Some(&(k, v, t)) = records.get(i) {
                    records_in.send((Timed::new(t, (k, v)), t, 1));
                }
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
    fn temporal_join_matches_the_model(
        table in prop::collection::vec((0u8..3, 0u8..3, 0u64..15), 0..20),
        records in prop::collection::vec((0u8..3, 0u8..4, 0u64..15), 0..20),
    ) {
        let expected = model(&table, &records);
        for workers in 1..=3 {
            prop_assert_eq!(&run(table.clone(), records.clone(), workers), &expected, "workers = {}", workers);
        }
    }
}
