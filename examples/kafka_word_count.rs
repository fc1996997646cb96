//! Counts words in the lines of a Kafka topic, incrementally, and writes the counts to an upsert topic.
//!
//! Words are counted exactly as `word_count` does (maximal runs of alphanumeric characters, lower-cased). Each
//! line's time is its record's Kafka timestamp. With `--output-topic`, every change of a count goes out, once
//! its time is complete, as an upsert: key = the word (UTF-8), value = the count as a JSON number; exactly once
//! across crashes, stops, reruns with more input and restarts at any layout (the job's commits live in
//! `--commit-log`, default `<output topic>.commits`; see docs/exactly-once.md). With `--changelog-topic` the
//! same counts also go to a changelog topic (`{"value": count, "diff": ±1, "time": t}` per change).
//! Without it, the final counts are printed as `word count` lines (with `--until-end`). Records that are not
//! UTF-8 go to the dead-letter topic (`--dead-letter-topic`, default `<topic>.dead-letters`) with their origin.
//! With `--lag-group`, positions are committed to that group for lag tools, only up to the records whose counts
//! (and dead letters) are written.
//!
//! ```sh
//! cargo run --release --example kafka_word_count -- --brokers 127.0.0.1:9092 --topic lines --until-end
//! cargo build --release --example kafka_word_count --bin tributary
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/kafka_word_count \
//!     --brokers 127.0.0.1:9092 --topic lines --output-topic word-counts --output-partitions 4 --until-end
//! ```
//!
//! Across machines: the same binary and host file on every host, process `I` started with
//! `kafka_word_count --brokers ... --topic lines --output-topic word-counts --workers 2 --processes 2 --process I
//! --hostfile hosts.txt`.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tributary::connectors::kafka::{
    CommitLog, Decoder, Delivery, EventTime, KafkaConfig, KafkaSink, KafkaSource, SinkDeadLetters, SinkFormat, SinkKafka,
};
use tributary::connectors::{SourceOptions, SourceStreams};
use tributary::differential_dataflow::AsCollection;
use tributary::operators::WatermarkPolicy;
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Concat, Exchange, Inspect, Probe};

/// Counts words in a topic's lines into an upsert topic.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
    /// Kafka brokers (host:port[,host:port]).
    #[arg(long)]
    brokers: String,
    /// Topic of lines (UTF-8 values).
    #[arg(long)]
    topic: String,
    /// Upsert topic for the counts; without it, final counts go to stdout.
    #[arg(long)]
    output_topic: Option<String>,
    /// Also write every change of a count to this changelog topic.
    #[arg(long, requires = "output_topic")]
    changelog_topic: Option<String>,
    /// Partitions of the output topics, if they are created.
    #[arg(long, default_value_t = 1)]
    output_partitions: i32,
    /// Dead-letter topic (default `<topic>.dead-letters`).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// The job's commit log topic (default `<output topic>.commits`, or `<topic>.word-count.commits`).
    #[arg(long)]
    commit_log: Option<String>,
    /// Write at least once instead of exactly once (faster; a restart writes everything again).
    #[arg(long)]
    at_least_once: bool,
    /// Also commit positions to this consumer group for lag tools: only up to records whose counts are written.
    #[arg(long)]
    lag_group: Option<String>,
    /// Read up to the end offsets seen at start, then exit.
    #[arg(long)]
    until_end: bool,
    /// A partition with nothing to read for this long stops holding the watermark back.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A librdkafka setting for every client, as `KEY=VALUE` (repeat for several), e.g.
    /// `message.timeout.ms=60000`.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
}

fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the cluster starts: opening topics and the commit log logs too.
    tributary::runtime::logging::init();
    let mut config = KafkaConfig::new(args.brokers.clone())?;
    for option in &args.kafka_options {
        let (key, value) = option.split_once('=').with_context(|| format!("--kafka-option {option}: expected KEY=VALUE"))?;
        config = config.set(key, value)?;
    }
    let mut source =
        KafkaSource::new(config.clone(), &[args.topic.as_str()], Decoder::utf8(), EventTime::KafkaTimestamp)?.until_end(args.until_end);
    if let Some(group) = &args.lag_group {
        source = source.commit_positions_to(group);
    }
    let commit_log = args.commit_log.clone().unwrap_or_else(|| match &args.output_topic {
        Some(topic) => format!("{topic}.commits"),
        None => format!("{}.word-count.commits", args.topic),
    });
    // Every process reads the job's last commit before the cluster starts.
    let log = CommitLog::open(config.clone(), &commit_log).with_context(|| format!("opening the commit log {commit_log}"))?;
    let delivery = if args.at_least_once { Delivery::AtLeastOnce } else { Delivery::ExactlyOnce };
    let counts_sink = |topic: &String, format: SinkFormat| {
        KafkaSink::with_encoders(config.clone(), topic, |w: &String| w.as_bytes().to_vec(), |n: &i64| n.to_string().into_bytes())
            .partitions(args.output_partitions)
            .format(format)
            .delivery(delivery)
            .open(&log)
            .with_context(|| format!("opening the output topic {topic}"))
    };
    let sink = args.output_topic.as_ref().map(|topic| counts_sink(topic, SinkFormat::Upsert)).transpose()?;
    let changelog = args.changelog_topic.as_ref().map(|topic| counts_sink(topic, SinkFormat::Changelog)).transpose()?;
    let dead_letter_topic = args.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dead-letters", args.topic));
    let dead_letters = KafkaSink::dead_letters(config, &dead_letter_topic)
        .delivery(delivery)
        .open(&log)
        .with_context(|| format!("opening {dead_letter_topic}"))?;
    let policy = WatermarkPolicy { idle_timeout: Some(args.idle_timeout), ..Default::default() };

    let counts = tributary::execute(&args.cluster, move |worker, _ctx| {
        let printed = Rc::new(RefCell::new(Vec::new()));
        let collected = Rc::clone(&printed);
        let done = worker.dataflow::<u64, _, _>(|scope| {
            let job = log.job(scope);
            let SourceStreams { records, dead_letters: bad, .. } = job.source(&source, SourceOptions { policy, ..Default::default() });
            let counts = records
                .flat_map(|(line, time, diff)| words(&line.value).map(move |word| (word, time, diff)).collect::<Vec<_>>())
                .as_collection()
                .count()
                .map(|(word, count)| (word, count as i64));
            let mut refused = Vec::new();
            let mut probes = Vec::new();
            match &sink {
                Some(sink) => refused.push(counts.clone().sink_kafka("WordCounts", sink, &job).refused),
                None => {
                    let printing = counts.inner.clone().exchange(|_| 0).inspect(move |update| collected.borrow_mut().push(update.clone()));
                    probes.push(printing.probe().0);
                }
            }
            if let Some(changelog) = &changelog {
                refused.push(counts.sink_kafka("WordCountChanges", changelog, &job).refused);
            }
            let bad = refused.into_iter().fold(bad, |all, more| all.concat(more));
            bad.sink_dead_letters("DeadLetters", &dead_letters, &job);
            probes.push(job.finish());
            probes
        });
        worker.step_or_park_while(None, || done.iter().any(|p| !p.done()));
        let mut totals = std::collections::BTreeMap::new();
        for ((word, count), _time, diff) in printed.borrow_mut().drain(..) {
            *totals.entry((word, count)).or_insert(0isize) += diff;
        }
        totals.into_iter().filter(|(_, d)| *d > 0).map(|((word, count), _)| (word, count)).collect::<Vec<_>>()
    })?;
    let mut out = std::io::stdout().lock();
    for (word, count) in counts.into_iter().flatten() {
        writeln!(out, "{word} {count}").context("writing results")?;
    }
    Ok(())
}
