//! The window operator against a plain reference model: random keyed events from several partitions with
//! disorder, late records and retractions, at 1, 2 and 3 workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use timely::dataflow::operators::{Input, Inspect};
use tributary_operators::event_time::Timed;
use tributary_operators::window::{Count, LateRecord, WindowAggregate, Windows};

/// One update as the source would emit it: key, event time, dataflow time, diff.
type Update = (u8, u64, u64, isize);

/// Applies the source time model to arrivals `(partition, key, event time, retract?)`.
fn arrivals_to_updates(arrivals: &[(usize, u8, u64, bool)], ooo: u64) -> Vec<Update> {
    let mut watermarks = [0u64; 3];
    let mut sent: Vec<Vec<(u8, u64)>> = vec![Vec::new(); 3];
    let mut updates = Vec::new();
    for &(partition, key, event_time, retract) in arrivals {
        let watermark = &mut watermarks[partition];
        if retract {
            // Retract an earlier record of this partition, arriving now.
            if let Some((key, et)) = sent[partition].pop() {
                updates.push((key, et, et.max(*watermark), -1));
            }
            continue;
        }
        let time = event_time.max(*watermark);
        *watermark = (*watermark).max(event_time.saturating_sub(ooo));
        sent[partition].push((key, event_time));
        updates.push((key, event_time, time, 1));
    }
    updates
}

/// Final counts per (key, window start), and the late updates, by the model.
fn model(updates: &[Update], windows: Windows, lateness: u64) -> (BTreeMap<(u8, u64), isize>, Vec<(u8, u64, u64, isize)>) {
    let mut counts: BTreeMap<(u8, u64), isize> = BTreeMap::new();
    let mut late = Vec::new();
    for &(key, et, time, diff) in updates {
        let mut accepted = false;
        for start in windows.starts(et) {
            if start + windows.size() + lateness > time {
                *counts.entry((key, start)).or_default() += diff;
                accepted = true;
            }
        }
        if !accepted {
            late.push((key, et, time, diff));
        }
    }
    counts.retain(|_, c| *c != 0);
    late.sort();
    (counts, late)
}

type Observed = (BTreeMap<((u8, u64), isize), isize>, Vec<(u8, u64, u64, isize)>);

fn run(updates: Vec<Update>, windows: Windows, lateness: u64, workers: usize) -> Observed {
    let results = Arc::new(Mutex::new(Vec::new()));
    let late = Arc::new(Mutex::new(Vec::new()));
    let (r, l) = (Arc::clone(&results), Arc::clone(&late));
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, l) = (Arc::clone(&r), Arc::clone(&l));
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, updates) = scope.new_input::<Vec<(Timed<(u8, ())>, u64, isize)>>();
            let streams = updates.window_aggregate("Count", windows, lateness, Count);
            streams.results.inspect(move |(((key, start), count), time, diff)| {
                assert!(*time + 1 >= start + windows.size(), "a result before its window ended");
                r.lock().unwrap().push((((*key, *start), *count), *diff));
            });
            streams.late.inspect(move |x: &LateRecord<(u8, ())>| l.lock().unwrap().push((x.record.0, x.event_time, x.arrived_at, x.diff)));
            input
        });
        if worker.index() == 0 {
            // Feed at the running minimum of the times still to come (what a source's capability would be).
            for (i, &(key, et, time, diff)) in updates.iter().enumerate() {
                let floor = updates[i..].iter().map(|u| u.2).min().unwrap_or(time);
                if floor > *input.time() {
                    input.advance_to(floor);
                }
                input.send((Timed { event_time: et, value: (key, ()) }, time, diff));
                worker.step();
            }
        }
    })
    .expect("timely");
    let mut consolidated: BTreeMap<((u8, u64), isize), isize> = BTreeMap::new();
    for (update, diff) in results.lock().unwrap().drain(..) {
        *consolidated.entry(update).or_default() += diff;
    }
    consolidated.retain(|_, d| *d != 0);
    let mut late = late.lock().unwrap().clone();
    late.sort();
    (consolidated, late)
}

fn arb_windows() -> impl Strategy<Value = Windows> {
    prop_oneof![
        (1u64..40).prop_map(|size_ms| Windows::Tumbling { size_ms }),
        (1u64..10, 1u64..4).prop_map(|(slide, k)| Windows::Hopping { size_ms: slide * k, slide_ms: slide }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn windows_match_the_model(
        arrivals in prop::collection::vec((0usize..3, 0u8..3, 0u64..300, prop::bool::weighted(0.1)), 0..80),
        ooo in 0u64..40,
        lateness in 0u64..30,
        windows in arb_windows(),
    ) {
        let updates = arrivals_to_updates(&arrivals, ooo);
        let (counts, late) = model(&updates, windows, lateness);
        // Every window's final result appears exactly once, with +1: corrections cancel, releases emit nothing.
        let expected: BTreeMap<((u8, u64), isize), isize> = counts.into_iter().map(|(w, c)| ((w, c), 1)).collect();
        for workers in 1..=3 {
            let (results, observed_late) = run(updates.clone(), windows, lateness, workers);
            prop_assert_eq!(&results, &expected, "workers = {}", workers);
            prop_assert_eq!(&observed_late, &late, "workers = {}", workers);
        }
    }
}
