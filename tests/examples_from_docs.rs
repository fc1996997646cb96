//! The two examples written from the docs alone, on a real broker, against references with their own arithmetic:
//! `fraud_detection` (per-card hopping windows, one alert per window once it is final) and `log_aggregation`
//! (per-service minute counts, late logs correcting their window). Each prints the reference's lines at 1x1 and
//! 2x2 from Kafka, and writes them exactly once to its output topic, with its dead letters (malformed records and
//! records too late for every window) in the dead-letter topic keeping their origin and bytes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Scratch;
use common::kafka::{Job, produce, read, size, sqlite_broker, table};

const PARTITIONS: i32 = 3;
const OOO: u64 = 5_000;
const LONG: Duration = Duration::from_secs(120);

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    }
}

/// A record as produced: its partition, its bytes, and (unless malformed) its event time and fields.
struct Produced<T> {
    partition: i32,
    bytes: String,
    record: Option<(u64, T)>,
}

/// Per partition, the dataflow time of each record in production order: `max(ts, watermark)`, the watermark
/// being the largest event time so far minus the out-of-orderness (malformed records leave it alone).
fn times<T>(records: &[Produced<T>]) -> Vec<Option<u64>> {
    let mut watermarks = BTreeMap::new();
    records
        .iter()
        .map(|r| {
            let (ts, _) = r.record.as_ref()?;
            let watermark: &mut u64 = watermarks.entry(r.partition).or_default();
            let time = (*ts).max(*watermark);
            *watermark = (*watermark).max(ts.saturating_sub(OOO));
            Some(time)
        })
        .collect()
}

fn produce_all<T>(bootstrap: &str, topic: &str, records: &[Produced<T>]) {
    let rows: Vec<(i32, i64, Vec<u8>)> = records.iter().map(|r| (r.partition, 0, r.bytes.clone().into_bytes())).collect();
    produce(bootstrap, topic, &rows);
}

/// Each record's (partition, offset) in production order.
fn offsets<T>(records: &[Produced<T>]) -> Vec<(i32, u64)> {
    let mut next: BTreeMap<i32, u64> = BTreeMap::new();
    records
        .iter()
        .map(|r| {
            let offset = next.entry(r.partition).or_default();
            *offset += 1;
            (r.partition, *offset - 1)
        })
        .collect()
}

/// Runs an example to completion as `processes` x `workers`; returns what it printed.
fn run(scratch: &Scratch, name: &str, layout: (usize, usize), args: &[String]) -> String {
    let mut out = String::new();
    let mut stderr = String::new();
    for process in Job::start(&scratch.0, name, layout, args, &[]).into_processes() {
        let (status, stdout, err) = process.wait_with_stdout(LONG);
        assert!(status.success(), "{name} at {layout:?} failed: {err}");
        out.push_str(&stdout);
        stderr.push_str(&err);
    }
    assert!(stderr.contains("source finished"), "a bounded run says what it read: {stderr}");
    out
}

/// The dead-letter topic: every letter once, the window's late ones naming their record and keeping its bytes.
fn check_dead_letters<T>(bootstrap: &str, topic: &str, input: &str, records: &[Produced<T>], too_late: &BTreeSet<usize>) {
    let positions = offsets(records);
    let malformed = records.iter().filter(|r| r.record.is_none()).count();
    let letters: Vec<serde_json::Value> = read(bootstrap, topic)
        .into_iter()
        .flatten()
        .map(|r| serde_json::from_slice(&r.value.expect("a dead letter")).expect("JSON"))
        .collect();
    assert_eq!(letters.len(), malformed + too_late.len(), "each malformed and each too-late record once: {letters:?}");
    let mut late = BTreeSet::new();
    for letter in &letters {
        let at = (letter["partition"].as_i64().unwrap() as i32, letter["offset"].as_u64().unwrap());
        let i = positions.iter().position(|p| *p == at).unwrap_or_else(|| panic!("no record at {at:?}: {letter}"));
        assert_eq!(letter["source"].as_str(), Some(input), "{letter}");
        assert_eq!(letter["payload"].as_str(), Some(records[i].bytes.as_str()), "the original bytes: {letter}");
        let reason = letter["reason"].as_str().unwrap_or_default();
        if records[i].record.is_some() {
            assert!(reason.starts_with("too late for its window"), "{letter}");
            late.insert(i);
        } else {
            assert!(reason.starts_with("malformed"), "{letter}");
        }
    }
    assert_eq!(&late, too_late, "the records too late for every window they fall in");
}

#[derive(Clone)]
struct Txn {
    card: String,
    amount: i64,
}

#[test]
fn fraud_detection_alerts_once_per_window_as_the_reference_says() {
    const SIZE: u64 = 60_000;
    const SLIDE: u64 = 10_000;
    const LATENESS: u64 = 10_000;
    const MAX_COUNT: i64 = 16;
    const MAX_TOTAL: i64 = 300_000;
    let mut next = lcg(7);
    let txns: Vec<Produced<Txn>> = (0..1200u64)
        .map(|i| {
            let partition = (next() % PARTITIONS as u64) as i32;
            if i % 97 == 96 {
                return Produced { partition, bytes: r#"{"card":5}"#.to_owned(), record: None };
            }
            let card = format!("c{}", next() % 20);
            // Disorder up to 6 s; every 50th transaction 90 s behind: too late for all of its windows.
            let ts = 100_000 + i * 200 - if i % 50 == 49 { 90_000 } else { next() % 6_000 };
            let amount = (next() % 30_000) as i64;
            let bytes = format!(r#"{{"card":"{card}","amount_cents":{amount},"merchant":"m{}","ts_ms":{ts}}}"#, i % 7);
            Produced { partition, bytes, record: Some((ts, Txn { card, amount })) }
        })
        .collect();

    // The reference: windows [start, start + SIZE) every SLIDE, a record counted where start + SIZE + LATENESS is
    // still ahead of its dataflow time; an alert per window over either limit.
    let mut windows: BTreeMap<(String, u64), (i64, i64)> = BTreeMap::new();
    let mut too_late = BTreeSet::new();
    for (i, (txn, time)) in txns.iter().zip(times(&txns)).enumerate() {
        let (Some((ts, txn)), Some(time)) = (&txn.record, time) else { continue };
        let mut counted = false;
        let mut start = ts - ts % SLIDE;
        loop {
            if start + SIZE > *ts && start + SIZE + LATENESS > time {
                let window = windows.entry((txn.card.clone(), start)).or_default();
                *window = (window.0 + 1, window.1 + txn.amount);
                counted = true;
            }
            if start < SLIDE || start + SIZE <= *ts {
                break;
            }
            start -= SLIDE;
        }
        if !counted {
            too_late.insert(i);
        }
    }
    let alerts: BTreeMap<(String, u64), (i64, i64)> =
        windows.iter().filter(|(_, (count, total))| *count > MAX_COUNT || *total > MAX_TOTAL).map(|(k, v)| (k.clone(), *v)).collect();
    assert!(!alerts.is_empty() && alerts.len() < windows.len(), "some windows alert, not all: {} of {}", alerts.len(), windows.len());
    assert!(!too_late.is_empty());
    let expected: String = alerts.iter().map(|((card, start), (count, total))| format!("{card},{start},{count},{total}\n")).collect();

    let scratch = Scratch::new("fraud-detection");
    let broker = sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    broker.create_topic("txns", PARTITIONS as u32, &[]).unwrap();
    produce_all(&bootstrap, "txns", &txns);
    let args = |extra: &[&str]| -> Vec<String> {
        let base = ["--brokers", &bootstrap, "--topic", "txns", "--until-end", "--window", "60s", "--slide", "10s"];
        let limits = ["--allowed-lateness", "10s", "--max-out-of-orderness", "5s", "--max-count", "16", "--max-total-cents", "300000"];
        base.iter().chain(&limits).chain(extra).map(|s| s.to_string()).collect()
    };
    assert_eq!(run(&scratch, "fraud_detection", (1, 1), &args(&[])), expected, "1x1");
    assert_eq!(run(&scratch, "fraud_detection", (2, 2), &args(&[])), expected, "2x2");

    // Kafka out: exactly the alerts, each written once (final results: no corrections), and the dead letters.
    let out = args(&["--output-topic", "alerts", "--dead-letter-topic", "txns.dead"]);
    assert_eq!(run(&scratch, "fraud_detection", (2, 2), &out), "", "alerts go to the topic, not stdout");
    let written: BTreeMap<(String, u64), (i64, i64)> = table(&bootstrap, "alerts")
        .into_iter()
        .map(|(key, value)| {
            let alert: serde_json::Value = serde_json::from_str(&value).unwrap();
            let (card, start): (String, u64) = serde_json::from_str(&key).unwrap();
            assert_eq!((alert["card"].as_str(), alert["window_start_ms"].as_u64()), (Some(card.as_str()), Some(start)));
            ((card, start), (alert["count"].as_i64().unwrap(), alert["total_cents"].as_i64().unwrap()))
        })
        .collect();
    assert_eq!(written, alerts);
    assert_eq!(size(&bootstrap, "alerts"), alerts.len() as i64, "one record per alert: final results are never corrected");
    check_dead_letters(&bootstrap, "txns.dead", "txns", &txns, &too_late);
}

#[derive(Clone)]
struct LogLine {
    service: &'static str,
    error: bool,
}

#[test]
fn log_aggregation_counts_and_corrects_as_the_reference_says() {
    const WINDOW: u64 = 60_000;
    const LATENESS: u64 = 30_000;
    let mut next = lcg(11);
    let logs: Vec<Produced<LogLine>> = (0..900u64)
        .map(|i| {
            let partition = (next() % PARTITIONS as u64) as i32;
            if i % 89 == 88 {
                return Produced { partition, bytes: r#"{"service":"api","level":"#.to_owned(), record: None };
            }
            let service = ["api", "db", "web", "auth"][(next() % 4) as usize];
            let level = ["INFO", "INFO", "WARN", "ERROR", "INFO"][(next() % 5) as usize];
            // Disorder up to 7 s; every 40th log 45 s behind: late, correcting its window or too late for it.
            let ts = 100_000 + i * 300 - if i % 40 == 39 { 45_000 } else { next() % 7_000 };
            let bytes = format!(r#"{{"service":"{service}","level":"{level}","ts_ms":{ts},"message":"line {i}"}}"#);
            Produced { partition, bytes, record: Some((ts, LogLine { service, error: level == "ERROR" })) }
        })
        .collect();

    // The reference: tumbling minutes; a log counts while its window's end plus the lateness is ahead of its
    // dataflow time. A window's result is written when it ends, then once more per later time a log corrected it.
    let mut windows: BTreeMap<(String, u64), (i64, i64)> = BTreeMap::new();
    let mut corrections: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    let mut too_late = BTreeSet::new();
    for (i, (log, time)) in logs.iter().zip(times(&logs)).enumerate() {
        let (Some((ts, log)), Some(time)) = (&log.record, time) else { continue };
        let start = ts - ts % WINDOW;
        let key = (log.service.to_owned(), start);
        if start + WINDOW + LATENESS <= time {
            too_late.insert(i);
            continue;
        }
        let window = windows.entry(key.clone()).or_default();
        *window = (window.0 + 1, window.1 + i64::from(log.error));
        if time >= start + WINDOW {
            corrections.entry(key).or_default().insert(time);
        }
    }
    let corrected = corrections.values().map(BTreeSet::len).sum::<usize>();
    assert!(corrected > 0 && !too_late.is_empty(), "late logs both correct windows ({corrected}) and miss them ({})", too_late.len());
    let expected: String =
        windows.iter().map(|((service, start), (total, errors))| format!("{service},{start},{total},{errors}\n")).collect();

    let scratch = Scratch::new("log-aggregation");
    let broker = sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    broker.create_topic("logs", PARTITIONS as u32, &[]).unwrap();
    produce_all(&bootstrap, "logs", &logs);
    let args = |extra: &[&str]| -> Vec<String> {
        let base = ["--brokers", &bootstrap, "--topic", "logs", "--until-end", "--allowed-lateness", "30s", "--max-out-of-orderness", "5s"];
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    assert_eq!(run(&scratch, "log_aggregation", (1, 1), &args(&[])), expected, "1x1");
    assert_eq!(run(&scratch, "log_aggregation", (2, 2), &args(&[])), expected, "2x2");

    let out = args(&["--output-topic", "log-counts", "--dead-letter-topic", "logs.dead"]);
    assert_eq!(run(&scratch, "log_aggregation", (2, 2), &out), "", "counts go to the topic, not stdout");
    let written: BTreeMap<(String, u64), (i64, i64)> = table(&bootstrap, "log-counts")
        .into_iter()
        .map(|(key, value)| {
            let counts: serde_json::Value = serde_json::from_str(&value).unwrap();
            (serde_json::from_str(&key).unwrap(), (counts["total"].as_i64().unwrap(), counts["errors"].as_i64().unwrap()))
        })
        .collect();
    assert_eq!(written, windows);
    assert_eq!(
        size(&bootstrap, "log-counts"),
        (windows.len() + corrected) as i64,
        "each window's result once, and once more per time a late log corrected it"
    );
    check_dead_letters(&bootstrap, "logs.dead", "logs", &logs, &too_late);
}
