//! `cargo xtask demo`: the main job on this machine, over a real broker.
//!
//! Starts tansu (sqlite engine, so end offsets are exact) on a free loopback port, creates a 4-partition topic,
//! produces a sample event stream (keys with event times, some out of order, a few far too late, a few
//! malformed), runs `windowed_count` as 2 processes x 2 workers through the launcher in bounded mode, and prints
//! the windows it counted and what it routed away. The broker is stopped at the end.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary_testkit::{Broker, Storage};

const TOPIC: &str = "demo-events";
const EVENTS: u64 = 20_000;

pub fn run(root: &Path, cargo: &str) -> anyhow::Result<()> {
    crate::broker::install()?;
    crate::run(root, cargo, &["build", "--release", "--bin", "tributary", "--example", "windowed_count"], &[])?;
    let dir = root.join("target").join("tributary-demo");
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::start(Storage::Sqlite("demo.db".into()), &dir)?;
    eprintln!("xtask: broker (tansu, sqlite) at {}", broker.bootstrap());
    broker.create_topic(TOPIC, 4, &[])?;
    let (late, malformed) = produce(&broker.bootstrap())?;
    eprintln!("xtask: produced {EVENTS} events to {TOPIC} ({late} far behind their partition, {malformed} malformed)");

    let release = root.join("target").join("release");
    eprintln!("xtask: windowed_count, 2 processes x 2 workers, 10 s windows, 5 s out-of-orderness, 2 s allowed lateness");
    let output = Command::new(release.join("tributary"))
        .args(["launch", "--processes", "2", "--workers", "2", "--"])
        .arg(release.join("examples").join("windowed_count"))
        .args(["--brokers", &broker.bootstrap(), "--topic", TOPIC, "--until-end"])
        .args(["--window", "10s", "--max-out-of-orderness", "5s", "--allowed-lateness", "2s"])
        .env("RUST_LOG", "warn")
        .output()
        .context("cannot run the launcher")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("the demo job failed ({}):\n{stderr}", output.status);
    }
    let text = String::from_utf8(output.stdout).context("windowed_count printed non-UTF-8")?;
    let windows: Vec<(&str, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',');
            Some((parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    let counted: u64 = windows.iter().map(|w| w.2).sum();
    println!("{} windows, {counted} events counted; the first windows per key:", windows.len());
    println!("{:<8} {:>16} {:>6}", "key", "window start ms", "count");
    let mut shown = std::collections::BTreeMap::new();
    for (key, start, count) in &windows {
        let n = shown.entry(*key).or_insert(0);
        if *n < 3 {
            println!("{key:<8} {start:>16} {count:>6}");
            *n += 1;
        }
    }
    let mut routed_away = 0u64;
    for line in stderr.lines().filter(|l| l.contains("routed away")) {
        let process = line.split(']').next().unwrap_or("").trim_start_matches('[');
        let summary = line.split("windowed_count: ").last().unwrap_or(line);
        println!("{process}: {summary}");
        // "this process routed away N record(s) later than the allowed lateness and M dead letter(s)"
        routed_away += summary.split_whitespace().filter_map(|w| w.parse::<u64>().ok()).sum::<u64>();
    }
    if counted + routed_away != EVENTS {
        bail!("{counted} counted + {routed_away} routed away != {EVENTS} produced: events went missing");
    }
    println!("every event accounted for: {counted} counted + {routed_away} routed away = {EVENTS}");
    Ok(())
}

/// Produces the sample stream; returns (events far behind, malformed events).
fn produce(bootstrap: &str) -> anyhow::Result<(u64, u64)> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("cannot create a producer")?;
    let keys = ["apple", "pear", "fig", "kiwi", "plum", "quince"];
    let (mut late, mut malformed) = (0, 0);
    let mut state = 1u64;
    for i in 0..EVENTS {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = state >> 33;
        let key = keys[(r % keys.len() as u64) as usize];
        // Event time advances 25 ms per event with up to 4 s of disorder; every 500th is 60 s behind.
        let mut ts = 1_700_000_000_000 + i * 25 - (r >> 8) % 4_000;
        if i % 500 == 499 {
            ts -= 60_000;
            late += 1;
        }
        let value = if i % 997 == 996 {
            malformed += 1;
            format!("{{\"key\":\"{key}\",\"ts_ms\":\"yesterday\"}}")
        } else {
            format!("{{\"key\":\"{key}\",\"ts_ms\":{ts}}}")
        };
        let mut record = BaseRecord::to(TOPIC).key(key).payload(&value).partition((i % 4) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).context("flushing the sample events")?;
    Ok((late, malformed))
}
