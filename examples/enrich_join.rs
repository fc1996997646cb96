//! Enriches a stream of orders with a table of customers, and totals each customer's orders per window; from
//! files or Kafka topics.
//!
//! Orders are JSON `{"order_id": 1, "customer_id": 7, "amount_cents": 1250, "ts_ms": 1000}`. Customers are a
//! changelog of JSON `{"customer_id": 7, "name": "Ada", "region": "EU", "ts_ms": 900}`; `"deleted": true` (or, on
//! Kafka, a tombstone keyed by the customer id) removes a customer. Each order is joined with its customer as of
//! the order's event time (a temporal join: a later change of the customer does not rewrite the order), and each
//! customer's order amounts are summed per tumbling event-time window.
//!
//! Output lines:
//! - `order,<order_id>,<customer_id>,<amount_cents>,<ts_ms>,<name>,<region>` (name and region empty when the
//!   customer is unknown at the order's time);
//! - `total,<customer_id>,<window_start_ms>,<sum_cents>` once the window closes (and again if a late order within
//!   `--allowed-lateness` corrects it).
//!
//! With bounded input (files, or Kafka with `--until-end`) every line is printed once, sorted, when the input is
//! done; unbounded, lines are printed as results are final. With `--output-topic`, results go to Kafka instead,
//! exactly once across crashes and restarts: enriched orders as an upsert topic keyed by order id (JSON values),
//! the totals to `<output-topic>.totals` keyed by `[customer_id, window_start_ms]`, and every malformed record and
//! every order too late for its window to the dead-letter topic (`<topic>.dead-letters` by default) with the
//! reason and the original bytes. Orders later than the allowed lateness and malformed
//! records are counted and reported on stderr, never silently dropped. The output is byte-identical for any
//! number of workers and processes.
//!
//! ```sh
//! cargo run --release --example enrich_join -- --orders orders.jsonl --customers customers.jsonl
//! cargo run --release --example enrich_join -- --workers 2 --brokers 127.0.0.1:9092 --topic orders \
//!     --customers-topic customers --until-end
//! cargo build --release --example enrich_join --bin tributary
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/enrich_join \
//!     --brokers 127.0.0.1:9092 --topic orders --customers-topic customers --output-topic enriched --until-end
//! ```
//!
//! Across machines: the same binary and host file on every host, process `I` started with
//! `enrich_join --brokers ... --topic orders --customers-topic customers --workers 2 --processes 2 --process I
//! --hostfile hosts.txt`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tributary::connectors::file::FileSource;
use tributary::connectors::kafka::{CommitLog, Decoder, EventTime, KafkaConfig, KafkaSink, KafkaSource, SinkDeadLetters, SinkKafka};
use tributary::connectors::{DeadLetter, Job, Source, SourceOptions, SourceStreams};
use tributary::differential_dataflow::AsCollection;
use tributary::operators::aggregate::Sum;
use tributary::operators::window::{LateRecord, WindowAggregate, Windows};
use tributary::operators::{TemporalJoin, Timed, Upsert, WatermarkPolicy};
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Concat, Exchange, Inspect, Probe};

/// Enriches orders with customers and totals each customer's orders per window.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
    /// Orders: a JSON-lines file, or a directory of them (one partition per file).
    #[arg(long, value_name = "FILE|DIR", requires = "customers", conflicts_with = "brokers", required_unless_present = "brokers")]
    orders: Option<PathBuf>,
    /// Customers: a JSON-lines file, or a directory of them.
    #[arg(long, value_name = "FILE|DIR")]
    customers: Option<PathBuf>,
    /// Kafka brokers (host:port[,host:port]).
    #[arg(long, requires_all = ["topic", "customers_topic"])]
    brokers: Option<String>,
    /// Kafka topic of orders.
    #[arg(long)]
    topic: Option<String>,
    /// Kafka topic of customers (typically compacted, keyed by customer id).
    #[arg(long)]
    customers_topic: Option<String>,
    /// Kafka topic for the enriched orders (upserts by order id); the totals go to `<NAME>.totals`.
    #[arg(long, requires = "brokers")]
    output_topic: Option<String>,
    /// Partitions of the output topics, if they are created.
    #[arg(long, default_value_t = 4)]
    output_partitions: i32,
    /// Dead-letter topic, with --output-topic (default `<topic>.dead-letters`).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// The job's commit log topic, with --output-topic (default `<output topic>.commits`).
    #[arg(long)]
    commit_log: Option<String>,
    /// Kafka: read up to the end offsets seen at start, print the results, and exit.
    #[arg(long)]
    until_end: bool,
    /// Window of the per-customer totals.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How far out of order records may arrive and still be on time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_out_of_orderness: Duration,
    /// How long after a window's end a late order may still correct its total.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// A partition without records for this long stops holding the watermark back (the customers table is
    /// often quiet).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Order {
    order_id: u64,
    customer_id: u64,
    amount_cents: i64,
    ts_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct CustomerChange {
    customer_id: u64,
    ts_ms: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    deleted: bool,
}

/// An order with its customer, as the output topic holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Enriched {
    order_id: u64,
    customer_id: u64,
    amount_cents: i64,
    ts_ms: u64,
    name: Option<String>,
    region: Option<String>,
}

/// The job's Kafka outputs, and its commit log.
#[derive(Clone)]
struct Sinks {
    log: CommitLog,
    enriched: KafkaSink<u64, Enriched>,
    totals: KafkaSink<(u64, u64), i64>,
    dead_letters: KafkaSink<String, DeadLetter>,
}

/// A customer as the table holds it: `(name, region)`.
type Customer = (String, String);

enum Input {
    Files { orders: FileSource<Order>, customers: FileSource<CustomerChange> },
    Kafka { orders: Box<KafkaSource<Order>>, customers: Box<KafkaSource<CustomerChange>> },
}

/// A customers topic: JSON values, or a tombstone whose key is the customer id (its time is the record's).
fn customer_decoder() -> Decoder<CustomerChange> {
    Decoder::with(|record| match record.value {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("not a customer: {e}")),
        None => {
            let key = record.key.ok_or("a tombstone without a key")?;
            let customer_id =
                std::str::from_utf8(key).ok().and_then(|k| k.trim().parse().ok()).ok_or("a tombstone whose key is not a customer id")?;
            let ts_ms = record.timestamp.and_then(|t| u64::try_from(t).ok()).ok_or("a tombstone without a timestamp")?;
            Ok(CustomerChange { customer_id, ts_ms, name: String::new(), region: String::new(), deleted: true })
        }
    })
}

/// Builds `source` in the job when there is one (its commits then carry the source's positions).
fn build<'scope, S: Source>(
    job: Option<&Job<'scope>>,
    scope: tributary::timely::dataflow::Scope<'scope, u64>,
    source: &S,
    options: SourceOptions,
) -> SourceStreams<'scope, S::Item> {
    match job {
        Some(job) => job.source(source, options),
        None => source.build(scope, options),
    }
}

/// One output line, ordered as printed for bounded runs: orders by id, then totals by customer and window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Line {
    Order(Order, Option<Customer>),
    Total(u64, u64, i64),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Order(o, customer) => {
                let (name, region) = customer.as_ref().map_or(("", ""), |(n, r)| (n.as_str(), r.as_str()));
                write!(f, "order,{},{},{},{},{name},{region}", o.order_id, o.customer_id, o.amount_cents, o.ts_ms)
            }
            Line::Total(customer, start, sum) => write!(f, "total,{customer},{start},{sum}"),
        }
    }
}

/// What a worker hands back: the lines (bounded runs, worker 0 only) and what it routed away.
struct Outcome {
    lines: Vec<Line>,
    too_late: usize,
    dead_letters: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the cluster starts: opening topics and the commit log logs too.
    tributary::runtime::logging::init();
    let window = args.window.as_millis() as u64;
    anyhow::ensure!(window > 0, "--window must be positive");
    let lateness = args.allowed_lateness.as_millis() as u64;
    let input = match (&args.orders, &args.customers, &args.brokers) {
        (Some(orders), Some(customers), _) => Input::Files {
            orders: FileSource::new(vec![orders.clone()], |o: &Order| Ok(o.ts_ms))?,
            customers: FileSource::new(vec![customers.clone()], |c: &CustomerChange| Ok(c.ts_ms))?,
        },
        (None, _, Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let orders_topic = args.topic.as_deref().context("--topic names the orders topic")?;
            let customers_topic = args.customers_topic.as_deref().context("--customers-topic names the customers topic")?;
            let orders = KafkaSource::new(config.clone(), &[orders_topic], Decoder::json(), EventTime::extract(|o: &Order| Ok(o.ts_ms)))?;
            let customers =
                KafkaSource::new(config, &[customers_topic], customer_decoder(), EventTime::extract(|c: &CustomerChange| Ok(c.ts_ms)))?;
            Input::Kafka { orders: Box::new(orders.until_end(args.until_end)), customers: Box::new(customers.until_end(args.until_end)) }
        }
        _ => anyhow::bail!("give --orders and --customers, or --brokers with --topic and --customers-topic"),
    };
    let bounded = matches!(input, Input::Files { .. }) || args.until_end;
    let sinks = match (&args.output_topic, &args.brokers) {
        (Some(topic), Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let dead =
                args.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dead-letters", args.topic.as_deref().unwrap_or("orders")));
            let open = |what: &str| format!("opening the {what} topic");
            let commit_log = args.commit_log.clone().unwrap_or_else(|| format!("{topic}.commits"));
            let log = CommitLog::open(config.clone(), &commit_log).with_context(|| format!("opening the commit log {commit_log}"))?;
            Some(Sinks {
                enriched: KafkaSink::json(config.clone(), topic)
                    .partitions(args.output_partitions)
                    .open(&log)
                    .with_context(|| open("output"))?,
                totals: KafkaSink::json(config.clone(), format!("{topic}.totals"))
                    .partitions(args.output_partitions)
                    .open(&log)
                    .with_context(|| open("totals"))?,
                dead_letters: KafkaSink::dead_letters(config, dead).open(&log).with_context(|| open("dead-letter"))?,
                log,
            })
        }
        _ => None,
    };
    let policy = WatermarkPolicy {
        max_out_of_orderness_ms: args.max_out_of_orderness.as_millis() as u64,
        idle_timeout: Some(args.idle_timeout),
        ..Default::default()
    };

    let outcomes = tributary::execute(&args.cluster, move |worker, _ctx| {
        let collected = Rc::new(RefCell::new(Vec::new()));
        let too_late = Rc::new(RefCell::new(0usize));
        let dead_letters = Rc::new(RefCell::new(0usize));
        let (sink, late_count, dead_count) = (Rc::clone(&collected), Rc::clone(&too_late), Rc::clone(&dead_letters));
        let options = SourceOptions { policy, ..Default::default() };
        let probes = worker.dataflow::<u64, _, _>(|scope| {
            let job = sinks.as_ref().map(|sinks| sinks.log.job(scope));
            let (orders, customers) = match &input {
                Input::Files { orders, customers } => {
                    (build(job.as_ref(), scope, orders, options.clone()), build(job.as_ref(), scope, customers, options))
                }
                Input::Kafka { orders, customers } => {
                    (build(job.as_ref(), scope, &**orders, options.clone()), build(job.as_ref(), scope, &**customers, options))
                }
            };
            let SourceStreams { records: orders, dead_letters: bad_orders, .. } = orders;
            let SourceStreams { records: customers, dead_letters: bad_customers, .. } = customers;
            let bad = bad_orders.concat(bad_customers);
            let mut probes = Vec::new();
            bad.clone().inspect(move |letter: &DeadLetter| {
                *dead_count.borrow_mut() += 1;
                tracing::warn!(
                    source = letter.source,
                    partition = letter.partition,
                    offset = letter.offset,
                    "dead letter: {}",
                    letter.reason
                );
            });

            let table = customers
                .map(|(change, time, diff)| {
                    let c = change.value;
                    let customer = (!c.deleted).then_some((c.name, c.region));
                    (Timed { event_time: change.event_time, value: (c.customer_id, customer) }, time, diff)
                })
                .upsert("Customers");
            let orders = orders.map(|(order, time, diff)| {
                (Timed { event_time: order.event_time, value: (order.value.customer_id, order.value) }, time, diff)
            });
            let enriched = orders.clone().temporal_join("EnrichOrders", table);
            let totals = orders
                .map(|(order, time, diff)| {
                    (Timed { event_time: order.event_time, value: (order.value.0, order.value.1.amount_cents) }, time, diff)
                })
                .window_aggregate("CustomerTotals", Windows::Tumbling { size_ms: window }, lateness, Sum);
            totals.late.clone().inspect(move |late: &LateRecord<(u64, i64)>| {
                *late_count.borrow_mut() += 1;
                tracing::warn!(
                    customer = late.record.0,
                    ts_ms = late.event_time,
                    arrived_at = late.arrived_at,
                    "order later than the allowed lateness"
                );
            });
            if let (Some(sinks), Some(job)) = (&sinks, &job) {
                let enriched = enriched.map(|(joined, time, diff)| {
                    let (order, customer) = joined.value.1;
                    let (name, region) = customer.map_or((None, None), |(n, r)| (Some(n), Some(r)));
                    let row = Enriched {
                        order_id: order.order_id,
                        customer_id: order.customer_id,
                        amount_cents: order.amount_cents,
                        ts_ms: order.ts_ms,
                        name,
                        region,
                    };
                    ((order.order_id, row), time, diff)
                });
                let enriched = enriched.as_collection().sink_kafka("EnrichedOrders", &sinks.enriched, job);
                let totals_written = totals.results.as_collection().sink_kafka("CustomerTotals", &sinks.totals, job);
                let late = totals.late.map(|late| DeadLetter::late("CustomerTotals", &late));
                let refused = enriched.refused.concat(totals_written.refused);
                bad.concat(late).concat(refused).sink_dead_letters("DeadLetters", &sinks.dead_letters, job);
                probes.push(job.finish());
                return probes;
            }
            let enriched = enriched.map(|(joined, time, diff)| (Line::Order(joined.value.1.0, joined.value.1.1), time, diff));
            let totals = totals.results.map(|(((customer, start), sum), time, diff)| (Line::Total(customer, start, sum), time, diff));
            let printed = enriched
                .concat(totals)
                .exchange(|_| 0)
                .inspect(move |(line, _time, diff)| {
                    if bounded {
                        sink.borrow_mut().push((line.clone(), *diff));
                    } else if *diff > 0 {
                        let _ = writeln!(std::io::stdout(), "{line}");
                    }
                })
                .probe()
                .0;
            probes.push(printed);
            probes
        });
        worker.step_or_park_while(None, || probes.iter().any(|p| !p.done()));
        let mut lines: BTreeMap<Line, isize> = BTreeMap::new();
        for (line, diff) in collected.borrow_mut().drain(..) {
            *lines.entry(line).or_default() += diff;
        }
        // An order seen twice is printed twice; a retracted one not at all.
        let lines = lines.into_iter().flat_map(|(line, n)| std::iter::repeat_n(line, n.max(0) as usize)).collect();
        let (too_late, dead_letters) = (*too_late.borrow(), *dead_letters.borrow());
        Outcome { lines, too_late, dead_letters }
    })?;

    let mut out = std::io::stdout().lock();
    let (mut too_late, mut dead) = (0, 0);
    for outcome in outcomes {
        for line in outcome.lines {
            writeln!(out, "{line}").context("writing results")?;
        }
        too_late += outcome.too_late;
        dead += outcome.dead_letters;
    }
    if too_late + dead > 0 {
        tracing::warn!("this process routed away {too_late} order(s) later than the allowed lateness and {dead} dead letter(s)");
    }
    Ok(())
}
