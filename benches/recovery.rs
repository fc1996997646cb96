//! Recovery: how long a restart takes to catch up with and without checkpoints, for histories of growing length,
//! and what taking checkpoints costs, measured in the same run.
//!
//! ```sh
//! cargo build --release --examples && cargo bench --bench recovery                 # 1M and 5M records
//! cargo bench --bench recovery -- --records 1000000,5000000,20000000
//! ```
//!
//! Under `cargo test` it runs as a smoke test with 20k records. It starts its own tansu broker (sqlite engine:
//! a restore reads from offsets inside batches) on a free port. Per history length N, `windowed_count` (10 s
//! tumbling counts of 100 keys, an upsert output topic, exactly once) reads N in-order records from a
//! 2-partition topic in a bounded run, then 10,000 more records land and a bounded restart catches up:
//! - `first run`: the bounded run over the N records, with a checkpoint every second, and without checkpoints
//!   (its throughput with checkpoints vs without is their cost);
//! - `restart`: from the start of the restarted process to its end (caught up with every record): with
//!   checkpoints it restores the newest one and reads what follows it; without, it replays the N records again.
//!
//! Each run is a fresh process of the example binary built with the bench's profile (`target/release/examples`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary_testkit::{Broker, Storage, flag as arg};

const KEYS: u64 = 100;
const MORE: u64 = 10_000;

fn example() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let path = dir.join("examples").join("windowed_count");
    anyhow::ensure!(path.exists(), "{} is missing: run `cargo build --release --examples` first", path.display());
    Ok(path)
}

/// Produces records `from..to` (each to partition `i % 2`, 1 ms apart).
fn produce(bootstrap: &str, topic: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "20").create()?;
    for i in from..to {
        let ts = 1_000_000_000 + i;
        let payload = format!("{{\"key\":\"k{}\",\"ts_ms\":{ts}}}", i % KEYS);
        let mut record = BaseRecord::<(), _>::to(topic).partition((i % 2) as i32).payload(&payload);
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
    producer.flush(Duration::from_secs(600))?;
    Ok(())
}

/// One bounded run of the job; returns its wall time and how long each checkpoint part took to write (µs).
fn run(example: &Path, bootstrap: &str, topic: &str, job: &str, checkpoints: Option<&Path>) -> anyhow::Result<(f64, Vec<u64>)> {
    let mut command = Command::new(example);
    command.args(["--brokers", bootstrap, "--topic", topic, "--until-end", "--window", "10s", "--output-partitions", "2"]);
    command.args([
        "--output-topic",
        &format!("{job}.out"),
        "--commit-log",
        &format!("{job}.commits"),
        "--dead-letter-topic",
        &format!("{job}.dead"),
    ]);
    if let Some(dir) = checkpoints {
        command.args(["--checkpoint-interval", "1s", "--checkpoint-dir"]).arg(dir);
    }
    let started = Instant::now();
    // The part writer's debug line carries each write's duration.
    let output = command.env("RUST_LOG", "warn,tributary_connectors::source::parts=debug").output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "{job} failed: {stderr}");
    let writes = stderr
        .lines()
        .filter(|line| line.contains("checkpoint part written"))
        .filter_map(|line| line.split("micros=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    Ok((seconds, writes))
}

/// The median and the largest of `values`, in ms.
fn median_max_ms(values: &mut [u64]) -> (f64, f64) {
    values.sort_unstable();
    let median = values.get(values.len() / 2).copied().unwrap_or(0);
    let max = values.last().copied().unwrap_or(0);
    (median as f64 / 1000.0, max as f64 / 1000.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { dir_bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) }).sum()
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` runs this with no arguments, as a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<u64> = match arg("--records") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None if full => vec![1_000_000, 5_000_000],
        None => vec![20_000],
    };
    let example = example()?;
    let scratch = std::env::temp_dir().join(format!("tributary-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let broker = Broker::start(Storage::Sqlite("broker.db".into()), &scratch.join("broker"))?;
    let bootstrap = broker.bootstrap();
    println!(
        "machine: {} cores; broker: tansu {} (sqlite engine); windowed_count, 10 s windows, {KEYS} keys, 2 partitions; restart after {MORE} more records",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tributary_testkit::TANSU_VERSION
    );
    println!(
        "{:>10} {:>22} {:>22} {:>12} {:>12} {:>14} {:>16} parts, write median/max",
        "history", "first run ckpt (ev/s)", "first run none (ev/s)", "overhead", "restart ckpt", "restart none", "checkpoint size"
    );
    for records in sizes {
        let topic = format!("recovery-{records}");
        broker.create_topic(&topic, 2, &[])?;
        produce(&bootstrap, &topic, 0, records)?;
        let dir = scratch.join(format!("checkpoints-{records}"));
        let (with, mut writes) = run(&example, &bootstrap, &topic, &format!("ckpt-{records}"), Some(&dir))?;
        let (without, _) = run(&example, &bootstrap, &topic, &format!("none-{records}"), None)?;
        // The largest checkpoint kept (none if the run ended within the first interval).
        let size = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| dir_bytes(&e.path())).max().unwrap_or(0);
        produce(&bootstrap, &topic, records, records + MORE)?;
        let (restart_with, _) = run(&example, &bootstrap, &topic, &format!("ckpt-{records}"), Some(&dir))?;
        let (restart_without, _) = run(&example, &bootstrap, &topic, &format!("none-{records}"), None)?;
        let (rate_with, rate_without) = (records as f64 / with, records as f64 / without);
        let count = writes.len();
        let (median, max) = median_max_ms(&mut writes);
        println!(
            "{records:>10} {rate_with:>22.0} {rate_without:>22.0} {:>11.1}% {:>11.2}s {:>13.2}s {:>13.1} KiB {count:>7} {median:>8.2}/{max:.2} ms",
            (1.0 - rate_with / rate_without) * 100.0,
            restart_with,
            restart_without,
            size as f64 / 1024.0
        );
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
