//! Nexmark q0-q8: `examples/nexmark` on a small generated input with out-of-order events gives, at 1x1 and 2x2
//! (two processes through the launcher), the plain reference implementation's result: the same rows with the
//! same multiplicities, compared as text (so a digest that ignored part of a row could not hide a difference),
//! and the same checksum.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;

use common::{example, launcher};
use tributary_nexmark::reference::reference;
use tributary_nexmark::{Checksum, Config, Query};

const EVENTS: u64 = 30_000;
const PARTITIONS: u32 = 4;

fn config() -> Config {
    Config { events: EVENTS, partitions: PARTITIONS, out_of_order_group_size: 500, ..Config::default() }
}

/// The `key=value` fields of the example's summary line, and its rows (`Debug` text -> multiplicity).
fn run(query: Query, processes: usize, workers: usize) -> (BTreeMap<String, String>, BTreeMap<String, isize>) {
    let scratch = common::Scratch::new(&format!("nexmark-{query}-{processes}x{workers}"));
    let output = Command::new(launcher())
        .args(["launch", "--processes", &processes.to_string(), "--workers", &workers.to_string(), "--"])
        .arg(example("nexmark"))
        .args(["--query", &query.to_string(), "--events", &EVENTS.to_string(), "--partitions", &PARTITIONS.to_string()])
        .args(["--out-of-order-group-size", "500"])
        .arg("--rows-dir")
        .arg(&scratch.0)
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    assert!(output.status.success(), "{query} at {processes}x{workers}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let fields = stdout.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let mut rows: BTreeMap<String, isize> = BTreeMap::new();
    for worker in 0..processes * workers {
        let path = scratch.0.join(format!("rows-{worker}.txt"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{query}: {}: {e}", path.display()));
        for line in text.lines() {
            let (n, row) = line.split_once('\t').expect("<multiplicity>\t<row>");
            *rows.entry(row.to_owned()).or_default() += n.parse::<isize>().expect("a multiplicity");
        }
    }
    rows.retain(|_, n| *n != 0);
    (fields, rows)
}

#[test]
fn every_query_equals_its_reference_at_1x1_and_2x2() {
    let events = config().all();
    assert!(events.iter().zip(events.iter().skip(1)).any(|(a, b)| a.1.date_time() > b.1.date_time()), "the input is out of order");
    for query in Query::ALL {
        let rows = reference(query, &events);
        let mut expected = Checksum::default();
        for (row, n) in &rows {
            expected.add(row, *n);
        }
        assert!(expected.rows > 0, "{query}: the reference has rows");
        let mut plain: BTreeMap<String, isize> = BTreeMap::new();
        for (row, n) in &rows {
            *plain.entry(format!("{row:?}")).or_default() += *n;
        }
        plain.retain(|_, n| *n != 0);
        for (processes, workers) in [(1, 1), (2, 2)] {
            let (fields, listed) = run(query, processes, workers);
            if listed != plain {
                let missing: Vec<_> = plain.iter().filter(|(r, n)| listed.get(*r) != Some(n)).take(5).collect();
                let extra: Vec<_> = listed.iter().filter(|(r, n)| plain.get(*r) != Some(n)).take(5).collect();
                panic!("{query} at {processes}x{workers}: rows differ from the reference; expected (first 5) {missing:?}, got {extra:?}");
            }
            assert_eq!(fields["events"], EVENTS.to_string(), "{query} at {processes}x{workers}: every event fed");
            assert_eq!(fields["late"], "0", "{query} at {processes}x{workers}: no late records");
            assert_eq!(fields["rows"], expected.rows.to_string(), "{query} at {processes}x{workers}: row count");
            assert_eq!(fields["checksum"], expected.to_string(), "{query} at {processes}x{workers}: checksum");
        }
    }
}
