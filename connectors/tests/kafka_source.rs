//! The Kafka source against a real broker (tansu, started per test on a free port).
//!
//! Tests that read end offsets or seek use the sqlite engine or produce one record per batch: tansu's memory
//! engine reports the last batch's base offset + 1 as the end and seeks to batch boundaries (see
//! docs/kafka.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Inspect, Probe};
use tributary_connectors::kafka::{Decoder, EventTime, KafkaConfig, KafkaSource, Position, StartFrom};
use tributary_connectors::{DeadLetter, PartitionMetrics, Reason, SourceOptions};
use tributary_operators::WatermarkPolicy;
use tributary_runtime::Shutdown;
use tributary_testkit::{Broker, Storage};

/// How long a test's dataflow may run before the test binary fails (a hung source would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// What a test record decodes to: where it came from and its event time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Seen {
    topic: String,
    partition: i32,
    offset: i64,
    ts: u64,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-kafka-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn broker(name: &str, storage: Storage) -> Broker {
    Broker::start(storage, &scratch(name)).unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"))
}

fn sqlite(name: &str) -> Broker {
    broker(name, Storage::Sqlite(PathBuf::from("tansu.db")))
}

/// One record to produce: partition, event time (also the Kafka timestamp), and the value (None: malformed).
type Produce = (i32, u64, Option<String>);

fn produce(broker: &Broker, topic: &str, records: &[Produce]) {
    produce_to(&broker.bootstrap(), topic, records)
}

fn produce_to(bootstrap: &str, topic: &str, records: &[Produce]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (partition, ts, value) in records {
        let payload = value.clone().unwrap_or_else(|| "{not json".to_owned());
        let key = format!("k{ts}");
        let mut record = BaseRecord::to(topic).partition(*partition).key(&key).payload(&payload).timestamp(*ts as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)), "produce failed: {e}");
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn json(ts: u64) -> Option<String> {
    Some(format!("{{\"ts\":{ts}}}"))
}

fn source(broker: &Broker, topics: &[&str]) -> KafkaSource<Seen> {
    let decoder = Decoder::with(|r| {
        let value: serde_json::Value = serde_json::from_slice(r.value.ok_or("no value")?).map_err(|e| e.to_string())?;
        let ts = value["ts"].as_u64().ok_or("no ts field")?;
        Ok(Seen { topic: r.topic.to_owned(), partition: r.partition, offset: r.offset, ts })
    });
    let config = KafkaConfig::new(broker.bootstrap()).unwrap();
    KafkaSource::new(config, topics, decoder, EventTime::extract(|s: &Seen| Ok(s.ts))).expect("source")
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Run {
    /// (record, dataflow time)
    records: Vec<(Seen, u64)>,
    dead: Vec<DeadLetter>,
    metrics: Vec<PartitionMetrics>,
}

fn run(source: &KafkaSource<Seen>, policy: WatermarkPolicy, workers: usize) -> Run {
    let out = Arc::new(Mutex::new(Run::default()));
    let (source, sink) = (source.clone(), Arc::clone(&out));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (records, dead) = (Arc::clone(&sink), Arc::clone(&sink));
        let streams = worker.dataflow::<u64, _, _>(|scope| {
            let streams = source.build(scope, SourceOptions { policy, batch: 50, ..Default::default() });
            streams.records.clone().inspect(move |(seen, time, _)| records.lock().unwrap().records.push((seen.value.clone(), *time)));
            streams.dead_letters.clone().inspect(move |d: &DeadLetter| dead.lock().unwrap().dead.push(d.clone()));
            streams.metrics
        });
        while worker.step_or_park(Some(Duration::from_millis(10))) {}
        sink.lock().unwrap().metrics.extend(streams.snapshot());
    })
    .expect("timely");
    let mut run = std::mem::take(&mut *out.lock().unwrap());
    run.records.sort();
    run.dead.sort();
    run.metrics.sort_by(|a, b| (&a.source, a.partition).cmp(&(&b.source, b.partition)));
    run
}

/// The time model applied to each partition in offset order: (records with times, dead letters as
/// (topic, partition, offset, too late?)).
/// Dead letters as (topic, partition, offset, too late?).
type DeadKey = (String, i32, u64, bool);

fn model(topic: &str, records: &[Produce], policy: &WatermarkPolicy) -> (Vec<(Seen, u64)>, Vec<DeadKey>) {
    let mut by_partition: BTreeMap<i32, Vec<&Produce>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.0).or_default().push(r);
    }
    let (mut out, mut dead) = (Vec::new(), Vec::new());
    for (partition, rows) in by_partition {
        let mut watermark = 0u64;
        for (offset, (_, ts, value)) in rows.into_iter().enumerate() {
            if value.is_none() {
                dead.push((topic.to_owned(), partition, offset as u64, false));
                continue;
            }
            let seen = Seen { topic: topic.to_owned(), partition, offset: offset as i64, ts: *ts };
            if *ts >= watermark {
                watermark = watermark.max(ts.saturating_sub(policy.max_out_of_orderness_ms()));
                out.push((seen, *ts));
            } else if policy.max_lateness_ms().is_some_and(|max| watermark - ts > max) {
                dead.push((topic.to_owned(), partition, offset as u64, true));
            } else {
                out.push((seen, watermark));
            }
        }
    }
    (out, dead)
}

/// Deterministic pseudo-random records: mostly in order with disorder up to `disorder` ms, every 37th
/// malformed, every 53rd far behind.
fn records(partitions: i32, count: usize, seed: u64, disorder: u64) -> Vec<Produce> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    (0..count)
        .map(|i| {
            let partition = (next() % partitions as u64) as i32;
            let base = 1_000_000 + i as u64 * 100;
            let ts = if i % 53 == 52 { base - 60_000 } else { base - next() % (disorder + 1) };
            (partition, ts, if i % 37 == 36 { None } else { json(ts) })
        })
        .collect()
}

#[test]
fn several_topics_agree_with_the_model_at_1_2_and_3_workers() {
    let broker = broker("agree", Storage::Memory);
    broker.create_topic("agree-a", 4, &[]).unwrap();
    broker.create_topic("agree-b", 5, &[]).unwrap();
    let (a, b) = (records(4, 600, 1, 3_000), records(5, 500, 2, 3_000));
    produce(&broker, "agree-a", &a);
    produce(&broker, "agree-b", &b);
    let policy = WatermarkPolicy {
        max_out_of_orderness: std::time::Duration::from_millis(2_000),
        idle_timeout: None,
        max_lateness: Some(std::time::Duration::from_millis(30_000)),
        max_ahead: None,
    };
    let (mut expected, mut expected_dead) = model("agree-a", &a, &policy);
    let (more, more_dead) = model("agree-b", &b, &policy);
    expected.extend(more);
    expected_dead.extend(more_dead);
    expected.sort();
    expected_dead.sort();
    assert!(expected.iter().any(|(s, t)| *t > s.ts), "the data has late records within the lateness");
    assert!(expected_dead.iter().any(|d| d.3) && expected_dead.iter().any(|d| !d.3), "the data has too-late and malformed records");

    let source = source(&broker, &["agree-a", "agree-b"]).until_end(true);
    let first = run(&source, policy, 1);
    assert_eq!(first.records, expected);
    let dead: Vec<_> =
        first.dead.iter().map(|d| (d.source.clone(), d.partition, d.offset, matches!(d.reason, Reason::TooLate { .. }))).collect();
    assert_eq!(dead, expected_dead);
    for d in &first.dead {
        match &d.reason {
            Reason::Malformed { error } => {
                assert!(error.contains("key must be a string") || error.contains("EOF"), "{error}");
                assert_eq!(d.payload.as_deref(), Some(&b"{not json"[..]), "the original bytes travel with the dead letter");
            }
            Reason::TooLate { event_time, watermark, max_lateness_ms } => {
                assert!(watermark - event_time > *max_lateness_ms);
                assert_eq!(d.payload.as_deref(), json(*event_time).as_deref().map(str::as_bytes), "a too-late record keeps its bytes");
            }
            other => panic!("a source emits no {other:?}"),
        }
    }
    let totals: u64 = first.metrics.iter().map(|m| m.records + m.too_late + m.malformed).sum();
    assert_eq!(totals as usize, a.len() + b.len(), "every record is counted");
    assert_eq!(first.metrics.len(), 9);
    for workers in [2, 3] {
        let again = run(&source, policy, workers);
        assert_eq!(again.records, first.records, "{workers} workers");
        assert_eq!(again.dead, first.dead, "{workers} workers");
        assert_eq!(again.metrics, first.metrics, "{workers} workers");
    }
}

#[test]
fn out_of_order_within_bounds_is_fully_counted_on_time() {
    let broker = broker("ooo", Storage::Memory);
    broker.create_topic("ooo", 4, &[]).unwrap();
    let mut data = Vec::new();
    for i in 0..400u64 {
        // Each partition's records go backwards by up to 4.9 s within groups of ten.
        let ts = 10_000 + (i / 10) * 10_000 - (i % 10) * 490;
        data.push(((i % 4) as i32, ts, json(ts)));
    }
    produce(&broker, "ooo", &data);
    let policy = WatermarkPolicy {
        max_out_of_orderness: std::time::Duration::from_millis(5_000),
        idle_timeout: None,
        max_lateness: Some(std::time::Duration::from_millis(0)),
        max_ahead: None,
    };
    let result = run(&source(&broker, &["ooo"]).until_end(true), policy, 2);
    assert_eq!(result.records.len(), 400);
    assert!(result.dead.is_empty(), "{:?}", result.dead);
    assert!(result.records.iter().all(|(seen, time)| seen.ts == *time), "every record travels at its event time");
    assert_eq!(result.metrics.iter().map(|m| m.late).sum::<u64>(), 0);
}

#[test]
fn start_from_a_timestamp_or_explicit_offsets() {
    let broker = sqlite("start");
    broker.create_topic("start", 4, &[]).unwrap();
    let data: Vec<Produce> = (0..200u64).map(|i| ((i % 4) as i32, 1_000 + i * 10, json(1_000 + i * 10))).collect();
    produce(&broker, "start", &data);
    let policy = WatermarkPolicy::default();

    let from_ts = run(&source(&broker, &["start"]).start_from(StartFrom::Timestamp(2_000)).until_end(true), policy, 2);
    let expected: Vec<u64> = data.iter().map(|d| d.1).filter(|ts| *ts >= 2_000).collect();
    let mut got: Vec<u64> = from_ts.records.iter().map(|(s, _)| s.ts).collect();
    got.sort();
    assert_eq!(got, expected);

    let offsets = BTreeMap::from([(("start".to_owned(), 0), 45), (("start".to_owned(), 3), 49)]);
    let from_offsets = run(&source(&broker, &["start"]).start_from(StartFrom::Offsets(offsets)).until_end(true), policy, 1);
    let count = |p: i32| from_offsets.records.iter().filter(|(s, _)| s.partition == p).count();
    assert_eq!((count(0), count(1), count(2), count(3)), (5, 50, 50, 1), "listed partitions start at their offset, others at the earliest");
    assert!(from_offsets.records.iter().filter(|(s, _)| s.partition == 0).all(|(s, _)| s.offset >= 45));
}

#[test]
fn resume_from_stored_positions_without_loss_or_duplicates() {
    let broker = sqlite("resume");
    broker.create_topic("resume", 4, &[]).unwrap();
    let all = records(4, 800, 7, 2_000);
    let (before, after) = all.split_at(500);
    produce(&broker, "resume", before);
    let policy = WatermarkPolicy {
        max_out_of_orderness: std::time::Duration::from_millis(1_000),
        idle_timeout: None,
        max_lateness: Some(std::time::Duration::from_millis(30_000)),
        max_ahead: None,
    };
    let first = run(&source(&broker, &["resume"]).until_end(true), policy, 2);
    let positions: Vec<Position> = first
        .metrics
        .iter()
        .map(|m| Position { topic: m.source.clone(), partition: m.partition, offset: m.position as i64, watermark: m.watermark })
        .collect();

    produce(&broker, "resume", after);
    let resumed = run(&source(&broker, &["resume"]).start_from(StartFrom::Resume(positions)).until_end(true), policy, 3);
    let replay = run(&source(&broker, &["resume"]).until_end(true), policy, 1);

    let mut both = first.records.clone();
    both.extend(resumed.records.clone());
    both.sort();
    assert_eq!(both, replay.records, "first run + resumed run = one full replay: no loss, no duplicate, same times");
    let mut dead = first.dead.clone();
    dead.extend(resumed.dead);
    dead.sort();
    assert_eq!(dead, replay.dead);
    assert!(!resumed.records.is_empty());
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let broker = broker("idle", Storage::Memory);
    broker.create_topic("idle", 2, &[]).unwrap();
    // With two workers each reads one partition: the idle one is alone on its worker, which must then follow
    // the other worker's progress instead of holding the cluster back.
    assert_ne!(tributary_connectors::kafka::owner("idle", 0, 2), tributary_connectors::kafka::owner("idle", 1, 2));
    produce(&broker, "idle", &(0..50u64).map(|i| (0, 5_000 + i * 100, json(5_000 + i * 100))).collect::<Vec<_>>());
    let policy = WatermarkPolicy {
        max_out_of_orderness: std::time::Duration::from_millis(0),
        idle_timeout: Some(Duration::from_millis(300)),
        max_lateness: None,
        max_ahead: None,
    };
    let source = source(&broker, &["idle"]);
    for workers in [1, 2] {
        let reached = Arc::new(Mutex::new(Vec::new()));
        let (result, source) = (Arc::clone(&reached), source.clone());
        let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
        timely::execute(timely::Config::process(workers), move |worker| {
            let shutdown = Shutdown::default();
            let options = SourceOptions { policy, shutdown: Some(shutdown.clone()), ..Default::default() };
            let probe = worker.dataflow::<u64, _, _>(|scope| source.build(scope, options).records.probe().0);
            let deadline = Instant::now() + Duration::from_secs(30);
            // Without idleness the empty partition would hold the frontier at 0 forever.
            while probe.less_than(&9_900) && Instant::now() < deadline {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            result.lock().unwrap().push(probe.with_frontier(|f| f.first().copied()));
            shutdown.request();
            while worker.step_or_park(Some(Duration::from_millis(10))) {}
        })
        .expect("timely");
        for frontier in reached.lock().unwrap().iter() {
            let frontier = frontier.expect("source still open when checked");
            assert!(frontier >= 9_900, "{workers} worker(s): the frontier stalled at {frontier}");
        }
    }
}

#[test]
fn backpressure_reads_everything_once_even_with_a_lagging_partition() {
    let broker = broker("backpressure", Storage::Memory);
    broker.create_topic("bp", 4, &[]).unwrap();
    // Partition 3 is far behind the others in event time: with at most 50 records in flight the source must keep
    // reading it (and only it) while the others wait, or it would never move the watermark. Every partition's
    // times rise, so with no out-of-orderness a record completes as soon as its partition moves past it.
    let data: Vec<Produce> = (0..2_000u64)
        .map(|i| {
            let partition = (i % 4) as i32;
            let ts = if partition == 3 { i * 10 } else { 1_000_000 + i };
            (partition, ts, json(ts))
        })
        .collect();
    produce(&broker, "bp", &data);
    let source = source(&broker, &["bp"]).until_end(true);
    let policy = WatermarkPolicy { max_out_of_orderness: Duration::ZERO, idle_timeout: None, max_lateness: None, max_ahead: None };
    const LIMIT: usize = 50;
    const BATCH: usize = 16;
    let run = |limit: Option<usize>| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        // Per worker: the most records held at once by an operator that keeps each record until its time
        // completes (what a window does), i.e. the memory backpressure is there to bound.
        let held = Arc::new(Mutex::new(BTreeMap::<usize, usize>::new()));
        let (sink, most, source) = (Arc::clone(&seen), Arc::clone(&held), source.clone());
        let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
        timely::execute(timely::Config::process(2), move |worker| {
            let probe = timely::dataflow::ProbeHandle::new();
            let backpressure = tributary_connectors::Backpressure { probe: probe.clone(), max_ahead: None, max_records: limit };
            let options = SourceOptions { backpressure: Some(backpressure), batch: BATCH, policy, ..Default::default() };
            let (sink, most, index) = (Arc::clone(&sink), Arc::clone(&most), worker.index());
            worker.dataflow::<u64, _, _>(|scope| {
                source
                    .build(scope, options)
                    .records
                    .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
                        timely::dataflow::channels::pact::Pipeline,
                        "Hold",
                        move |_, _| {
                            let mut waiting: BTreeMap<u64, Vec<Seen>> = BTreeMap::new();
                            move |(input, frontier), _output| {
                                input.for_each(|_, data| {
                                    for (s, t, _) in data.drain(..) {
                                        waiting.entry(t).or_default().push(s.value);
                                    }
                                });
                                while let Some(entry) = waiting.first_entry() {
                                    if frontier.less_equal(entry.key()) {
                                        break;
                                    }
                                    sink.lock().unwrap().extend(entry.remove());
                                }
                                let held: usize = waiting.values().map(Vec::len).sum();
                                let mut most = most.lock().unwrap();
                                let max = most.entry(index).or_default();
                                *max = (*max).max(held);
                            }
                        },
                    )
                    .probe_with(&probe);
            });
        })
        .expect("timely");
        let mut seen: Vec<Seen> = seen.lock().unwrap().clone();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "no record twice");
        assert_eq!(seen.len(), data.len(), "every record once");
        held.lock().unwrap().clone()
    };
    // A source may overshoot the limit by one batch (it checks before it polls), and while throttled it reads one
    // more batch from the partitions holding the frontier back, to move it.
    let bounded = run(Some(LIMIT));
    for (worker, most) in &bounded {
        assert!(*most <= LIMIT + 2 * BATCH, "worker {worker} held {most} records at once with a limit of {LIMIT} in flight");
    }
    // The same run without the limit holds the leading partitions' records on some worker: the check above can fail.
    let unbounded = run(None);
    assert!(
        unbounded.values().any(|most| *most > LIMIT + 2 * BATCH),
        "without backpressure the operator held only {unbounded:?} records per worker: the bound above shows nothing"
    );
}

#[test]
fn backpressure_does_not_stall_behind_a_worker_whose_only_partition_is_idle() {
    let broker = broker("bp-idle", Storage::Memory);
    broker.create_topic("bp-idle", 2, &[]).unwrap();
    // Each worker reads one partition, and only one has records: the other worker goes idle and follows the
    // first one's heartbeats. The first one, throttled with its partition ahead of the frontier the idle worker
    // holds, must keep sending them while it waits, or neither moves again.
    assert_ne!(tributary_connectors::kafka::owner("bp-idle", 0, 2), tributary_connectors::kafka::owner("bp-idle", 1, 2));
    const RECORDS: u64 = 600;
    produce(&broker, "bp-idle", &(0..RECORDS).map(|i| (0, 1_000 + i * 10, json(1_000 + i * 10))).collect::<Vec<_>>());
    let source = source(&broker, &["bp-idle"]);
    let policy = WatermarkPolicy {
        max_out_of_orderness: Duration::ZERO,
        idle_timeout: Some(Duration::from_millis(200)),
        max_lateness: None,
        max_ahead: None,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (sink, observed) = (Arc::clone(&seen), Arc::clone(&seen));
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::process(2), move |worker| {
        let (probe, shutdown, sink) = (timely::dataflow::ProbeHandle::new(), Shutdown::default(), Arc::clone(&sink));
        let backpressure = tributary_connectors::Backpressure { probe: probe.clone(), max_ahead: None, max_records: Some(20) };
        let options =
            SourceOptions { backpressure: Some(backpressure), batch: 8, policy, shutdown: Some(shutdown.clone()), ..Default::default() };
        worker.dataflow::<u64, _, _>(|scope| {
            source.build(scope, options).records.inspect(move |(s, _, _)| sink.lock().unwrap().push(s.value.ts)).probe_with(&probe);
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while (observed.lock().unwrap().len() as u64) < RECORDS {
            let seen = observed.lock().unwrap().len();
            assert!(Instant::now() < deadline, "worker {}: the source stalled after {seen} of {RECORDS} records", worker.index());
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        shutdown.request();
        while worker.step_or_park(Some(Duration::from_millis(10))) {}
    })
    .expect("timely");
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..RECORDS).map(|i| 1_000 + i * 10).collect::<Vec<_>>(), "every record once");
}

#[test]
fn positions_are_committed_for_lag_tools() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let broker = broker("lag", Storage::Memory);
    broker.create_topic("lag", 3, &[]).unwrap();
    let data: Vec<Produce> = (0..90u64).map(|i| ((i % 3) as i32, 1_000 + i, json(1_000 + i))).collect();
    produce(&broker, "lag", &data);
    let source = source(&broker, &["lag"]).until_end(true).commit_positions_to("lag-readers");
    let result = run(&source, WatermarkPolicy::default(), 2);
    assert_eq!(result.records.len(), 90);
    // What a lag tool sees: the group's committed offsets are the ends of the partitions.
    let viewer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "lag-readers")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let mut query = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        query.add_partition("lag", p);
    }
    let committed = viewer.committed_offsets(query, Duration::from_secs(10)).expect("committed offsets");
    for p in 0..3 {
        let offset = committed.find_partition("lag", p).map(|e| e.offset());
        assert_eq!(offset, Some(rdkafka::Offset::Offset(30)), "partition {p}");
    }
}

#[test]
fn whole_records_with_key_headers_and_timestamp() {
    use rdkafka::message::{Header, OwnedHeaders};
    use tributary_connectors::kafka::Message;
    let broker = broker("headers", Storage::Memory);
    broker.create_topic("headers", 2, &[]).unwrap();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("batch.num.messages", "1").create().unwrap();
    let headers =
        OwnedHeaders::new().insert(Header { key: "trace", value: Some("abc") }).insert(Header { key: "empty", value: None::<&str> });
    producer.send(BaseRecord::to("headers").partition(1).key("k1").payload("v1").timestamp(1_234).headers(headers)).unwrap();
    producer.send(BaseRecord::<str, str>::to("headers").partition(0).key("gone").timestamp(2_000)).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let config = KafkaConfig::new(broker.bootstrap()).unwrap();
    let source = KafkaSource::new(config, &["headers"], Decoder::message(), EventTime::KafkaTimestamp).unwrap().until_end(true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute(timely::Config::thread(), move |worker| {
        let sink = Arc::clone(&sink);
        worker.dataflow::<u64, _, _>(|scope| {
            source
                .build(scope, SourceOptions::default())
                .records
                .inspect(move |(m, t, _)| sink.lock().unwrap().push((m.value.clone(), *t)));
        });
    })
    .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(m, _)| m.partition);
    let with_headers = Message {
        topic: "headers".into(),
        partition: 1,
        offset: 0,
        timestamp: Some(1_234),
        key: Some(b"k1".to_vec()),
        value: Some(b"v1".to_vec()),
        headers: vec![("trace".into(), Some(b"abc".to_vec())), ("empty".into(), None)],
    };
    let tombstone = Message {
        topic: "headers".into(),
        partition: 0,
        offset: 0,
        timestamp: Some(2_000),
        key: Some(b"gone".to_vec()),
        value: None,
        headers: vec![],
    };
    assert_eq!(seen, vec![(tombstone, 2_000), (with_headers, 1_234)]);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let broker = broker("missing", Storage::Memory);
    let err = KafkaSource::new(KafkaConfig::new(broker.bootstrap()).unwrap(), &["nope"], Decoder::utf8(), EventTime::KafkaTimestamp)
        .err()
        .expect("missing topic refused");
    assert!(err.to_string().contains("topic `nope` does not exist"), "{err}");
}

#[test]
fn start_from_latest_reads_only_what_is_produced_after_the_start() {
    let broker = sqlite("latest");
    broker.create_topic("latest", 2, &[]).unwrap();
    let old: Vec<Produce> = (0..20u64).map(|i| ((i % 2) as i32, 1_000 + i, json(1_000 + i))).collect();
    produce(&broker, "latest", &old);
    let new: Vec<Produce> = (0..10u64).map(|i| ((i % 2) as i32, 5_000 + i, json(5_000 + i))).collect();
    let source = source(&broker, &["latest"]).start_from(StartFrom::Latest);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (sink, bootstrap) = (Arc::clone(&seen), broker.bootstrap());
    let (observed, to_produce) = (Arc::clone(&seen), new.clone());
    let shutdown = Shutdown::default();
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute_directly(move |worker| {
        let options = SourceOptions { shutdown: Some(shutdown.clone()), ..Default::default() };
        let metrics = worker.dataflow::<u64, _, _>(|scope| {
            let streams = source.build(scope, options);
            streams.records.inspect(move |(s, _, _)| sink.lock().unwrap().push(s.value.ts));
            streams.metrics
        });
        // Once both partitions are assigned (from their ends), the new records are produced.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.snapshot().len() < 2 {
            assert!(Instant::now() < deadline, "the source never assigned both partitions");
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        assert!(metrics.snapshot().iter().all(|m| m.position == 10), "both partitions start at their end: {:?}", metrics.snapshot());
        produce_to(&bootstrap, "latest", &to_produce);
        while observed.lock().unwrap().len() < to_produce.len() {
            assert!(Instant::now() < deadline, "the new records were not read within 60 s: {:?}", observed.lock().unwrap());
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        shutdown.request();
        while worker.step_or_park(Some(Duration::from_millis(10))) {}
    });
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, new.iter().map(|r| r.1).collect::<Vec<_>>(), "exactly the records produced after the start");
}
