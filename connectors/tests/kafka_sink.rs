//! The Kafka sink against a real broker (tansu, started per test on a free port): upsert topics read back as the
//! collection (tombstones for deletions), the changelog format's diffs and times, both delivery modes, Kafka's
//! partitioning, the partition-count check, and the refusal of an output topic that ends before the job's commit.
//! Crash/restart is tested with real processes in `tests/kafka_sink.rs` at the workspace root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tributary_connectors::job::JobError;
use tributary_connectors::kafka::{CommitLog, Delivery, KafkaConfig, KafkaSink, SinkError, SinkFormat, SinkKafka, partition_for};
use tributary_testkit::{Broker, Storage};

/// How long a test's dataflow may run before the test binary fails (a hung source would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

fn broker(name: &str, storage: Storage) -> Broker {
    let dir = std::env::temp_dir().join(format!("tributary-sink-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Broker::start(storage, &dir).unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"))
}

/// `(partition, key, value)` of every record of `topic`, in offset order per partition.
fn read(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i32, Vec<u8>, Option<Vec<u8>>)> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "reader").create().expect("consumer");
    let mut out = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next = low;
        while next < high {
            assert!(Instant::now() < deadline, "reading {topic}/{partition} stuck at {next} of {high}");
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.expect("read");
            next = message.offset() + 1;
            out.push((partition, message.key().unwrap_or_default().to_vec(), message.payload().map(<[u8]>::to_vec)));
        }
    }
    out
}

/// Changes over times 0..20 to a table of 30 keys: inserts, updates and deletions, some cancelling within a time.
fn changes() -> Vec<(u64, (u32, String), isize)> {
    let mut table: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = Vec::new();
    let mut state = 9u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    for time in 0..20u64 {
        for _ in 0..12 {
            let key = (next() % 30) as u32;
            if let Some(old) = table.remove(&key) {
                out.push((time, (key, old), -1));
            }
            if next() % 4 != 0 {
                let value = format!("v{}", next() % 1000);
                table.insert(key, value.clone());
                out.push((time, (key, value), 1));
            }
        }
        // A change that cancels within the time: nothing may be written for it.
        out.push((time, (99, "transient".to_owned()), 1));
        out.push((time, (99, "transient".to_owned()), -1));
    }
    out
}

fn final_table(changes: &[(u64, (u32, String), isize)]) -> BTreeMap<u32, String> {
    let mut counts: BTreeMap<(u32, String), isize> = BTreeMap::new();
    for (_, row, diff) in changes {
        *counts.entry(row.clone()).or_default() += diff;
    }
    counts.into_iter().filter(|(_, n)| *n > 0).map(|(row, _)| row).collect()
}

#[test]
fn upsert_and_changelog_topics_hold_the_collection() {
    let broker = broker("formats", Storage::Sqlite(PathBuf::from("tansu.db")));
    let bootstrap = broker.bootstrap();
    let config = KafkaConfig::new(bootstrap.clone()).unwrap();
    let log = CommitLog::open(config.clone(), "formats.commits").expect("open the commit log");
    let upsert = KafkaSink::<u32, String>::json(config.clone(), "table").partitions(3).open(&log).expect("open upsert sink");
    let changelog = KafkaSink::<u32, String>::json(config.clone(), "changes")
        .partitions(2)
        .format(SinkFormat::Changelog)
        .open(&log)
        .expect("open changelog sink");
    let loose = KafkaSink::<u32, String>::json(config, "loose")
        .partitions(2)
        .delivery(Delivery::AtLeastOnce)
        .open(&log)
        .expect("open at-least-once sink");
    let changes = changes();
    let feed = changes.clone();
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(2), move |worker| {
        let (mut input, probes) = worker.dataflow::<u64, _, _>(|scope| {
            let job = log.job(scope);
            let (input, table) = scope.new_collection::<(u32, String), isize>();
            table.clone().sink_kafka("Upsert", &upsert, &job);
            table.clone().sink_kafka("Changelog", &changelog, &job);
            table.sink_kafka("Loose", &loose, &job);
            (input, [job.finish()])
        });
        if worker.index() == 0 {
            for (time, row, diff) in &feed {
                if *time > *input.time() {
                    input.advance_to(*time);
                }
                input.update(row.clone(), *diff);
            }
        }
        input.close();
        worker.step_while(|| probes.iter().any(|p| !p.done()));
    })
    .expect("timely");

    let expected = final_table(&changes);
    // Upsert: the latest record per key is the table; deleted keys end in a tombstone.
    let records = read(&bootstrap, "table", 3);
    let mut table: BTreeMap<u32, String> = BTreeMap::new();
    let mut tombstones = 0;
    for (partition, key, value) in &records {
        assert_eq!(partition_for(key, 3), *partition, "a key lives where Kafka's partitioner puts it");
        let key: u32 = serde_json::from_slice(key).unwrap();
        assert_ne!(key, 99, "a change that cancels within its time writes nothing");
        match value {
            Some(v) => table.insert(key, serde_json::from_slice(v).unwrap()),
            None => {
                tombstones += 1;
                table.remove(&key)
            }
        };
    }
    assert_eq!(table, expected);
    assert!(tombstones > 0, "deletions are tombstones");
    // At least once, and without a crash exactly once: per key the same records in the same order as the upsert
    // topic (other partition count, same writes), so the same table.
    let per_key = |records: &[(i32, Vec<u8>, Option<Vec<u8>>)]| {
        let mut keys: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        for (_, key, value) in records {
            keys.entry(key.clone()).or_default().push(value.clone());
        }
        keys
    };
    let loose = read(&bootstrap, "loose", 2);
    assert_eq!(loose.len(), records.len(), "at least once (and, without a crash, exactly once)");
    assert_eq!(per_key(&loose), per_key(&records), "the at-least-once topic's records per key");

    // Changelog: the diffs sum to the table, times never go back within a partition.
    let mut counts: BTreeMap<(u32, String), i64> = BTreeMap::new();
    let mut last_time: BTreeMap<i32, u64> = BTreeMap::new();
    for (partition, key, value) in read(&bootstrap, "changes", 2) {
        let key: u32 = serde_json::from_slice(&key).unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&value.expect("a changelog has no tombstones")).unwrap();
        let time = envelope["time"].as_u64().unwrap();
        assert!(last_time.get(&partition).is_none_or(|&t| t <= time), "time order");
        last_time.insert(partition, time);
        *counts.entry((key, envelope["value"].as_str().unwrap().to_owned())).or_default() += envelope["diff"].as_i64().unwrap();
    }
    counts.retain(|_, n| *n != 0);
    assert_eq!(
        counts.into_iter().map(|((k, v), n)| (k, v, n)).collect::<Vec<_>>(),
        expected.into_iter().map(|(k, v)| (k, v, 1)).collect::<Vec<_>>()
    );
}

#[test]
fn keys_land_where_librdkafkas_murmur2_partitioner_puts_them() {
    // The sqlite engine: the memory engine's end offsets are inexact for batches of several records.
    let broker = broker("murmur", Storage::Sqlite(PathBuf::from("tansu.db")));
    broker.create_topic("keyed", 7, &[]).unwrap();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("partitioner", "murmur2").create().expect("producer");
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}-{}", "x".repeat(i % 9))).collect();
    for key in &keys {
        producer.send(BaseRecord::to("keyed").key(key).payload(key)).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let records = read(&broker.bootstrap(), "keyed", 7);
    assert_eq!(records.len(), keys.len());
    for (partition, key, _) in records {
        assert_eq!(partition_for(&key, 7), partition, "{}", String::from_utf8_lossy(&key));
    }
}

#[test]
fn a_topic_with_another_partition_count_is_refused() {
    let broker = broker("mismatch", Storage::Memory);
    broker.create_topic("narrow", 2, &[]).unwrap();
    let config = KafkaConfig::new(broker.bootstrap()).unwrap();
    let log = CommitLog::open(config.clone(), "mismatch.commits").expect("open the commit log");
    let error = KafkaSink::<u32, u32>::json(config, "narrow").partitions(3).open(&log).err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("`narrow` has 2 partition(s) but 3 are configured for it"), "{message}");
}

#[test]
fn a_record_the_brokers_never_acknowledge_stops_the_job_with_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("tributary-sink-typed-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_broker, proxy) = Broker::start_behind_proxy(Storage::Sqlite(PathBuf::from("tansu.db")), &dir)
        .unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
    let config = KafkaConfig::new(proxy.address().to_string())
        .and_then(|c| c.set("message.timeout.ms", "2000"))
        .and_then(|c| c.set("request.timeout.ms", "1000"))
        .unwrap();
    let log = CommitLog::open(config.clone(), "unacknowledged.commits").expect("open the commit log");
    let sink = KafkaSink::<u32, String>::json(config, "unacknowledged").open(&log).expect("open the sink");
    // The broker stores what it is sent, but no produce request gets an answer.
    proxy.drop_produce_responses(usize::MAX);
    let started = Instant::now();
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    let result = tributary_runtime::execute(&tributary_runtime::ClusterArgs::default(), move |worker, _ctx| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let job = log.job(scope);
            let (input, table) = scope.new_collection::<(u32, String), isize>();
            table.sink_kafka("Unacknowledged", &sink, &job);
            (input, job.finish())
        });
        input.insert((1, "one".to_owned()));
        input.close();
        worker.step_while(|| !probe.done());
    });
    proxy.drop_produce_responses(0);
    let Err(tributary_runtime::Error::Fault { source, .. }) = result else {
        panic!("the job did not stop with a fault: {result:?}");
    };
    let error = source.downcast_ref::<tributary_connectors::Error>().expect("a connector error");
    assert!(
        matches!(
            error,
            tributary_connectors::Error::Sink(SinkError::NotDelivered { .. } | SinkError::NotAcknowledged { .. })
                | tributary_connectors::Error::Job(JobError::CommitNotWritten { .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("restart the job"), "the message says what to do: {error}");
    assert!(started.elapsed() < Duration::from_secs(60), "stopped within the delivery timeout and its margin");
}

#[test]
fn an_output_topic_recreated_behind_the_jobs_commit_is_refused() {
    // The commit log and the output on separate brokers, so the output topic can be lost (a fresh broker with the
    // same topic stands for a topic deleted and recreated) while the job's commit survives.
    let commits = broker("recreated-commits", Storage::Memory);
    let first = broker("recreated-first", Storage::Sqlite(PathBuf::from("tansu.db")));
    let log_config = KafkaConfig::new(commits.bootstrap()).unwrap();
    let output = |broker: &Broker| KafkaConfig::new(broker.bootstrap()).unwrap();
    let log = CommitLog::open(log_config.clone(), "recreated.commits").expect("open the commit log");
    let sink = KafkaSink::<u32, String>::json(output(&first), "recreated").partitions(2).open(&log).expect("open the sink");
    let feed = changes();
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::thread(), move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let job = log.job(scope);
            let (input, table) = scope.new_collection::<(u32, String), isize>();
            table.sink_kafka("Recreated", &sink, &job);
            (input, job.finish())
        });
        for (time, row, diff) in &feed {
            if *time > *input.time() {
                input.advance_to(*time);
            }
            input.update(row.clone(), *diff);
        }
        input.close();
        worker.step_while(|| !probe.done());
    })
    .expect("timely");
    let written = read(&first.bootstrap(), "recreated", 2).len();
    assert!(written > 0, "the first run wrote its output");

    // Control: the same topic, at the commit, opens.
    let log = CommitLog::open(log_config.clone(), "recreated.commits").expect("reopen the commit log");
    KafkaSink::<u32, String>::json(output(&first), "recreated").partitions(2).open(&log).expect("the topic the commit describes opens");

    drop(first);
    let second = broker("recreated-second", Storage::Sqlite(PathBuf::from("tansu.db")));
    second.create_topic("recreated", 2, &[]).unwrap();
    let error = KafkaSink::<u32, String>::json(output(&second), "recreated")
        .partitions(2)
        .open(&log)
        .err()
        .expect("an output topic that ends before the commit is refused");
    let SinkError::Truncated { ref topic, end, recorded, ref commit_log, .. } = error else {
        panic!("not a truncation error: {error:?}");
    };
    assert_eq!((topic.as_str(), end, commit_log.as_str()), ("recreated", 0, "recreated.commits"));
    assert!(recorded > 0, "the commit records where the first run's output ended: {error}");
    let message = error.to_string();
    assert!(message.contains("write to a new topic with a new commit log"), "the message says what to do: {message}");
}
