//! Bad input never stops a job, never moves time for good, never disappears: a record stamped in the year 3000
//! is a dead letter and the records after it count; an output record too large for its topic goes to the
//! dead-letter topic with the reason; a restart whose input retention has deleted fails at once, saying so.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{Job, produce, read, sqlite_broker, table};
use common::{Scratch, example};

const LONG: Duration = Duration::from_secs(180);

#[test]
fn a_far_future_record_is_a_dead_letter_not_a_new_watermark() {
    let scratch = Scratch::new("far-future");
    let keys = ["apple", "pear", "fig", "kiwi", "plum"];
    let mut csv = String::from("key,ts_ms\n");
    let mut expected: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for i in 0..10_000u64 {
        if i == 100 {
            // 3000-01-01T00:00:00Z.
            csv.push_str("apple,32503680000000\n");
            continue;
        }
        let (key, ts) = (keys[(i % 5) as usize], 1_000_000 + i * 100);
        csv.push_str(&format!("{key},{ts}\n"));
        *expected.entry((key.to_owned(), ts - ts % 10_000)).or_default() += 1;
    }
    let path = scratch.0.join("events.csv");
    std::fs::write(&path, csv).unwrap();
    let output = Command::new(example("windowed_count"))
        .arg("--csv")
        .arg(&path)
        .args(["--window", "10s"])
        .output_within(common::RUN_LIMIT)
        .expect("run windowed_count");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let expected: String = expected.iter().map(|((key, start), count)| format!("{key},{start},{count}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "every record but the far-future one is counted in its window");
    assert_eq!(stderr.matches("too far ahead").count(), 1, "one dead letter, with the reason: {stderr}");
    assert!(stderr.contains("event time 32503680000000"), "{stderr}");
}

#[test]
fn an_output_record_too_large_for_the_topic_goes_to_the_dead_letters() {
    let scratch = Scratch::new("too-large");
    let broker = sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    broker.create_topic("lines", 1, &[]).unwrap();
    let huge = "x".repeat(30_000);
    let lines =
        vec![(0, 1_000, b"river delta".to_vec()), (0, 1_010, format!("river {huge}").into_bytes()), (0, 1_020, b"delta flow".to_vec())];
    produce(&bootstrap, "lines", &lines);
    let args: Vec<String> = [
        "--brokers",
        &bootstrap,
        "--topic",
        "lines",
        "--output-topic",
        "counts",
        "--changelog-topic",
        "changes",
        "--dead-letter-topic",
        "dead",
        "--until-end",
        // The output topics (and the dead-letter topic) take records up to 20 kB.
        "--kafka-option",
        "message.max.bytes=20000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Job::start(&scratch.0, "kafka_word_count", (1, 1), &args, &[]).succeed("the job with one record too large", LONG);
    let counts = table(&bootstrap, "counts");
    let expected: BTreeMap<String, String> =
        [("delta", "2"), ("flow", "1"), ("river", "2")].iter().map(|(w, n)| (w.to_string(), n.to_string())).collect();
    assert_eq!(counts, expected, "every other count is written");
    let dead: Vec<serde_json::Value> = read(&bootstrap, "dead")
        .into_iter()
        .flatten()
        .map(|r| serde_json::from_slice(&r.value.expect("a dead letter")).expect("JSON"))
        .collect();
    assert_eq!(dead.len(), 2, "the upsert and the changelog record, once each: {dead:?}");
    for letter in &dead {
        let reason = letter["reason"].as_str().expect("a reason");
        assert!(reason.contains("refused by the output topic") && reason.contains("30001 bytes"), "{letter}");
        assert_eq!(letter["key_len"], 30_000, "the key's length is kept even where its bytes are cut: {letter}");
        assert!(letter["key"].as_str().expect("the key, as text").starts_with("xxxx"), "{letter}");
    }
}

#[test]
fn a_restart_whose_input_retention_removed_fails_clearly() {
    let scratch = Scratch::new("retention");
    let broker = sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    // The sqlite engine applies retention every maintenance interval (5 s in the testkit).
    broker.create_topic("lines", 1, &[("retention.ms", "1000"), ("cleanup.policy", "delete")]).unwrap();
    produce(&bootstrap, "lines", &[(0, 1_000, b"river".to_vec()), (0, 1_010, b"delta".to_vec())]);
    let args: Vec<String> =
        ["--brokers", &bootstrap, "--topic", "lines", "--output-topic", "counts", "--until-end"].iter().map(|s| s.to_string()).collect();
    Job::start(&scratch.0, "kafka_word_count", (1, 1), &args, &[]).succeed("the first run", LONG);
    // Wait until retention has removed the records.
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", "r").create().expect("consumer");
    let deadline = Instant::now() + LONG;
    loop {
        use rdkafka::consumer::Consumer;
        let (low, high) = consumer.fetch_watermarks("lines", 0, Duration::from_secs(10)).expect("watermarks");
        // Apache Kafka moves the log start to 2; tansu 0.6 resets the partition to (0, 0) instead, which looks
        // like a truncated topic. Either way the records are gone.
        if low > 0 || high < 2 {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not remove the records");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (statuses, stderr) = Job::start(&scratch.0, "kafka_word_count", (1, 1), &args, &[]).wait(LONG);
    assert!(!statuses[0].success(), "a restart without its input succeeded: {stderr}");
    let retention = stderr.contains("partition lines/0 now starts at offset") && stderr.contains("retention deleted records");
    let truncated = stderr.contains("partition lines/0 ends at offset 0, but the job's commit says it had read up to offset 2");
    assert!(retention || truncated, "{stderr}");
    assert!(stderr.contains("start the job afresh (new output topics and commit log)"), "the message says what to do: {stderr}");
}

#[test]
fn window_parameters_that_make_no_window_are_refused_with_the_reason() {
    let scratch = Scratch::new("bad-window");
    let path = scratch.0.join("events.csv");
    std::fs::write(&path, "key,ts_ms\napple,1000\n").unwrap();
    for window in ["0s", "500us"] {
        let output = Command::new(example("windowed_count"))
            .arg("--csv")
            .arg(&path)
            .args(["--window", window])
            .output_within(common::RUN_LIMIT)
            .expect("run windowed_count");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--window {window} was accepted: {stderr}");
        assert!(stderr.contains("--window") && stderr.contains("a window must last at least 1 ms"), "{window}: {stderr}");
        assert!(output.stdout.is_empty(), "{window}: no result printed");
    }
}

/// A CSV file without its header line: every row is malformed. The run says so early and why, logs a bounded
/// number of lines (the first dead letters in full, then counts), and says that nothing reached the dataflow.
#[test]
fn a_csv_file_without_its_header_line_is_reported_in_a_few_lines_with_the_likely_cause() {
    let scratch = Scratch::new("no-header");
    let rows: String = (0..200_000u64).map(|i| format!("{},{}\n", ["apple", "pear"][(i % 2) as usize], 1_000 + i)).collect();
    let path = scratch.0.join("events.csv");
    std::fs::write(&path, rows).unwrap();
    let child = Command::new(example("windowed_count"))
        .arg("--csv")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run windowed_count");
    let (status, stdout, stderr) = common::Running::new(child).wait_with_stdout(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "", "no record reached a window");
    let lines = stderr.lines().count();
    assert!(lines <= 40, "{lines} log lines for 199,999 malformed rows:\n{stderr}");
    assert!(
        stderr.contains("are all malformed") && stderr.contains("must start with its header line"),
        "the likely cause, early: {stderr}"
    );
    assert_eq!(stderr.matches("dead letter (no dead-letter topic keeps it)").count(), 10, "the first ten in full: {stderr}");
    assert!(stderr.contains("more dead letters (") && stderr.contains(" malformed"), "the rest counted by reason: {stderr}");
    assert!(stderr.contains("every one of its 199999 records was a dead letter"), "{stderr}");
}
