//! `cargo xtask demo`: the main job on this machine, over a real broker.
//!
//! Starts tansu (sqlite engine: exact offsets, which exactly-once output needs) on a free loopback port, creates
//! the topics, produces a sample stream of customers (a changelog with updates and deletions as tombstones) and
//! orders (out of order by up to 4 s, a few far too late, a few malformed), runs `enrich_join` as 2 processes x 2
//! workers through the launcher in bounded mode with its output to Kafka, then reads what landed in the output,
//! totals and dead-letter topics, prints it, and fails unless every order is accounted for. The broker is
//! stopped at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tributary_testkit::{Broker, Storage};

const ORDERS: &str = "demo-orders";
const CUSTOMERS: &str = "demo-customers";
const OUTPUT: &str = "demo-enriched";
const DEAD_LETTERS: &str = "demo-dead-letters";
const ORDER_COUNT: u64 = 20_000;
const CUSTOMER_COUNT: u64 = 300;
const BASE_TS: u64 = 1_700_000_000_000;

/// Which binaries the demo runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Built for it, optimised: what `cargo xtask demo` runs.
    Release,
    /// The debug binaries `cargo xtask test` has just built: the same checks in CI, without a release build.
    Debug,
}

/// How long the job may take before the demo stops it and fails (a hung job must not hang CI).
const JOB_LIMIT: Duration = Duration::from_secs(600);

pub fn run(root: &Path, cargo: &str, profile: Profile) -> anyhow::Result<()> {
    crate::broker::install()?;
    let (bin, dir) = match profile {
        Profile::Release => {
            crate::run(root, cargo, &["build", "--release", "--bin", "tributary", "--example", "enrich_join"], &[])?;
            (root.join("target").join("release"), root.join("target").join("tributary-demo"))
        }
        Profile::Debug => (root.join("target").join("debug"), root.join("target").join("tributary-demo-debug")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::start(Storage::Sqlite("demo.db".into()), &dir)?;
    let bootstrap = broker.bootstrap();
    eprintln!("xtask: broker (tansu, sqlite) at {bootstrap}");
    broker.create_topic(ORDERS, 4, &[])?;
    broker.create_topic(CUSTOMERS, 2, &[("cleanup.policy", "compact")])?;
    let produced = produce(&bootstrap)?;
    eprintln!(
        "xtask: produced {} customer changes ({} deletions) to {CUSTOMERS} and {ORDER_COUNT} orders to {ORDERS} ({} far behind their partition, {} malformed)",
        produced.customer_changes, produced.deletions, produced.far_behind, produced.malformed
    );

    eprintln!("xtask: enrich_join, 2 processes x 2 workers, 10 s windows, 5 s out-of-orderness, 2 s allowed lateness");
    let started = Instant::now();
    let mut job = Command::new(bin.join("tributary"));
    job.args(["launch", "--processes", "2", "--workers", "2", "--"])
        .arg(bin.join("examples").join("enrich_join"))
        .args(["--brokers", &bootstrap, "--topic", ORDERS, "--customers-topic", CUSTOMERS, "--until-end"])
        .args(["--output-topic", OUTPUT, "--dead-letter-topic", DEAD_LETTERS])
        .args(["--window", "10s", "--max-out-of-orderness", "5s", "--allowed-lateness", "2s"])
        .env("RUST_LOG", "error");
    let output = output_within(&mut job, JOB_LIMIT)?;
    if !output.status.success() {
        bail!("the demo job failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    eprintln!("xtask: the job finished in {:.1} s", started.elapsed().as_secs_f64());

    // The enriched orders, as a table by order id.
    let enriched = read_topic(&bootstrap, OUTPUT, 4)?;
    let mut orders: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for (_, value) in &enriched {
        let row: serde_json::Value = serde_json::from_slice(value.as_deref().context("an enriched order without a value")?)?;
        orders.insert(row["order_id"].as_u64().context("order_id")?, row);
    }
    let unmatched = orders.values().filter(|o| o["name"].is_null()).count();
    println!(
        "{OUTPUT}: {} records, {} orders ({unmatched} without a known customer at their time); the first ones:",
        enriched.len(),
        orders.len()
    );
    for row in orders.values().take(5) {
        println!("  {row}");
    }
    let totals = read_topic(&bootstrap, &format!("{OUTPUT}.totals"), 4)?;
    let mut windows: BTreeMap<(u64, u64), i64> = BTreeMap::new();
    for (key, value) in &totals {
        let (customer, start): (u64, u64) = serde_json::from_slice(key.as_deref().context("a total without a key")?)?;
        windows.insert((customer, start), serde_json::from_slice(value.as_deref().context("a total without a value")?)?);
    }
    println!("{OUTPUT}.totals: {} records, {} (customer, 10 s window) totals; the first ones:", totals.len(), windows.len());
    for ((customer, start), cents) in windows.iter().take(5) {
        println!("  customer {customer}, window {start}: {cents} cents");
    }
    let dead = read_topic(&bootstrap, DEAD_LETTERS, 1)?;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut late_amounts = 0i64;
    for (_, value) in &dead {
        let letter: serde_json::Value = serde_json::from_slice(value.as_deref().context("a dead letter without a value")?)?;
        let reason = letter["reason"].as_str().unwrap_or_default();
        let kind = reason.split(':').next().unwrap_or_default().to_owned();
        if kind == "too late for its window" {
            // A late order's dead letter carries the order as it was read from its topic.
            let order: serde_json::Value = serde_json::from_str(letter["payload"].as_str().context("a late order without its bytes")?)?;
            late_amounts += order["amount_cents"].as_i64().context("a late order without amount_cents")?;
        }
        *reasons.entry(kind).or_default() += 1;
    }
    println!("{DEAD_LETTERS}: {} records: {reasons:?}; the first one:", dead.len());
    if let Some((_, value)) = dead.first() {
        println!("  {}", String::from_utf8_lossy(value.as_deref().unwrap_or_default()));
    }

    // Every order is accounted for: enriched, or dead-lettered as malformed; every cent is in a total or late.
    let malformed_orders = reasons.get("malformed").copied().unwrap_or(0) as u64 - produced.malformed_customers;
    if orders.len() as u64 + malformed_orders != ORDER_COUNT {
        bail!("{} enriched + {malformed_orders} malformed != {ORDER_COUNT} orders produced", orders.len());
    }
    let counted: i64 = windows.values().sum();
    if counted + late_amounts != produced.valid_amount {
        bail!("{counted} cents in totals + {late_amounts} late != {} cents ordered", produced.valid_amount);
    }
    println!(
        "every order accounted for: {} enriched + {malformed_orders} malformed = {ORDER_COUNT}; {counted} cents in totals + {late_amounts} in late orders = {}",
        orders.len(),
        produced.valid_amount
    );
    Ok(())
}

/// What the sample stream holds.
struct Produced {
    customer_changes: u64,
    deletions: u64,
    malformed_customers: u64,
    far_behind: u64,
    malformed: u64,
    valid_amount: i64,
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, str>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
        }
    }
}

/// Produces the sample customers and orders.
fn produce(bootstrap: &str) -> anyhow::Result<Produced> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("cannot create a producer")?;
    let mut state = 1u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let regions = ["EU", "US", "APAC"];
    let mut produced = Produced { customer_changes: 0, deletions: 0, malformed_customers: 0, far_behind: 0, malformed: 0, valid_amount: 0 };
    // Customers: everyone once at the start, then moves between regions and a few deletions over the run; each
    // customer keyed by id, so its changes stay in order on one partition.
    let span = ORDER_COUNT * 25;
    let mut changes: Vec<(u64, u64, Option<String>)> = (0..CUSTOMER_COUNT)
        .map(|id| {
            (
                BASE_TS - 1_000,
                id,
                Some(format!(
                    "{{\"customer_id\":{id},\"name\":\"customer-{id}\",\"region\":\"{}\",\"ts_ms\":{}}}",
                    regions[(id % 3) as usize],
                    BASE_TS - 1_000
                )),
            )
        })
        .collect();
    for i in 0..400u64 {
        let (id, ts) = (next() % CUSTOMER_COUNT, BASE_TS + i * span / 400);
        let value = (i % 40 != 39).then(|| {
            format!("{{\"customer_id\":{id},\"name\":\"customer-{id}\",\"region\":\"{}\",\"ts_ms\":{ts}}}", regions[(next() % 3) as usize])
        });
        changes.push((ts, id, value));
    }
    changes.push((BASE_TS, 0, Some("{\"customer_id\": \"not a number\"}".to_owned())));
    for (ts, id, value) in &changes {
        let key = id.to_string();
        let record = BaseRecord::to(CUSTOMERS).key(key.as_str()).partition((id % 2) as i32).timestamp(*ts as i64);
        match value {
            Some(value) => send(&producer, record.payload(value.as_str())),
            None => {
                produced.deletions += 1;
                send(&producer, record);
            }
        }
        produced.customer_changes += 1;
    }
    produced.malformed_customers = 1;
    // Orders: event time advances 25 ms per order with up to 4 s of disorder; every 500th is 60 s behind.
    for i in 0..ORDER_COUNT {
        let r = next();
        let customer = r % (CUSTOMER_COUNT + 20); // a few unknown customers
        let amount = (100 + (r >> 10) % 10_000) as i64;
        let mut ts = BASE_TS + i * 25 - (r >> 20) % 4_000;
        if i % 500 == 499 {
            ts -= 60_000;
            produced.far_behind += 1;
        }
        let value = if i % 997 == 996 {
            produced.malformed += 1;
            format!("{{\"order_id\":{i},\"customer_id\":{customer},\"amount_cents\":\"lots\",\"ts_ms\":{ts}}}")
        } else {
            produced.valid_amount += amount;
            format!("{{\"order_id\":{i},\"customer_id\":{customer},\"amount_cents\":{amount},\"ts_ms\":{ts}}}")
        };
        send(&producer, BaseRecord::to(ORDERS).payload(value.as_str()).partition((i % 4) as i32));
    }
    producer.flush(Duration::from_secs(60)).context("flushing the sample stream")?;
    Ok(produced)
}

/// Every record of `topic` as `(key, value)`, partition by partition in offset order.
fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "xtask-demo")
        .create()
        .context("cannot create a consumer")?;
    let mut out = Vec::new();
    for partition in 0..partitions {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).with_context(|| format!("end of {topic}/{partition}"))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                bail!("reading {topic}/{partition}: stuck at offset {next} of {high}");
            }
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.with_context(|| format!("reading {topic}/{partition}"))?;
            next = message.offset() + 1;
            out.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
        }
    }
    Ok(out)
}

/// Runs `command` to its end, or stops it (SIGTERM to the launcher, which stops its processes, then SIGKILL)
/// and fails after `limit`.
fn output_within(command: &mut Command, limit: Duration) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("cannot run the launcher")?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.context("cannot wait for the launcher"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if finished.recv_timeout(Duration::from_secs(30)).is_err() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            bail!("the demo job did not finish within {limit:?}; it was stopped")
        }
    }
}
