//! The file source against a plain reference model of the time model, at 1, 2 and 3 workers.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use timely::dataflow::operators::Inspect;
use tributary_connectors::file::FileSource;
use tributary_connectors::{DeadLetter, Reason, SourceOptions};
use tributary_operators::WatermarkPolicy;

/// How long a test's dataflow may run before the test binary fails (a hung source would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct Row {
    key: String,
    ts_ms: u64,
}

/// What the model says each file yields: records as (key, event time, dataflow time), dead letters as
/// (file, line, too late?).
fn reference(files: &[(String, Vec<Option<Row>>)], policy: &WatermarkPolicy) -> Observed {
    let mut records = Vec::new();
    let mut dead = Vec::new();
    for (name, rows) in files {
        let mut watermark = 0u64;
        for (line, row) in rows.iter().enumerate() {
            let line = line as u64 + 2; // CSV: line 1 is the header
            let Some(row) = row else {
                dead.push((name.clone(), line, false));
                continue;
            };
            let et = row.ts_ms;
            if et >= watermark {
                watermark = watermark.max(et.saturating_sub(policy.max_out_of_orderness_ms()));
                records.push((row.key.clone(), et, et));
            } else if policy.max_lateness_ms().is_some_and(|max| watermark - et > max) {
                dead.push((name.clone(), line, true));
            } else {
                records.push((row.key.clone(), et, watermark));
            }
        }
    }
    records.sort();
    dead.sort();
    (records, dead)
}

type Observed = (Vec<(String, u64, u64)>, Vec<(String, u64, bool)>);

fn run(source: FileSource<Row>, policy: WatermarkPolicy, workers: usize) -> Observed {
    let records = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, d) = (Arc::clone(&records), Arc::clone(&dead));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (r, d) = (Arc::clone(&r), Arc::clone(&d));
        let source = source.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let streams = source.build(scope, SourceOptions { policy, batch: 3, ..Default::default() });
            // Every record's time must be at or after the capability it travels with.
            streams.records.inspect_core(move |event| {
                let Ok((stamp, batch)) = event else { return };
                for (row, time, diff) in batch {
                    assert!(stamp.iter().all(|cap| cap <= time) && *diff == 1, "record at {time} sent with capability {stamp:?}");
                    r.lock().unwrap().push((row.value.key.clone(), row.event_time, *time));
                }
            });
            streams.dead_letters.inspect(move |letter: &DeadLetter| {
                let too_late = matches!(letter.reason, Reason::TooLate { .. });
                d.lock().unwrap().push((letter.source.clone(), letter.offset, too_late));
            });
        });
    })
    .expect("timely runs");
    let mut records = records.lock().unwrap().clone();
    let mut dead = dead.lock().unwrap().clone();
    records.sort();
    dead.sort();
    (records, dead)
}

fn write_files(dir: &std::path::Path, files: &[(String, Vec<Option<Row>>)]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, rows) in files {
        let mut text = String::from("key,ts_ms\n");
        for row in rows {
            match row {
                Some(row) => text.push_str(&format!("{},{}\n", row.key, row.ts_ms)),
                None => text.push_str("broken,not-a-number\n"),
            }
        }
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn arb_files() -> impl Strategy<Value = Vec<(String, Vec<Option<Row>>)>> {
    let row = prop_oneof![
        9 => (0u64..6, 0u64..200).prop_map(|(k, ts)| Some(Row { key: format!("k{k}"), ts_ms: ts })),
        1 => Just(None),
    ];
    prop::collection::vec(prop::collection::vec(row, 0..25), 1..5)
        .prop_map(|files| files.into_iter().enumerate().map(|(i, rows)| (format!("part-{i}.csv"), rows)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn file_source_matches_the_model(files in arb_files(), ooo in 0u64..50, lateness in prop::option::of(0u64..60)) {
        let dir = std::env::temp_dir().join(format!("tributary-file-prop-{}", std::process::id()));
        write_files(&dir, &files);
        let policy = WatermarkPolicy { max_out_of_orderness: std::time::Duration::from_millis(ooo), idle_timeout: None, max_lateness: lateness.map(std::time::Duration::from_millis), max_ahead: None };
        let named: Vec<_> = files.iter().map(|(n, rows)| (dir.join(n).display().to_string(), rows.clone())).collect();
        let expected = reference(&named, &policy);
        let source = FileSource::<Row>::new(vec![dir.clone()], |r: &Row| Ok(r.ts_ms)).unwrap();
        for workers in 1..=3 {
            prop_assert_eq!(&run(source.clone(), policy, workers), &expected, "workers = {}", workers);
        }
    }
}

#[test]
fn json_lines_with_malformed_and_missing_event_times() {
    let dir = std::env::temp_dir().join(format!("tributary-file-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.jsonl"), "{\"key\":\"x\",\"ts_ms\":5}\n\n{\"key\":\"y\"}\n{oops\n{\"key\":\"z\",\"ts_ms\":9}\n").unwrap();
    let source = FileSource::<Row>::new(vec![dir.join("a.jsonl")], |r: &Row| Ok(r.ts_ms)).unwrap();
    let (records, dead) = run(source, WatermarkPolicy::default(), 2);
    assert_eq!(records, vec![("x".into(), 5, 5), ("z".into(), 9, 9)]);
    let path = dir.join("a.jsonl").display().to_string();
    assert_eq!(dead, vec![(path.clone(), 3, false), (path, 4, false)]);
    std::fs::remove_dir_all(&dir).unwrap();
}
