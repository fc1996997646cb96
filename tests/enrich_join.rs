//! `enrich_join` end to end: orders x a customers changelog (with deletions, out-of-order and late orders, and
//! malformed records), from files and from a real broker, at several layouts; the output must equal a plain
//! reference model byte for byte every time.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Scratch, example, launcher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tributary_testkit::{Broker, Storage};

const WINDOW: u64 = 10_000;
const OOO: u64 = 5_000;
const LATENESS: u64 = 2_000;
const ORDER_PARTITIONS: u64 = 3;
const CUSTOMER_PARTITIONS: u64 = 2;

#[derive(Clone, Debug)]
struct Order {
    id: u64,
    customer: u64,
    amount: i64,
    ts: u64,
}

/// A customer change; `None` deletes.
#[derive(Clone, Debug)]
struct Change {
    customer: u64,
    ts: u64,
    value: Option<(String, String)>,
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    }
}

/// Customer changes per partition (a customer always on partition `id % CUSTOMER_PARTITIONS`), in order.
fn changes() -> Vec<Vec<Change>> {
    let mut next = lcg(7);
    let mut partitions = vec![Vec::new(); CUSTOMER_PARTITIONS as usize];
    for step in 0..60u64 {
        let customer = next() % 20;
        let ts = step * 1_000;
        let value =
            (!next().is_multiple_of(6)).then(|| (format!("c{customer}v{step}"), ["EU", "US", "APAC"][(next() % 3) as usize].to_owned()));
        partitions[(customer % CUSTOMER_PARTITIONS) as usize].push(Change { customer, ts, value });
    }
    partitions
}

/// Orders per partition, with disorder up to 7 s and a few far behind.
fn orders() -> Vec<Vec<Order>> {
    let mut next = lcg(11);
    let mut partitions = vec![Vec::new(); ORDER_PARTITIONS as usize];
    for id in 0..600u64 {
        let base = 20_000 + id * 100;
        // Every 40th order 15 s behind: too late for its window even with the allowed lateness.
        let ts = base - if id % 40 == 39 { 15_000 } else { next() % 7_000 };
        let order = Order { id, customer: next() % 24, amount: (next() % 10_000) as i64, ts };
        partitions[(next() % ORDER_PARTITIONS) as usize].push(order);
    }
    partitions
}

/// Dataflow times by the source time model, per partition.
fn times(ts: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut watermark = 0u64;
    ts.map(|ts| {
        let time = ts.max(watermark);
        watermark = watermark.max(ts.saturating_sub(OOO));
        time
    })
    .collect()
}

/// The expected output lines, and the orders too late for their window as (partition, offset).
fn reference(orders: &[Vec<Order>], changes: &[Vec<Change>]) -> (String, Vec<(usize, usize)>) {
    let mut table_changes: Vec<(u64, usize, usize, &Change)> = Vec::new();
    for (p, partition) in changes.iter().enumerate() {
        for (i, (change, time)) in partition.iter().zip(times(partition.iter().map(|c| c.ts))).enumerate() {
            table_changes.push((time, p, i, change));
        }
    }
    table_changes.sort_by_key(|(time, p, i, _)| (*time, *p, *i));
    let as_of = |t: u64, customer: u64| {
        let mut value = None;
        for (_, _, _, change) in table_changes.iter().take_while(|(time, ..)| *time <= t) {
            if change.customer == customer {
                value = change.value.clone();
            }
        }
        value
    };
    let mut enriched = BTreeMap::new();
    let mut totals: BTreeMap<(u64, u64), i64> = BTreeMap::new();
    let mut too_late = Vec::new();
    for (p, partition) in orders.iter().enumerate() {
        for (offset, (order, time)) in partition.iter().zip(times(partition.iter().map(|o| o.ts))).enumerate() {
            let (name, region) = as_of(time, order.customer).unwrap_or_default();
            enriched.insert(order.id, format!("order,{},{},{},{},{name},{region}\n", order.id, order.customer, order.amount, order.ts));
            let start = order.ts - order.ts % WINDOW;
            if start + WINDOW + LATENESS > time {
                *totals.entry((order.customer, start)).or_default() += order.amount;
            } else {
                too_late.push((p, offset));
            }
        }
    }
    let mut out: String = enriched.into_values().collect();
    for ((customer, start), sum) in totals {
        out.push_str(&format!("total,{customer},{start},{sum}\n"));
    }
    (out, too_late)
}

fn order_json(o: &Order) -> String {
    format!("{{\"order_id\":{},\"customer_id\":{},\"amount_cents\":{},\"ts_ms\":{}}}", o.id, o.customer, o.amount, o.ts)
}

fn change_json(c: &Change) -> String {
    match &c.value {
        Some((name, region)) => {
            format!("{{\"customer_id\":{},\"name\":\"{name}\",\"region\":\"{region}\",\"ts_ms\":{}}}", c.customer, c.ts)
        }
        None => format!("{{\"customer_id\":{},\"ts_ms\":{},\"deleted\":true}}", c.customer, c.ts),
    }
}

fn run(processes: usize, workers: usize, input: &[String]) -> String {
    let output = Command::new(launcher())
        .args(["launch", "--processes", &processes.to_string(), "--workers", &workers.to_string(), "--"])
        .arg(example("enrich_join"))
        .args(input)
        .args(["--window", "10s", "--max-out-of-orderness", "5s", "--allowed-lateness", "2s"])
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{processes}x{workers} failed: {stderr}");
    assert!(stderr.contains("dead letter"), "the malformed records are reported: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn enrich_join_matches_the_reference_from_files_and_kafka() {
    let scratch = Scratch::new("enrich-join");
    let (orders, changes) = (orders(), changes());
    let (expected, too_late) = reference(&orders, &changes);
    assert!(!too_late.is_empty(), "some orders are too late for their window");
    let lines = expected.lines().count();
    assert!(lines > 650, "orders and windows: {lines}");
    assert!(expected.contains(",,\n"), "some orders meet no customer");

    // Files: one per partition, each with a malformed line.
    let (orders_dir, customers_dir) = (scratch.0.join("orders"), scratch.0.join("customers"));
    std::fs::create_dir_all(&orders_dir).unwrap();
    std::fs::create_dir_all(&customers_dir).unwrap();
    for (p, partition) in orders.iter().enumerate() {
        let text: String = partition.iter().map(|o| order_json(o) + "\n").chain(["{\"order_id\": \"x\"}\n".to_owned()]).collect();
        std::fs::write(orders_dir.join(format!("orders-{p}.jsonl")), text).unwrap();
    }
    for (p, partition) in changes.iter().enumerate() {
        let text: String = partition.iter().map(|c| change_json(c) + "\n").chain(["nonsense\n".to_owned()]).collect();
        std::fs::write(customers_dir.join(format!("customers-{p}.jsonl")), text).unwrap();
    }
    let files = ["--orders".to_owned(), orders_dir.display().to_string(), "--customers".to_owned(), customers_dir.display().to_string()];
    assert_eq!(run(1, 1, &files), expected, "files at 1x1");
    assert_eq!(run(2, 2, &files), expected, "files at 2x2");

    // Kafka: the same partitions; deletions as tombstones keyed by the customer id.
    let broker =
        Broker::start(Storage::Memory, &scratch.0.join("broker")).unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
    broker.create_topic("orders", ORDER_PARTITIONS as u32, &[]).unwrap();
    broker.create_topic("customers", CUSTOMER_PARTITIONS as u32, &[]).unwrap();
    // One record per batch: tansu's memory engine reports exact partition ends only then.
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("batch.num.messages", "1").create().expect("producer");
    let send = |record: BaseRecord<'_, String, String>| {
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    };
    for (p, partition) in orders.iter().enumerate() {
        for order in partition {
            send(BaseRecord::to("orders").partition(p as i32).payload(&order_json(order)));
        }
        send(BaseRecord::to("orders").partition(p as i32).payload(&"{\"order_id\": \"x\"}".to_owned()));
    }
    for (p, partition) in changes.iter().enumerate() {
        for change in partition {
            let key = change.customer.to_string();
            let record = BaseRecord::to("customers").partition(p as i32).key(&key).timestamp(change.ts as i64);
            match &change.value {
                Some(_) => send(record.payload(&change_json(change))),
                None => send(record),
            }
        }
        send(BaseRecord::to("customers").partition(p as i32).payload(&"nonsense".to_owned()));
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let kafka: Vec<String> =
        ["--brokers", &broker.bootstrap(), "--topic", "orders", "--customers-topic", "customers", "--until-end"].map(String::from).to_vec();
    assert_eq!(run(1, 1, &kafka), expected, "Kafka at 1x1");
    assert_eq!(run(2, 2, &kafka), expected, "Kafka at 2x2");

    // Kafka out: the enriched orders and the totals read back as tables are the same lines; every malformed
    // record and every order too late for its window is in the dead-letter topic.
    let out =
        [&kafka[..], &["--output-topic".to_owned(), "enriched".to_owned(), "--dead-letter-topic".to_owned(), "dead".to_owned()]].concat();
    assert_eq!(run(2, 2, &out), "", "results go to Kafka, not stdout");
    let (orders_expected, totals_expected): (Vec<&str>, Vec<&str>) = expected.lines().partition(|l| l.starts_with("order,"));
    let orders_table = |records: &[(Vec<u8>, Option<Vec<u8>>)]| -> Vec<String> {
        let mut rows: BTreeMap<u64, String> = BTreeMap::new();
        for (key, value) in records {
            let row: serde_json::Value = serde_json::from_slice(value.as_deref().expect("no tombstones")).unwrap();
            let text = |f: &str| row[f].as_str().unwrap_or_default().to_owned();
            let line = format!(
                "order,{},{},{},{},{},{}",
                row["order_id"],
                row["customer_id"],
                row["amount_cents"],
                row["ts_ms"],
                text("name"),
                text("region")
            );
            rows.insert(serde_json::from_slice(key).unwrap(), line);
        }
        rows.into_values().collect()
    };
    let totals_table = |records: &[(Vec<u8>, Option<Vec<u8>>)]| -> Vec<String> {
        let mut rows: BTreeMap<(u64, u64), i64> = BTreeMap::new();
        for (key, value) in records {
            rows.insert(serde_json::from_slice(key).unwrap(), serde_json::from_slice(value.as_deref().expect("no tombstones")).unwrap());
        }
        rows.into_iter().map(|((customer, start), sum)| format!("total,{customer},{start},{sum}")).collect()
    };
    let bootstrap = broker.bootstrap();
    let wanted = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    read_until(&bootstrap, "enriched", 4, |r| orders_table(r) == wanted(&orders_expected));
    read_until(&bootstrap, "enriched.totals", 4, |r| totals_table(r) == wanted(&totals_expected));
    let malformed = (ORDER_PARTITIONS + CUSTOMER_PARTITIONS) as usize;
    let dead = read_until(&bootstrap, "dead", 1, |r| r.len() >= malformed + too_late.len());
    assert_eq!(dead.len(), malformed + too_late.len(), "each malformed record and each late order once");
    // A window's dead letter names the order's own topic, partition and offset and keeps its original bytes.
    let mut late: Vec<(usize, usize)> = Vec::new();
    for (key, value) in &dead {
        let letter: serde_json::Value = serde_json::from_slice(value.as_deref().expect("a dead letter")).expect("JSON");
        if !letter["reason"].as_str().unwrap_or_default().starts_with("too late for its window") {
            continue;
        }
        let (p, offset) = (letter["partition"].as_u64().unwrap() as usize, letter["offset"].as_u64().unwrap() as usize);
        assert_eq!((letter["source"].as_str(), String::from_utf8_lossy(key)), (Some("orders"), format!("orders/{p}/{offset}").into()));
        assert_eq!(letter["payload"].as_str(), Some(order_json(&orders[p][offset]).as_str()), "the original bytes of {letter}");
        late.push((p, offset));
    }
    late.sort();
    assert_eq!(late, too_late, "the orders too late for their window, each once");
}

/// Reads `topic` from the start until `done` holds for the records read (`(key, value)`), within a deadline.
/// (tansu's memory engine reports inexact partition ends, so the test reads until it sees what it expects.)
fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    done: impl Fn(&[(Vec<u8>, Option<Vec<u8>>)]) -> bool,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "reader").create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("read");
            records.push((message.key().unwrap_or_default().to_vec(), message.payload().map(<[u8]>::to_vec)));
            continue;
        }
        if done(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic}: not what was expected after 60 s ({} records read)", records.len());
    }
}
