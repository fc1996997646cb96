//! The Kafka sink end to end, through `kafka_word_count` on a real broker (tansu's sqlite engine: offsets must be
//! exact for exactly-once): the output topic read back as a table equals the counts of `word_count`; its content
//! is the same record for record at 1x1 and 2x2; after crashes at random points (between records, between a
//! batch and its progress record, twice in a row, in one of two processes) and restarts, the topic holds exactly
//! what a clean run writes, each change once; every malformed record is in the dead-letter topic once. Positions
//! committed for lag tools wait for the sinks: after a crash some input is not committed (none before the first
//! progress report), after the restart all of it.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Scratch, example, launcher};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_testkit::{Broker, Storage};

const WORDS: &[&str] = &["river", "Delta", "stream", "flow", "tributary", "basin", "Creek", "rapids", "eddy", "weir", "ford", "bank"];
const OUTPUT_PARTITIONS: &str = "3";

/// `(partition, timestamp, bytes)`: lines of words, and a few records that are not UTF-8.
fn lines() -> Vec<(i32, i64, Vec<u8>)> {
    let mut state = 3u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    (0..1_500)
        .map(|i| {
            let partition = (next() % 2) as i32;
            let bytes = if i % 301 == 300 {
                vec![0xff, 0xfe, b'x']
            } else {
                let n = 1 + next() % 6;
                (0..n).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ").into_bytes()
            };
            (partition, 1_000 + i * 10, bytes)
        })
        .collect()
}

/// Every record of every partition of `topic` as `(key, value)`, in offset order per partition.
fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "reader").create().expect("consumer");
    let mut out = vec![Vec::new(); partitions as usize];
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
        if high <= low {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            assert!(Instant::now() < deadline, "reading {topic}/{partition}: stuck at {next} of {high}");
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.expect("read");
            next = message.offset() + 1;
            out[partition as usize].push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
        }
    }
    out
}

/// The counts `word_count` gives for the same lines.
/// Per partition of `lines`: the offset `group` has committed (what lag tools read), and the partition's end.
fn lag_positions(bootstrap: &str, group: &str) -> Vec<(Offset, i64)> {
    let lag: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut positions = TopicPartitionList::new();
    positions.add_partition("lines", 0);
    positions.add_partition("lines", 1);
    let committed = lag.committed_offsets(positions, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| (e.offset(), lag.fetch_watermarks("lines", e.partition(), Duration::from_secs(10)).expect("end offsets").1))
        .collect()
}

fn reference(lines: &[(i32, i64, Vec<u8>)]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for (_, _, bytes) in lines {
        let Ok(line) = std::str::from_utf8(bytes) else { continue };
        for word in line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
    }
    counts
}

/// Runs `kafka_word_count` into `output` through the launcher; `Err(stderr)` if it failed.
fn run(bootstrap: &str, layout: (usize, usize), output: &str, failpoint: Option<&str>) -> Result<(), String> {
    run_with(bootstrap, layout, output, failpoint, &[])
}

fn run_with(bootstrap: &str, layout: (usize, usize), output: &str, failpoint: Option<&str>, extra: &[&str]) -> Result<(), String> {
    let mut command = Command::new(launcher());
    command
        .args(["launch", "--processes", &layout.0.to_string(), "--workers", &layout.1.to_string(), "--"])
        .arg(example("kafka_word_count"))
        .args([
            "--brokers",
            bootstrap,
            "--topic",
            "lines",
            "--output-topic",
            output,
            "--output-partitions",
            OUTPUT_PARTITIONS,
            "--until-end",
        ])
        .args(["--dead-letter-topic", &format!("{output}.dead")])
        .args(extra);
    match failpoint {
        Some(failpoint) => command.env("TRIBUTARY_FAILPOINT", failpoint),
        None => command.env_remove("TRIBUTARY_FAILPOINT"),
    };
    let output = command.output_within(common::RUN_LIMIT).expect("run launcher");
    if std::env::var("DEBUG_SINK").is_ok() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
}

#[test]
fn word_counts_reach_the_topic_exactly_once_across_crashes() {
    let scratch = Scratch::new("kafka-sink");
    let broker = Broker::start(Storage::Sqlite("broker.db".into()), &scratch.0.join("broker"))
        .unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
    let bootstrap = broker.bootstrap();
    broker.create_topic("lines", 2, &[]).unwrap();
    let lines = lines();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    for (partition, timestamp, bytes) in &lines {
        producer.send(BaseRecord::<(), _>::to("lines").partition(*partition).timestamp(*timestamp).payload(bytes)).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let partitions: i32 = OUTPUT_PARTITIONS.parse().unwrap();

    // A clean run: the topic read as a table is the word counts.
    run_with(&bootstrap, (1, 1), "counts", None, &["--lag-group", "word-count-lag"]).expect("clean run");
    // Positions are committed for lag tools once the counts are written: at the end, all of them.
    let ends = lag_positions(&bootstrap, "word-count-lag").into_iter().map(|(_, end)| Offset::Offset(end)).collect::<Vec<_>>();
    assert_eq!(
        lag_positions(&bootstrap, "word-count-lag").into_iter().map(|(c, _)| c).collect::<Vec<_>>(),
        ends,
        "lines committed to its ends"
    );
    let clean = read_topic(&bootstrap, "counts", partitions);
    let mut table = BTreeMap::new();
    for (key, value) in clean.iter().flatten() {
        let word = String::from_utf8(key.clone().expect("keyed")).unwrap();
        let count: i64 = std::str::from_utf8(value.as_deref().expect("no deletions")).unwrap().parse().unwrap();
        // Counts only grow: a change seen twice would show as a repeat here.
        assert!(table.get(&word).is_none_or(|&c| c < count), "{word} went from {:?} to {count}", table.get(&word));
        table.insert(word, count);
    }
    assert_eq!(table, reference(&lines));
    let changes: usize = clean.iter().map(Vec::len).sum();
    assert!(changes > 500, "the counts change over time: {changes} upserts");
    for (key, partition) in clean.iter().enumerate().flat_map(|(p, records)| records.iter().map(move |(k, _)| (k.clone().unwrap(), p))) {
        assert_eq!(tributary::connectors::kafka::partition_for(&key, partitions), partition as i32, "keys land where Kafka puts them");
    }
    let dead = read_topic(&bootstrap, "counts.dead", 1).concat();
    let malformed = lines.iter().filter(|(_, _, bytes)| std::str::from_utf8(bytes).is_err()).count();
    assert!(malformed > 2);
    assert_eq!(dead.len(), malformed, "every malformed record, once");
    for (key, value) in &dead {
        let origin = String::from_utf8(key.clone().unwrap()).unwrap();
        assert!(origin.starts_with("lines/"), "{origin}");
        let letter: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
        assert_eq!(letter["payload_base64"], "//54", "the original bytes: {letter}");
        assert!(letter["reason"].as_str().unwrap().contains("invalid UTF-8"), "{letter}");
    }

    // The same record for record at 2x2.
    run(&bootstrap, (2, 2), "counts-2x2", None).expect("2x2 run");
    assert_eq!(read_topic(&bootstrap, "counts-2x2", partitions), clean, "2x2 writes what 1x1 writes");

    // Crashes, then restarts with the same flags. At 2x2 with 3 output partitions, worker 2 (on process 1) writes
    // partition 2: `worker=2` aims the crash at it alone, halfway through its records.
    let one_process = format!("sink-after-records={},worker=2", clean[2].len() / 2);
    let scenarios: &[(&str, (usize, usize), &[&str])] = &[
        ("after-1", (1, 1), &["sink-after-records=1"]),
        ("after-n", (1, 1), &["sink-after-records=337"]),
        ("twice", (1, 1), &["sink-after-records=150", "sink-after-records=400"]),
        ("progress", (1, 1), &["sink-before-progress=1"]),
        ("progress-twice", (1, 1), &["sink-before-progress=1", "sink-before-progress=1"]),
        ("two-processes", (2, 2), &["sink-after-records=90"]),
        ("one-process", (2, 2), &[one_process.as_str()]),
    ];
    let complete: usize = clean.iter().map(Vec::len).sum();
    for (name, layout, failpoints) in scenarios {
        let topic = format!("counts-{name}");
        // Positions reach the lag tools' group only once the sinks wrote their records' output.
        let group = format!("{topic}-lag");
        let lag = ["--lag-group", group.as_str()];
        for failpoint in *failpoints {
            let stderr = run_with(&bootstrap, *layout, &topic, Some(failpoint), &lag)
                .err()
                .unwrap_or_else(|| panic!("{name}: {failpoint} did not stop the job"));
            assert!(stderr.contains("failpoint"), "{name}: the job stopped at the failpoint: {stderr}");
            // The crash left output behind that no commit covers, so the restart has something to reconcile: part
            // of it (a crash amid the records), or all of it (a crash before the first progress report, once the
            // records were written).
            let written: usize = read_topic(&bootstrap, &topic, partitions).iter().map(Vec::len).sum();
            let partial = failpoint.starts_with("sink-after-records");
            assert!(0 < written && (written < complete || !partial), "{name}: {written} of {complete} changes written before the crash");
            let committed = lag_positions(&bootstrap, &group);
            if failpoint.starts_with("sink-before-progress") {
                // No time was reported written: no position may be committed.
                assert!(
                    committed.iter().all(|(c, _)| matches!(c, Offset::Invalid | Offset::Offset(0))),
                    "{name}: positions committed for output not reported written: {committed:?}"
                );
            } else {
                assert!(
                    committed.iter().any(|(c, end)| *c != Offset::Offset(*end)),
                    "{name}: every position committed after a crash: {committed:?}"
                );
            }
            if failpoint.contains("worker=") {
                let aimed: Vec<&str> = stderr.lines().filter(|l| l.contains("failpoint sink-after-records")).collect();
                assert!(
                    !aimed.is_empty() && aimed.iter().all(|l| l.starts_with("[p1]")),
                    "{name}: only process 1 crashed at the failpoint: {stderr}"
                );
            }
        }
        run_with(&bootstrap, *layout, &topic, None, &lag).unwrap_or_else(|e| panic!("{name}: restart failed: {e}"));
        let committed = lag_positions(&bootstrap, &group);
        assert!(committed.iter().all(|(c, end)| *c == Offset::Offset(*end)), "{name}: the restart committed every position: {committed:?}");
        assert_eq!(read_topic(&bootstrap, &topic, partitions), clean, "{name}: each change exactly once");
        assert_eq!(read_topic(&bootstrap, &format!("{topic}.dead"), 1).concat(), dead, "{name}: dead letters exactly once");
    }
}
