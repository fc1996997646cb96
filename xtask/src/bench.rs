//! `cargo xtask bench`: Nexmark q0-q8 side by side with the peers, on this machine.
//!
//! Builds `examples/nexmark` in release and prints, per query:
//! - events/s in memory with 1 and 2 workers (the generator runs inside the workers, as in every Nexmark
//!   harness), peak RSS, and the checksum (which must agree between the runs);
//! - the hand-written differential-only pipeline for q1, q3 and q5, same input, same checksum;
//! - through a tansu broker (memory engine) on loopback: the raw rdkafka consume rate of the events topic (the
//!   ingest limit) and the queries read from it (q0-q2 by default, the ones with a target; `--broker-queries`);
//! - the Python peers (Bytewax, PyFlink), when `benches/peers/setup.sh` has installed them, fed the same events
//!   from a JSON-lines file.
//!
//! Results also go to `target/nexmark-bench.txt`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary_testkit::{Broker, Storage};

const QUERIES: [&str; 9] = ["q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8"];
const PARTITIONS: u32 = 8;
const TOPIC: &str = "nexmark-events";

/// One measured run.
struct Measured {
    events_per_s: f64,
    rss: f64,
    checksum: String,
    /// p50, p99, max latency (ms) with --rate.
    latency: Option<(f64, f64, f64)>,
}

fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).collect()
}

fn nexmark(exe: &Path, args: &[&str]) -> anyhow::Result<Measured> {
    let output = Command::new(exe).args(args).env("RUST_LOG", "warn").output().context("cannot run examples/nexmark")?;
    if !output.status.success() {
        bail!("nexmark {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let f = fields(stdout.trim());
    let number =
        |key: &str| -> anyhow::Result<f64> { f.get(key).and_then(|v| v.parse().ok()).with_context(|| format!("no {key} in `{stdout}`")) };
    let latency = match (number("latency_p50_ms"), number("latency_p99_ms"), number("latency_max_ms")) {
        (Ok(p50), Ok(p99), Ok(max)) => Some((p50, p99, max)),
        _ => None,
    };
    Ok(Measured {
        events_per_s: number("events/s")?,
        rss: number("peak_rss_mib")?,
        checksum: f.get("checksum").unwrap_or(&"").to_string(),
        latency,
    })
}

pub fn run(root: &Path, cargo: &str, events: u64, peer_events: u64, broker_queries: &[String]) -> anyhow::Result<()> {
    crate::broker::install()?;
    crate::run(root, cargo, &["build", "--release", "--example", "nexmark"], &[])?;
    let exe = root.join("target").join("release").join("examples").join("nexmark");
    let events_arg = events.to_string();
    let mut report = String::new();
    let mut say = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    say(format!(
        "machine: {} cores; {events} events per run, {PARTITIONS} partitions, generator disorder groups of 1000; release build",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    say("\nin memory (events/s; the generator runs in the workers)".into());
    say(format!(
        "{:<6} {:>12} {:>12} {:>14} {:>14} {:>10}  {}",
        "query", "1 worker", "2 workers", "diff. 1 worker", "diff. 2 workers", "RSS MiB", "checksum"
    ));
    for query in QUERIES {
        let one = nexmark(&exe, &["--query", query, "--events", &events_arg, "--workers", "1"])?;
        let two = nexmark(&exe, &["--query", query, "--events", &events_arg, "--workers", "2"])?;
        if one.checksum != two.checksum {
            bail!("{query}: checksum {} at 1 worker but {} at 2", one.checksum, two.checksum);
        }
        let (mut d1, mut d2) = (String::from("-"), String::from("-"));
        if matches!(query, "q1" | "q3" | "q5") {
            let p1 = nexmark(&exe, &["--query", query, "--events", &events_arg, "--workers", "1", "--differential"])?;
            let p2 = nexmark(&exe, &["--query", query, "--events", &events_arg, "--workers", "2", "--differential"])?;
            if p1.checksum != one.checksum || p2.checksum != one.checksum {
                bail!("{query}: the differential peer's checksum differs");
            }
            d1 = format!("{:.0}", p1.events_per_s);
            d2 = format!("{:.0}", p2.events_per_s);
        }
        say(format!(
            "{query:<6} {:>12.0} {:>12.0} {d1:>14} {d2:>14} {:>10.1}  {}",
            one.events_per_s,
            two.events_per_s,
            one.rss.max(two.rss),
            one.checksum
        ));
    }

    // Latency at a fixed input rate, beyond the watermark delay.
    let (rate, paced_events) = (100_000u64, events.min(1_000_000));
    say(format!(
        "\nlatency at {rate} events/s ({paced_events} events, 1 worker): from the input passing a time to the result passing it (ms)"
    ));
    say(format!("{:<6} {:>8} {:>8} {:>8}", "query", "p50", "p99", "max"));
    for query in QUERIES {
        let paced = nexmark(&exe, &["--query", query, "--events", &paced_events.to_string(), "--rate", &rate.to_string()])?;
        let (p50, p99, max) = paced.latency.context("no latency in the output")?;
        say(format!("{query:<6} {p50:>8.2} {p99:>8.2} {max:>8.2}"));
    }

    // Through the broker.
    let dir = root.join("target").join("nexmark-bench-broker");
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::start(Storage::Memory, &dir)?;
    let bootstrap = broker.bootstrap();
    let started = Instant::now();
    let output = Command::new(&exe)
        .args(["--load", "--brokers", &bootstrap, "--topic", TOPIC, "--events", &events_arg, "--partitions", &PARTITIONS.to_string()])
        .output()?;
    if !output.status.success() {
        bail!("loading the events failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let raw = raw_consume(&bootstrap, events)?.max(raw_consume(&bootstrap, events)?);
    say(format!(
        "\nthrough tansu {} (memory engine) on loopback: {events} events loaded in {:.1} s",
        tributary_testkit::TANSU_VERSION,
        started.elapsed().as_secs_f64()
    ));
    say(format!("raw rdkafka consume (the ingest limit): {raw:.0} events/s"));
    say(format!("{:<6} {:>12} {:>12} {:>12} {:>12}", "query", "1 worker", "2 workers", "1w of raw", "2w of raw"));
    for query in broker_queries.iter().map(String::as_str) {
        let kafka = ["--query", query, "--brokers", &bootstrap, "--topic", TOPIC, "--stop-after", &events_arg];
        let one = nexmark(&exe, &[&kafka[..], &["--workers", "1"]].concat())?;
        let two = nexmark(&exe, &[&kafka[..], &["--workers", "2"]].concat())?;
        say(format!(
            "{query:<6} {:>12.0} {:>12.0} {:>11.0}% {:>11.0}%",
            one.events_per_s,
            two.events_per_s,
            100.0 * one.events_per_s / raw,
            100.0 * two.events_per_s / raw
        ));
    }
    drop(broker);

    // The Python peers, if installed.
    let peers = tributary_testkit::cache_dir().join("peers");
    let dump = root.join("target").join("nexmark-events.jsonl");
    let venvs = [("bytewax", "bytewax_nexmark.py"), ("flink", "flink_nexmark.py")];
    if venvs.iter().any(|(name, _)| peers.join(format!("{name}-venv")).exists()) {
        let output = Command::new(&exe).args(["--dump"]).arg(&dump).args(["--events", &peer_events.to_string()]).output()?;
        if !output.status.success() {
            bail!("dumping the events failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        say(format!("\npeers on the same generator's first {peer_events} events from {} (1 worker / parallelism 1)", dump.display()));
        for (name, script) in venvs {
            let python = peers.join(format!("{name}-venv")).join("bin").join("python");
            if !python.exists() {
                say(format!("{name}: not installed (benches/peers/setup.sh)"));
                continue;
            }
            for query in QUERIES {
                let output = Command::new(&python)
                    .arg(root.join("benches").join("peers").join(script))
                    .args(["--query", query, "--input"])
                    .arg(&dump)
                    .env("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")
                    .output()?;
                let stdout = String::from_utf8_lossy(&output.stdout);
                let line = stdout.lines().rev().find(|l| l.contains("events/s=")).unwrap_or("");
                match fields(line).get("events/s") {
                    Some(rate) if output.status.success() => say(format!("{name:<8} {query:<4} {rate:>12}  {line}")),
                    _ => say(format!(
                        "{name:<8} {query:<4} {:>12}  {}",
                        "-",
                        String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("failed")
                    )),
                }
            }
        }
    } else {
        say("\nPython peers not installed: run benches/peers/setup.sh to compare with Bytewax and Flink".into());
    }
    std::fs::write(root.join("target").join("nexmark-bench.txt"), report)?;
    Ok(())
}

/// Reads every partition of the events topic through its own queue, round robin, until `events` are read.
fn raw_consume(bootstrap: &str, events: u64) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "xtask-bench")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        assignment.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let consumer = std::sync::Arc::new(consumer);
    let queues: Vec<_> = (0..PARTITIONS as i32).filter_map(|p| consumer.split_partition_queue(TOPIC, p)).collect();
    let started = Instant::now();
    let mut seen = 0u64;
    let deadline = started + Duration::from_secs(600);
    while seen < events {
        if Instant::now() > deadline {
            bail!("raw consume: {seen} of {events} events after 10 minutes");
        }
        // As benches/source_backlog measures the bare client: each partition's own queue, round robin.
        let _ = consumer.poll(Duration::ZERO);
        for queue in &queues {
            while let Some(message) = queue.poll(Duration::ZERO) {
                message?;
                seen += 1;
            }
        }
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}
