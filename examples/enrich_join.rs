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
//! reason and their origin; the job's commits go to `--commit-log` (default `<output topic>.commits`). Without
//! an output topic, orders later than the allowed lateness and malformed records are logged with the reason,
//! never silently dropped. The output is byte-identical for any number of workers and processes.
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

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tributary::prelude::*;

/// Enriches orders with customers and totals each customer's orders per window.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    job: JobArgs,
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
    /// Window of the per-customer totals.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long after a window's end a late order may still correct its total.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Order {
    order_id: u64,
    customer_id: u64,
    amount_cents: i64,
    ts_ms: u64,
}

#[derive(Clone, Debug, serde::Deserialize)]
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

/// A customer as the table holds it: `(name, region)`.
type Customer = (String, String);

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

type Input<T> = Box<dyn Source<Item = T>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tributary::runtime::logging::init(); // before the cluster starts: opening topics logs too
    let window = Windows::tumbling(args.window).context("--window")?.allowed_lateness(args.allowed_lateness);
    let (order_time, customer_time) = (|o: &Order| Ok(o.ts_ms), |c: &CustomerChange| Ok(c.ts_ms));
    let (orders, customers, kafka): (Input<Order>, Input<CustomerChange>, _) = match (&args.orders, &args.customers, &args.brokers) {
        (Some(orders), Some(customers), _) => {
            let orders = FileSource::new(vec![orders.clone()], order_time)?;
            (Box::new(orders), Box::new(FileSource::new(vec![customers.clone()], customer_time)?), None)
        }
        (None, _, Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let topics = (args.topic.as_deref().context("--topic names the orders topic")?, args.customers_topic.as_deref());
            let orders = KafkaSource::new(config.clone(), &[topics.0], Decoder::json(), order_time)?;
            let customers_topic = topics.1.context("--customers-topic names the customers topic")?;
            let customers = KafkaSource::new(config.clone(), &[customers_topic], customer_decoder(), customer_time)?;
            let until_end = args.source.until_end;
            (Box::new(orders.until_end(until_end)), Box::new(customers.until_end(until_end)), Some(config))
        }
        _ => anyhow::bail!("give --orders and --customers, or --brokers with --topic and --customers-topic"),
    };
    let bounded = args.orders.is_some() || args.source.until_end;
    let outputs = match (&args.output_topic, &kafka) {
        (Some(topic), Some(config)) => {
            let log = args.job.open_commit_log(config, topic).context("opening the commit log")?;
            let enriched = KafkaSink::json(config.clone(), topic).partitions(args.output_partitions).open(&log);
            let totals = KafkaSink::json(config.clone(), format!("{topic}.totals")).partitions(args.output_partitions).open(&log);
            let dead = args.job.open_dead_letters(&log, args.topic.as_deref().unwrap_or("orders"));
            let open = |what: &str| format!("opening the {what} topic");
            let sinks = (enriched.with_context(|| open("output"))?, totals.with_context(|| open("totals"))?);
            Some((sinks, dead.with_context(|| open("dead-letter"))?, log))
        }
        _ => None,
    };
    let policy = args.source.policy();

    let results = tributary::run(&args.cluster, move |scope, _| {
        let options = SourceOptions { policy, ..Default::default() };
        let job = match &outputs {
            Some((_, dead, log)) => log.job(scope).dead_letters_to(dead),
            None => Job::without_commits(scope),
        };
        let (orders, customers) = (job.source(&orders, options.clone()), job.source(&customers, options.clone()));
        let table = customers.records.map_timed(|c| (c.customer_id, (!c.deleted).then_some((c.name, c.region)))).upsert("Customers");
        let by_customer = orders.records.key_by(|order| order.customer_id);
        let enriched = by_customer.clone().temporal_join("EnrichOrders", table);
        let amounts = by_customer.map_timed(|(customer, order)| (customer, order.amount_cents));
        let totals = amounts.window_aggregate("CustomerTotals", window, Sum);
        job.dead_letter(totals.late.map(|late| DeadLetter::late("CustomerTotals", &late)));
        if let Some(((enriched_sink, totals_sink), _, _)) = &outputs {
            let enriched = enriched.map(|(joined, time, diff)| {
                let (order, customer) = joined.value.1;
                let (name, region) = customer.map_or((None, None), |(n, r)| (Some(n), Some(r)));
                let Order { order_id, customer_id, amount_cents, ts_ms } = order;
                ((order_id, Enriched { order_id, customer_id, amount_cents, ts_ms, name, region }), time, diff)
            });
            enriched.as_collection().sink_kafka("EnrichedOrders", enriched_sink, &job);
            totals.results.as_collection().sink_kafka("CustomerTotals", totals_sink, &job);
            return (job.finish(), None, None);
        }
        let enriched = enriched.map(|(joined, time, diff)| (Line::Order(joined.value.1.0, joined.value.1.1), time, diff));
        let lines = enriched.concat(totals.results.map(|(((customer, start), sum), t, d)| (Line::Total(customer, start, sum), t, d)));
        if bounded {
            return (job.finish(), None, Some(lines.collect_final()));
        }
        let printed = lines.exchange(|_| 0).inspect(|(line, _, diff)| {
            if *diff > 0 {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        });
        (job.finish(), Some(printed.probe().0), None)
    })?;
    let mut out = std::io::stdout().lock();
    // An order seen twice is printed twice; a retracted one not at all.
    for (line, n) in results.into_iter().flat_map(|(_, _, lines)| lines.into_iter().flatten()) {
        for _ in 0..n.max(0) {
            writeln!(out, "{line}").context("writing results")?;
        }
    }
    Ok(())
}
