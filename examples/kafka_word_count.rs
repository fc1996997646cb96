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
//! (and dead letters) are written. With `--checkpoint-dir`, the counts are checkpointed and a restart reads only
//! the lines after the newest checkpoint.
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

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tributary::prelude::*;

/// Counts words in a topic's lines into an upsert topic.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    source: SourceArgs,
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
    /// Also commit positions to this consumer group for lag tools: only up to records whose counts are written.
    #[arg(long)]
    lag_group: Option<String>,
}

fn words(line: &str) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tributary::runtime::logging::init(); // before the cluster starts: opening topics logs too
    let config = args.kafka.config()?;
    let source =
        KafkaSource::new(config.clone(), &[&args.topic], Decoder::utf8(), EventTime::KafkaTimestamp)?.until_end(args.source.until_end);
    let source = args.lag_group.iter().fold(source, |source, group| source.commit_positions_to(group));
    // The job is named after its output; every process reads its last commit before the cluster starts.
    let job_name = args.output_topic.clone().unwrap_or_else(|| format!("{}.word-count", args.topic));
    let log = args.job.open_commit_log(&config, &job_name).context("opening the commit log")?;
    let counts_sink = |topic: &String, format| {
        let sink = KafkaSink::<String, i64>::with_encoders(config.clone(), topic, encode::utf8, encode::display);
        sink.partitions(args.output_partitions).format(format).open(&log).with_context(|| format!("opening the output topic {topic}"))
    };
    let sink = args.output_topic.as_ref().map(|topic| counts_sink(topic, SinkFormat::Upsert)).transpose()?;
    let changelog = args.changelog_topic.as_ref().map(|topic| counts_sink(topic, SinkFormat::Changelog)).transpose()?;
    let dead_letters = args.job.open_dead_letters(&log, &args.topic).context("opening the dead-letter topic")?;
    let policy = args.source.policy();

    let results = tributary::run(&args.cluster, move |scope, _| {
        let job = log.job(scope).dead_letters_to(&dead_letters);
        let lines = job.source(&source, SourceOptions { policy, ..Default::default() });
        // `aggregate`, not differential's `count`: with `--checkpoint-dir` its counts are part of the checkpoints.
        let counts =
            lines.records.as_collection().flat_map(|line| words(&line.value).into_iter().map(|word| (word, ()))).aggregate("Counts", Count);
        for (name, sink) in [("WordCounts", &sink), ("WordCountChanges", &changelog)] {
            sink.iter().for_each(|sink| drop(counts.clone().sink_kafka(name, sink, &job)));
        }
        (job.finish(), sink.is_none().then(|| counts.collect_final()))
    })?;
    let mut out = std::io::stdout().lock();
    for ((word, count), _) in results.into_iter().flat_map(|(_, counts)| counts.into_iter().flatten()) {
        writeln!(out, "{word} {count}").context("writing results")?;
    }
    Ok(())
}
