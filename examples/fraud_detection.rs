//! Fraud detection: card transactions in per-card sliding event-time windows, an alert per suspicious window.
//!
//! Transactions are JSON (`{"card":"c1","amount_cents":1250,"merchant":"m","ts_ms":1000}`) on a Kafka topic
//! (`--topic`) or in JSON-lines / CSV files (`--input`). Per card, hopping windows of `--window` (60 s) starting
//! every `--slide` (10 s) count the card's transactions and total their amounts; a window with more than
//! `--max-count` transactions or more than `--max-total-cents` is an alert. Each window's result is emitted once,
//! when the window is final (its end plus `--allowed-lateness` has passed), so there is one alert per window.
//! Malformed records, and records too late for every window they fall in, go to the dead letters.
//!
//! With `--output-topic` the alerts go to that Kafka topic exactly once (upserts keyed by `[card, window_start]`),
//! the dead letters to `--dead-letter-topic` (default `<input topic>.dead-letters`, or `<output topic>.dead-letters` for files). Without it, on bounded input
//! (files, or Kafka with `--until-end`), the alerts are printed sorted as `card,window_start_ms,count,total_cents`
//! once the input is done, and the dead letters are logged.
//!
//! ```sh
//! cargo run --release --example fraud_detection -- --input txns.jsonl --workers 2
//! cargo run --release --example fraud_detection -- --brokers 127.0.0.1:9092 --topic txns --until-end
//! cargo run --release --example fraud_detection -- --brokers 127.0.0.1:9092 --topic txns --output-topic alerts
//! cargo build --release --bin tributary --example fraud_detection
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/fraud_detection --input txns/
//! ```

use clap::Parser;
use std::path::PathBuf;
use tributary::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Txn {
    card: String,
    amount_cents: i64,
    merchant: String,
    ts_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Alert {
    card: String,
    window_start_ms: u64,
    count: i64,
    total_cents: i64,
}

/// Alerts on cards with too many transactions, or too much spent, in a sliding window.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// JSON-lines or CSV files (or directories of them) of transactions.
    #[arg(long, num_args = 1.., required_unless_present = "topic", conflicts_with = "topic")]
    input: Vec<PathBuf>,
    /// Kafka topic of JSON transactions.
    #[arg(long)]
    topic: Option<String>,
    /// Write the alerts to this Kafka topic, exactly once, instead of printing them.
    #[arg(long)]
    output_topic: Option<String>,
    /// Window length.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Distance between window starts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    slide: Duration,
    /// How long after a window's end a late transaction still counts for it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// Alert when a card has more transactions than this in a window.
    #[arg(long, default_value_t = 3)]
    max_count: i64,
    /// Alert when a card spends more than this in a window.
    #[arg(long, default_value_t = 100_000)]
    max_total_cents: i64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let event_time = |t: &Txn| Ok(t.ts_ms);
    let source: Box<dyn Source<Item = Txn>> = match &args.topic {
        Some(topic) => {
            Box::new(KafkaSource::new(args.kafka.config()?, &[topic], Decoder::json(), event_time)?.until_end(args.source.until_end))
        }
        None => Box::new(FileSource::new(args.input.clone(), event_time)?),
    };
    // Every process opens the commit log and the sinks before the cluster starts.
    let output = match &args.output_topic {
        Some(topic) => {
            let kafka = args.kafka.config()?;
            let log = args.job.open_commit_log(&kafka, topic)?;
            let alerts = KafkaSink::<(String, u64), Alert>::json(kafka.clone(), topic).open(&log)?;
            let dead_letters = args.job.open_dead_letters(&log, args.topic.as_deref().unwrap_or(topic))?;
            Some((log, alerts, dead_letters))
        }
        None => None,
    };
    let policy = args.source.policy();
    let windows = Windows::hopping(args.window, args.slide)?.allowed_lateness(args.allowed_lateness).emit_final();
    let (max_count, max_total_cents) = (args.max_count, args.max_total_cents);

    let results = tributary::run(&args.cluster, move |scope, _ctx| {
        let job = match &output {
            Some((log, _, dead_letters)) => log.job(scope).dead_letters_to(dead_letters),
            None => Job::without_commits(scope),
        };
        let txns = job.source(&source, SourceOptions { policy, ..Default::default() });
        let per_card = txns.records.key_by(|t: &Txn| t.card.clone()).window_aggregate(
            "CardWindows",
            windows,
            (Count, over(|t: &Txn| t.amount_cents, Sum)),
        );
        let alerts = per_card
            .results
            .as_collection()
            .filter(move |(_, (count, total))| *count > max_count || *total > max_total_cents)
            .map(|((card, window_start_ms), (count, total_cents))| Alert { card, window_start_ms, count, total_cents });
        job.dead_letter(per_card.late.map(|late| DeadLetter::late("CardWindows", &late)));
        match &output {
            Some((_, sink, _)) => {
                alerts.map(|a| ((a.card.clone(), a.window_start_ms), a)).sink_kafka("Alerts", sink, &job);
                (job.finish(), None)
            }
            None => (job.finish(), Some(alerts.collect_final())),
        }
    })?;
    for (alert, _) in results.into_iter().filter_map(|(_, printed)| printed).flatten() {
        println!("{},{},{},{}", alert.card, alert.window_start_ms, alert.count, alert.total_cents);
    }
    Ok(())
}
