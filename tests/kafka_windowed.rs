//! Kafka in, results out, across processes: `windowed_count` over two topics (4 and 5 partitions) of a real
//! broker gives byte-identical output at 1x1, 2x2 and 3x1, equal to a reference model and to the same data read
//! from CSV files (one file per partition).

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{Scratch, example, launcher};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary_testkit::{Broker, Storage};

const WINDOW: u64 = 10_000;
const OOO: u64 = 5_000;
const LATENESS: u64 = 2_000;

/// (topic, partition, key, ts) in production order; `None` key: a malformed record.
type Event = (&'static str, i32, Option<String>, u64);

fn events() -> Vec<Event> {
    let mut state = 42u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut out = Vec::new();
    for (topic, partitions) in [("wc-a", 4), ("wc-b", 5)] {
        for i in 0..900u64 {
            let partition = (next() % partitions) as i32;
            let key = ["apple", "pear", "fig", "kiwi", "plum"][(next() % 5) as usize].to_owned();
            // Advancing time with disorder up to 7 s: some records are late, a few beyond the lateness.
            let ts = 100_000 + i * 150 - next() % 7_000;
            let malformed = i % 97 == 96;
            out.push((topic, partition, (!malformed).then_some(key), ts));
        }
    }
    out
}

/// The expected `key,window_start,count` lines.
fn reference(events: &[Event]) -> String {
    let mut watermarks: BTreeMap<(&str, i32), u64> = BTreeMap::new();
    let mut counts: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for (topic, partition, key, ts) in events {
        let Some(key) = key else { continue };
        let watermark = watermarks.entry((topic, *partition)).or_default();
        let time = (*ts).max(*watermark);
        *watermark = (*watermark).max(ts.saturating_sub(OOO));
        let start = ts - ts % WINDOW;
        if start + WINDOW + LATENESS > time {
            *counts.entry((key.clone(), start)).or_default() += 1;
        }
    }
    counts.iter().map(|((key, start), count)| format!("{key},{start},{count}\n")).collect()
}

fn run(processes: usize, workers: usize, input: &[String]) -> String {
    let output = Command::new(launcher())
        .args(["launch", "--processes", &processes.to_string(), "--workers", &workers.to_string(), "--"])
        .arg(example("windowed_count"))
        .args(input)
        .args(["--window", "10s", "--max-out-of-orderness", "5s", "--allowed-lateness", "2s"])
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{processes}x{workers} failed: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn windowed_count_is_identical_across_layouts_and_inputs() {
    let scratch = Scratch::new("kafka-windowed");
    let broker =
        Broker::start(Storage::Memory, &scratch.0.join("broker")).unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
    broker.create_topic("wc-a", 4, &[]).unwrap();
    broker.create_topic("wc-b", 5, &[]).unwrap();
    let events = events();
    // One record per batch: tansu's memory engine reports the end of a partition as the last batch's base
    // offset + 1, which is exact only then.
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("batch.num.messages", "1").create().expect("producer");
    let csv_dir = scratch.0.join("csv");
    std::fs::create_dir_all(&csv_dir).unwrap();
    let mut files: BTreeMap<(&str, i32), String> = BTreeMap::new();
    for (topic, partition, key, ts) in &events {
        let value = match key {
            Some(key) => format!("{{\"key\":\"{key}\",\"ts_ms\":{ts}}}"),
            None => "{\"key\": 17}".to_owned(),
        };
        producer.send(BaseRecord::<(), _>::to(topic).partition(*partition).payload(&value)).expect("send");
        producer.poll(Duration::ZERO);
        let file = files.entry((topic, *partition)).or_insert_with(|| "key,ts_ms\n".to_owned());
        match key {
            Some(key) => file.push_str(&format!("{key},{ts}\n")),
            None => file.push_str("broken-row\n"),
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    for ((topic, partition), text) in &files {
        std::fs::write(csv_dir.join(format!("{topic}-{partition}.csv")), text).unwrap();
    }

    let expected = reference(&events);
    assert!(expected.lines().count() > 50);
    let kafka: Vec<String> =
        ["--brokers", &broker.bootstrap(), "--topic", "wc-a", "--topic", "wc-b", "--until-end"].map(String::from).to_vec();
    for (processes, workers) in [(1, 1), (2, 2), (3, 1)] {
        assert_eq!(run(processes, workers, &kafka), expected, "Kafka input at {processes}x{workers}");
    }
    let csv = vec!["--csv".to_owned(), csv_dir.display().to_string()];
    assert_eq!(run(2, 1, &csv), expected, "the same data from CSV files");
}
