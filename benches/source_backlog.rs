//! Draining a Kafka backlog: events/s and peak memory of the Kafka source, against a bare rdkafka consumer
//! reading the same topic in the same run.
//!
//! Under `cargo test` it runs as a smoke test with 20k records.
//!
//! ```sh
//! cargo bench --bench source_backlog                       # 5M records
//! cargo bench --bench source_backlog -- --records 1000000
//! ```
//!
//! It starts its own tansu broker (memory engine) on a free port, produces the backlog to a 4-partition topic
//! (JSON `{"key":"kN","ts_ms":T}`, ~40 bytes, event time advancing 1 ms per record), and then drains it, each
//! measurement in a fresh process so peak RSS (VmHWM) is its own:
//! - `rdkafka`: a bare `BaseConsumer` reading the four partitions' own queues round robin, counting records
//!   (the ingest limit; polling only the main queue measured ~4x slower here);
//! - `tributary`: the Kafka source decoding JSON, alone (`source only`: memory is the source's own), and into a
//!   count per key and 10 s tumbling window, by Tributary's window operator (state released as windows close)
//!   and, as the peer, by the hand-written differential pipeline for the same computation (records moved to
//!   their window's end, then `count`, which keeps every window); 1 and 2 workers, with and without
//!   backpressure (at most 100k records in flight).
//!
//! Needs tansu (`cargo xtask setup`).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tributary::connectors::kafka::{Decoder, EventTime, KafkaConfig, KafkaSource};
use tributary::connectors::{Backpressure, SourceOptions};
use tributary::differential_dataflow::AsCollection;
use tributary::operators::aggregate::Count;
use tributary::operators::window::{WindowAggregate, Windows};
use tributary::operators::{Timed, WatermarkPolicy};
use tributary::timely::dataflow::ProbeHandle;
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Inspect, Probe};
use tributary_testkit::{Broker, Storage, flag as arg, peak_rss_mib};

const TOPIC: &str = "backlog";
const PARTITIONS: i32 = 4;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
struct Event {
    key: String,
    ts_ms: u64,
}

fn main() -> anyhow::Result<()> {
    match arg("--phase").as_deref() {
        Some("rdkafka") => raw_consume(),
        Some("tributary") => tributary_consume(),
        Some("produce") => produce(&arg("--brokers").unwrap_or_default(), arg("--records").unwrap_or_default().parse()?),
        _ => orchestrate(),
    }
}

fn orchestrate() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` runs this with no arguments, as a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let records: u64 = arg("--records").map(|r| r.parse()).transpose()?.unwrap_or(if full { 5_000_000 } else { 20_000 });
    let dir = std::env::temp_dir().join(format!("tributary-bench-backlog-{}", std::process::id()));
    let broker = Broker::start(Storage::Memory, &dir)?;
    broker.create_topic(TOPIC, PARTITIONS as u32, &[])?;
    let started = Instant::now();
    produce(&broker.bootstrap(), records)?;
    let produce = started.elapsed().as_secs_f64();
    println!(
        "machine: {} cores; broker: tansu {} (memory engine); backlog: {records} records in {PARTITIONS} partitions",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tributary_testkit::TANSU_VERSION
    );
    println!("produce: {:.0} records/s", records as f64 / produce);
    println!("{:<44} {:>12} {:>10} {:>14}", "consumer", "records/s", "seconds", "peak RSS MiB");
    let exe = std::env::current_exe()?;
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("rdkafka BaseConsumer (ingest limit)", vec!["--phase", "rdkafka"]),
        ("source only, 1 worker", vec!["--phase", "tributary", "--workers", "1", "--pipeline", "source"]),
        (
            "source only, 1 worker, backpressure 100k",
            vec!["--phase", "tributary", "--workers", "1", "--pipeline", "source", "--backpressure", "100000"],
        ),
        ("window operator, 1 worker", vec!["--phase", "tributary", "--workers", "1", "--pipeline", "window"]),
        (
            "window operator, 1 worker, backpressure 100k",
            vec!["--phase", "tributary", "--workers", "1", "--pipeline", "window", "--backpressure", "100000"],
        ),
        ("window operator, 2 workers", vec!["--phase", "tributary", "--workers", "2", "--pipeline", "window"]),
        ("differential count (peer), 1 worker", vec!["--phase", "tributary", "--workers", "1", "--pipeline", "differential"]),
        ("differential count (peer), 2 workers", vec!["--phase", "tributary", "--workers", "2", "--pipeline", "differential"]),
    ];
    for (name, args) in runs {
        let output = Command::new(&exe).args(&args).args(["--brokers", &broker.bootstrap(), "--records", &records.to_string()]).output()?;
        anyhow::ensure!(output.status.success(), "{name} failed: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8(output.stdout)?;
        let fields: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        anyhow::ensure!(fields.len() == 3, "unexpected output from {name}: {line}");
        println!("{name:<44} {:>12.0} {:>10.2} {:>14.1}", fields[0] / fields[1], fields[1], fields[2]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn produce(brokers: &str, records: u64) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for i in 0..records {
        let value = format!("{{\"key\":\"k{}\",\"ts_ms\":{}}}", i % 1000, 1_000_000 + i);
        let mut record = BaseRecord::<(), _>::to(TOPIC).partition((i % PARTITIONS as u64) as i32).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Prints `records seconds peak_rss_mib`.
fn raw_consume() -> anyhow::Result<()> {
    let records: u64 = arg("--records").unwrap_or_default().parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", arg("--brokers").unwrap_or_default())
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    let consumer = Arc::new(consumer);
    consumer.assign(&assignment)?;
    // The fastest plain way: one queue per partition, polled round robin (the main queue alone is ~4x slower).
    let queues: Vec<_> = (0..PARTITIONS).filter_map(|p| consumer.split_partition_queue(TOPIC, p)).collect();
    anyhow::ensure!(queues.len() == PARTITIONS as usize, "cannot split the partition queues");
    let started = Instant::now();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < records {
        let _ = consumer.poll(Duration::ZERO);
        for queue in &queues {
            while let Some(message) = queue.poll(Duration::ZERO) {
                bytes += rdkafka::Message::payload(&message?).map_or(0, <[u8]>::len);
                seen += 1;
            }
        }
    }
    std::hint::black_box(bytes);
    println!("{seen} {:.3} {:.1}", started.elapsed().as_secs_f64(), peak_rss_mib());
    Ok(())
}

/// Prints `records seconds peak_rss_mib`.
fn tributary_consume() -> anyhow::Result<()> {
    let records: u64 = arg("--records").unwrap_or_default().parse()?;
    let workers: usize = arg("--workers").unwrap_or_else(|| "1".into()).parse()?;
    let backpressure: Option<usize> = arg("--backpressure").map(|b| b.parse()).transpose()?;
    let pipeline = arg("--pipeline").unwrap_or_else(|| "window".into());
    let config = KafkaConfig::new(arg("--brokers").unwrap_or_default())?;
    let source = KafkaSource::new(config, &[TOPIC], Decoder::<Event>::json(), EventTime::extract(|e: &Event| Ok(e.ts_ms)))?;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    let started = Instant::now();
    let cluster = tributary::ClusterArgs::single_process(workers);
    tributary::execute(&cluster, move |worker, ctx| {
        let probe = ProbeHandle::new();
        let options = SourceOptions {
            policy: WatermarkPolicy { max_out_of_orderness: std::time::Duration::from_millis(1_000), ..Default::default() },
            backpressure: backpressure.map(|max| Backpressure { probe: probe.clone(), max_ahead: None, max_records: Some(max) }),
            ..Default::default()
        };
        let counter = Arc::clone(&counter);
        worker.dataflow::<u64, _, _>(|scope| {
            let streams = source.build(scope, options);
            let seen = Arc::clone(&counter);
            let records = streams.records.inspect(move |_| {
                seen.fetch_add(1, Ordering::Relaxed);
            });
            match pipeline.as_str() {
                "source" => {
                    records.probe_with(&probe);
                    return;
                }
                "window" => {
                    let windows = records
                        .map(|(event, time, diff)| (Timed::new(event.event_time, (event.value.key, ())), time, diff))
                        .window_aggregate("WindowedCount", Windows::Tumbling { size_ms: 10_000 }, Count);
                    windows.results.probe_with(&probe);
                    return;
                }
                _ => {}
            }
            records
                .map(|(event, time, diff)| {
                    (
                        (event.value.key, event.event_time - event.event_time % 10_000),
                        time.max(event.event_time - event.event_time % 10_000 + 9_999),
                        diff,
                    )
                })
                .as_collection()
                .count()
                .inner
                .probe_with(&probe);
        });
        while counter.load(Ordering::Relaxed) < records {
            worker.step();
        }
        ctx.shutdown.request();
    })?;
    println!("{} {:.3} {:.1}", seen.load(Ordering::Relaxed), started.elapsed().as_secs_f64(), peak_rss_mib());
    Ok(())
}
