//! Nexmark q0-q8: `examples/nexmark` on a small generated input with out-of-order events gives, at 1x1 and 2x2
//! (two processes through the launcher), the plain reference implementation's result: the same rows with the
//! same multiplicities, compared as text (so a digest that ignored part of a row could not hide a difference),
//! and the same checksum. The same holds for the events read from a Kafka topic the example loads (sqlite
//! engine, 2x2), and for the hand-written differential-only versions of q1, q3 and q5 (the benchmark's peer).
//! Every run's count of late records is the reference's own count; with a slower event-time rate the generator's
//! disorder passes the watermark delay, and q5, q7 and q8 drop and count the records the reference does.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;

use common::{example, launcher};
use tributary_nexmark::reference::{late, reference};
use tributary_nexmark::{Checksum, Config, Query};

const EVENTS: u64 = 30_000;
const PARTITIONS: u32 = 4;

fn config() -> Config {
    Config { events: EVENTS, partitions: PARTITIONS, out_of_order_group_size: 500, ..Config::default() }
}

/// The `key=value` fields of the example's summary line, and its rows (`Debug` text -> multiplicity).
fn run(query: Query, processes: usize, workers: usize) -> (BTreeMap<String, String>, BTreeMap<String, isize>) {
    run_with(query, processes, workers, &[])
}

/// As [`run`], with more flags for the example.
fn run_with(query: Query, processes: usize, workers: usize, extra: &[&str]) -> (BTreeMap<String, String>, BTreeMap<String, isize>) {
    let scratch = common::Scratch::new(&format!("nexmark-{query}-{processes}x{workers}-{}", extra.len()));
    let output = Command::new(launcher())
        .args(["launch", "--processes", &processes.to_string(), "--workers", &workers.to_string(), "--"])
        .arg(example("nexmark"))
        .args(["--query", &query.to_string(), "--events", &EVENTS.to_string(), "--partitions", &PARTITIONS.to_string()])
        .args(["--out-of-order-group-size", "500"])
        .args(extra)
        .arg("--rows-dir")
        .arg(&scratch.0)
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    assert!(output.status.success(), "{query} at {processes}x{workers} {extra:?}: {}", String::from_utf8_lossy(&output.stderr));
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

/// What the reference gives: rows as text (-> multiplicity), checksum, and how many records are too late.
type Expected = (BTreeMap<String, isize>, Checksum, u64);

/// The reference's rows, checksum and late records.
fn expected(query: Query, events: &[(u32, tributary_nexmark::Event, u64)]) -> Expected {
    let rows = reference(query, events);
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
    (plain, expected, late(query, events))
}

/// Fails unless a run's rows and summary are the reference's.
fn check(what: &str, (fields, listed): (BTreeMap<String, String>, BTreeMap<String, isize>), (plain, expected, late): &Expected) {
    if listed != *plain {
        let missing: Vec<_> = plain.iter().filter(|(r, n)| listed.get(*r) != Some(n)).take(5).collect();
        let extra: Vec<_> = listed.iter().filter(|(r, n)| plain.get(*r) != Some(n)).take(5).collect();
        panic!("{what}: rows differ from the reference; expected (first 5) {missing:?}, got {extra:?}");
    }
    assert_eq!(fields["events"], EVENTS.to_string(), "{what}: every event fed");
    assert_eq!(fields["late"], late.to_string(), "{what}: late records");
    assert_eq!(fields["rows"], expected.rows.to_string(), "{what}: row count");
    assert_eq!(fields["checksum"], expected.to_string(), "{what}: checksum");
}

#[test]
fn every_query_equals_its_reference_at_1x1_and_2x2() {
    let events = config().all();
    assert!(events.iter().zip(events.iter().skip(1)).any(|(a, b)| a.1.date_time() > b.1.date_time()), "the input is out of order");
    for query in Query::ALL {
        let reference = expected(query, &events);
        for (processes, workers) in [(1, 1), (2, 2)] {
            check(&format!("{query} at {processes}x{workers}"), run(query, processes, workers), &reference);
        }
    }
}

#[test]
fn the_windowed_queries_drop_and_count_the_late_records_the_reference_does() {
    // At 25 events per second of event time, the 500-event groups the generator shuffles span 20 s, past the 4 s
    // watermark delay by more than the 8 s a q5 bid's last window stays open after it: some records arrive after
    // every window they fall in has closed.
    let events = Config { rate: 25, ..config() }.all();
    for query in [Query::Q5, Query::Q7, Query::Q8] {
        let reference = expected(query, &events);
        assert!(reference.2 > 0, "{query}: the input has records too late for the windows");
        for (processes, workers) in [(1, 1), (2, 2)] {
            check(
                &format!("{query} with late records at {processes}x{workers}"),
                run_with(query, processes, workers, &["--event-rate", "25"]),
                &reference,
            );
        }
    }
}

#[test]
fn the_differential_only_versions_equal_the_reference_at_1x1_and_2x2() {
    // The benchmark's peer: if it computed something else, its figures would compare nothing.
    let events = config().all();
    for query in [Query::Q1, Query::Q3, Query::Q5] {
        let reference = expected(query, &events);
        for (processes, workers) in [(1, 1), (2, 2)] {
            check(
                &format!("{query} --differential at {processes}x{workers}"),
                run_with(query, processes, workers, &["--differential"]),
                &reference,
            );
        }
    }
}

#[test]
fn every_query_read_from_kafka_equals_its_reference_at_2x2() {
    let scratch = common::Scratch::new("nexmark-kafka");
    let broker = common::kafka::sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    let flags = ["--brokers", bootstrap.as_str(), "--topic", "nexmark"];
    // The example loads the same generated events, partition by partition, into a topic of PARTITIONS partitions.
    let load = Command::new(example("nexmark"))
        .args(["--load", "--events", &EVENTS.to_string(), "--partitions", &PARTITIONS.to_string(), "--out-of-order-group-size", "500"])
        .args(flags)
        .output_within(common::RUN_LIMIT)
        .expect("run the loader");
    assert!(load.status.success(), "loading the events: {}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(common::kafka::partitions(&bootstrap, "nexmark"), PARTITIONS as i32);
    assert_eq!(common::kafka::size(&bootstrap, "nexmark"), EVENTS as i64, "every event in the topic");
    let events = config().all();
    for query in Query::ALL {
        let reference = expected(query, &events);
        check(&format!("{query} from Kafka at 2x2"), run_with(query, 2, 2, &flags), &reference);
    }
}
