//! Log aggregation: per service and 1-minute tumbling event-time window, how many logs and how many errors.
//!
//! Log lines are JSON (`{"service":"api","level":"ERROR","ts_ms":1000,"message":"..."}`) on a Kafka topic
//! (`--topic`) or in JSON-lines / CSV files (`--input`). Each window's counts are emitted when the window ends;
//! a log that arrives late but within `--allowed-lateness` of its window's end corrects the window (the old
//! counts retracted, the new ones added); logs later than that go to the dead letters, as do malformed lines.
//!
//! With `--output-topic` the counts go to that Kafka topic exactly once as upserts (key `[service, window_start]`,
//! value `{"total":..,"errors":..}`; a correction is a newer value for the key), the dead letters to
//! `--dead-letter-topic` (default `<input topic>.dead-letters`). Without it, on bounded input (files, or Kafka
//! with `--until-end`), the final counts are printed sorted as `service,window_start_ms,total,errors` once the
//! input is done, and the dead letters are logged.
//!
//! ```sh
//! cargo run --release --example log_aggregation -- --input logs.jsonl --workers 2
//! cargo run --release --example log_aggregation -- --brokers 127.0.0.1:9092 --topic logs --until-end
//! cargo run --release --example log_aggregation -- --brokers 127.0.0.1:9092 --topic logs --output-topic log-counts
//! cargo build --release --bin tributary --example log_aggregation
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/log_aggregation --input logs/
//! ```

use clap::Parser;
use std::path::PathBuf;
use tributary::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Log {
    service: String,
    level: String,
    ts_ms: u64,
    message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct LogCounts {
    total: i64,
    errors: i64,
}

/// Counts logs and errors per service and minute.
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
    /// JSON-lines or CSV files (or directories of them) of logs.
    #[arg(long, num_args = 1.., required_unless_present = "topic", conflicts_with = "topic")]
    input: Vec<PathBuf>,
    /// Kafka topic of JSON logs.
    #[arg(long)]
    topic: Option<String>,
    /// Write the counts to this Kafka topic, exactly once, as upserts, instead of printing them.
    #[arg(long)]
    output_topic: Option<String>,
    /// How long after a window's end a late log still corrects it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let event_time = |l: &Log| Ok(l.ts_ms);
    let source: Box<dyn Source<Item = Log>> = match &args.topic {
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
            let counts = KafkaSink::<(String, u64), LogCounts>::json(kafka.clone(), topic).open(&log)?;
            let dead_letters = args.job.open_dead_letters(&log, args.topic.as_deref().unwrap_or(topic))?;
            Some((log, counts, dead_letters))
        }
        None => None,
    };
    let policy = args.source.policy();
    let windows = Windows::tumbling(Duration::from_secs(60))?.allowed_lateness(args.allowed_lateness);

    let results = tributary::run(&args.cluster, move |scope, _ctx| {
        let job = match &output {
            Some((log, _, dead_letters)) => log.job(scope).dead_letters_to(dead_letters),
            None => Job::without_commits(scope),
        };
        let logs = job.source(&source, SourceOptions { policy, ..Default::default() });
        let per_service = logs.records.key_by(|l: &Log| l.service.clone()).window_aggregate(
            "ServiceMinutes",
            windows,
            (Count, over(|l: &Log| l.level == "ERROR", Sum)),
        );
        let counts = per_service.results.as_collection().map(|(key, (total, errors))| (key, LogCounts { total, errors }));
        job.dead_letter(per_service.late.map(|late| DeadLetter::late("ServiceMinutes", &late)));
        match &output {
            Some((_, sink, _)) => {
                counts.sink_kafka("LogCounts", sink, &job);
                (job.finish(), None)
            }
            None => (job.finish(), Some(counts.collect_final())),
        }
    })?;
    for (((service, window_start_ms), counts), _) in results.into_iter().filter_map(|(_, printed)| printed).flatten() {
        println!("{service},{window_start_ms},{},{}", counts.total, counts.errors);
    }
    Ok(())
}
