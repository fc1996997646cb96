//! Writing to Kafka: records/s and peak memory of the Kafka sink in both delivery modes, against a bare rdkafka
//! producer writing the same records to the same partitions, in the same run.
//!
//! Under `cargo test` it runs as a smoke test with 20k records.
//!
//! ```sh
//! cargo bench --bench sink                       # 1M records; needs `cargo xtask setup`
//! cargo bench --bench sink -- --records 200000
//! ```
//!
//! It starts its own tansu broker (memory engine) on a free port. Each row is a fresh process (peak RSS is its
//! own) writing to a fresh 4-partition topic: 1,000 distinct keys, each updated again and again (JSON key, JSON
//! value of ~40 bytes), 1,000 updates per dataflow time:
//! - `rdkafka`: a bare `BaseProducer` sending the records, each to the partition murmur2 picks for its key, then
//!   flushing (the write limit);
//! - `at least once`: the sink, handing each completed time's records to the producer, flushing at the end;
//! - `exactly once`: the sink, waiting for each batch's acknowledgements and recording progress.
//!
//! The sink consolidates per time: every update here changes its key's value, so it writes as many records as
//! the bare producer (an upsert of the new value each; the retractions of old values fold into them).

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary::connectors::kafka::{CommitLog, Delivery, KafkaConfig, KafkaSink, SinkKafka, partition_for};
use tributary::differential_dataflow::input::Input;
use tributary_testkit::{Broker, Storage, flag as arg, peak_rss_mib};

const PARTITIONS: i32 = 4;
const KEYS: u64 = 1_000;
const PER_TIME: u64 = 1_000;

/// The `i`-th update: key `i % KEYS`, a value that differs from the key's previous one.
fn update(i: u64) -> (u64, String) {
    (i % KEYS, format!("value-{i:012}-of-the-benchmark"))
}

fn main() -> anyhow::Result<()> {
    match arg("--phase").as_deref() {
        Some(phase) => {
            let brokers = arg("--brokers").unwrap_or_default();
            let topic = arg("--topic").unwrap_or_default();
            let records: u64 = arg("--records").unwrap_or_default().parse()?;
            let started = Instant::now();
            match phase {
                "rdkafka" => bare(&brokers, &topic, records)?,
                "exactly-once" => sink(&brokers, &topic, records, Delivery::ExactlyOnce)?,
                "at-least-once" => sink(&brokers, &topic, records, Delivery::AtLeastOnce)?,
                other => anyhow::bail!("unknown phase {other}"),
            }
            println!("{:.3} {:.1}", started.elapsed().as_secs_f64(), peak_rss_mib());
            Ok(())
        }
        None => orchestrate(),
    }
}

fn orchestrate() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` runs this with no arguments, as a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let records: u64 = arg("--records").map(|r| r.parse()).transpose()?.unwrap_or(if full { 1_000_000 } else { 20_000 });
    let dir = std::env::temp_dir().join(format!("tributary-bench-sink-{}", std::process::id()));
    let broker = Broker::start(Storage::Memory, &dir)?;
    println!(
        "machine: {} cores; broker: tansu {} (memory engine); {records} records, {KEYS} keys, {PARTITIONS} partitions",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tributary_testkit::TANSU_VERSION
    );
    println!("{:<40} {:>12} {:>10} {:>14}", "writer", "records/s", "seconds", "peak RSS MiB");
    let exe = std::env::current_exe()?;
    for (i, (name, phase)) in [
        ("rdkafka BaseProducer (the write limit)", "rdkafka"),
        ("sink, at least once", "at-least-once"),
        ("sink, exactly once", "exactly-once"),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("bench-sink-{i}");
        broker.create_topic(&topic, PARTITIONS as u32, &[])?;
        let output = Command::new(&exe)
            .args(["--phase", phase, "--brokers", &broker.bootstrap(), "--topic", &topic, "--records", &records.to_string()])
            .output()?;
        anyhow::ensure!(output.status.success(), "{name} failed: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8(output.stdout)?;
        let f: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        anyhow::ensure!(f.len() == 2, "unexpected output from {name}: {line}");
        println!("{name:<40} {:>12.0} {:>10.2} {:>14.1}", records as f64 / f[0], f[0], f[1]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bare(brokers: &str, topic: &str, records: u64) -> anyhow::Result<()> {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("acks", "all").create()?;
    for i in 0..records {
        let (key, value) = update(i);
        let key = serde_json::to_vec(&key)?;
        let value = serde_json::to_vec(&value)?;
        let mut record = BaseRecord::to(topic).partition(partition_for(&key, PARTITIONS)).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(1));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
}

fn sink(brokers: &str, topic: &str, records: u64, delivery: Delivery) -> anyhow::Result<()> {
    let config = KafkaConfig::new(brokers)?;
    let log = CommitLog::open(config.clone(), format!("{topic}.commits"))?;
    let sink = KafkaSink::<u64, String>::json(config, topic).partitions(PARTITIONS).delivery(delivery).open(&log)?;
    tributary::timely::execute_directly(move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let job = log.job(scope);
            let (input, updates) = scope.new_collection::<(u64, String), isize>();
            updates.sink_kafka("Bench", &sink, &job);
            (input, job.finish())
        });
        let mut previous: Vec<Option<String>> = vec![None; KEYS as usize];
        for i in 0..records {
            let time = i / PER_TIME;
            if time > *input.time() {
                input.advance_to(time);
                input.flush();
                worker.step();
            }
            let (key, value) = update(i);
            if let Some(old) = previous[key as usize].replace(value.clone()) {
                input.remove((key, old));
            }
            input.insert((key, value));
        }
        input.close();
        worker.step_while(|| !probe.done());
    });
    Ok(())
}
