//! Counts events per key in tumbling event-time windows, from CSV files or Kafka topics.
//!
//! Input records are `key,ts_ms` rows (CSV with a header line), or JSON values `{"key": "...", "ts_ms": N}` on
//! Kafka. Each prints `key,window_start_ms,count` lines: with bounded input (files, or Kafka with
//! `--until-end`) one line per window with its final value, sorted, once the input is done; with unbounded Kafka
//! input one line each time a window closes (and again if a late record within `--allowed-lateness` corrects
//! it). Records later than that are counted and reported on stderr, never silently dropped; so are malformed
//! records. The output is byte-identical for any number of workers and processes.
//!
//! With `--output-topic` (Kafka input), the counts go to an upsert topic instead, exactly once across crashes and
//! restarts (the job's commits in `--commit-log`, default `<output topic>.commits`): key
//! `["<key>", <window_start_ms>]`, value the count; malformed and too-late records go to the dead-letter topic
//! (`<first topic>.dead-letters` by default) with the reason and their origin. Without it, each dead letter is
//! logged with its reason and origin.
//!
//! Windows are counted by `tributary::operators::window`, which emits each window once it closes and releases
//! its state once the allowed lateness has passed too.
//!
//! ```sh
//! cargo run --release --example windowed_count -- --csv events.csv --window 10s --max-out-of-orderness 5s
//! cargo run --release --example windowed_count -- --workers 2 --brokers 127.0.0.1:9092 --topic events --until-end
//! cargo build --release --example windowed_count --bin tributary
//! target/release/tributary launch --processes 2 --workers 2 -- \
//!     target/release/examples/windowed_count --brokers 127.0.0.1:9092 --topic events --until-end
//! ```
//!
//! Across machines: the same binary and host file on every host, process `I` started with
//! `windowed_count --brokers ... --topic events --workers 2 --processes 2 --process I --hostfile hosts.txt`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tributary::prelude::*;

/// Counts events per key in tumbling event-time windows.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    job: JobArgs,
    /// CSV file, or directory of CSV files, with columns `key,ts_ms`.
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "brokers", required_unless_present = "brokers")]
    csv: Option<PathBuf>,
    /// Kafka brokers (host:port[,host:port]); records are JSON `{"key": ..., "ts_ms": ...}`.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// Kafka topic to read; repeat for several.
    #[arg(long)]
    topic: Vec<String>,
    /// Kafka topic for the counts (upserts by key and window) instead of stdout.
    #[arg(long, requires = "brokers")]
    output_topic: Option<String>,
    /// Partitions of the output topic, if it is created.
    #[arg(long, default_value_t = 4)]
    output_partitions: i32,
    /// Window size.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long after a window's end a late record may still correct it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct Event {
    key: String,
    ts_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tributary::runtime::logging::init(); // before the cluster starts: opening topics logs too
    let window = Windows::tumbling(args.window).context("--window")?.allowed_lateness(args.allowed_lateness);
    let event_time = |e: &Event| Ok(e.ts_ms);
    let (input, kafka): (Box<dyn Source<Item = Event>>, _) = match (&args.csv, &args.brokers) {
        (Some(path), _) => (Box::new(FileSource::new(vec![path.clone()], event_time)?), None),
        (None, Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let topics: Vec<&str> = args.topic.iter().map(String::as_str).collect();
            let source = KafkaSource::new(config.clone(), &topics, Decoder::json(), event_time)?;
            (Box::new(source.until_end(args.source.until_end)), Some(config))
        }
        (None, None) => anyhow::bail!("give --csv or --brokers"),
    };
    let bounded = args.csv.is_some() || args.source.until_end;
    let outputs = match (&args.output_topic, &kafka) {
        (Some(topic), Some(config)) => {
            let log = args.job.open_commit_log(config, topic).context("opening the commit log")?;
            let counts = KafkaSink::json(config.clone(), topic).partitions(args.output_partitions);
            let counts = counts.open(&log).context("opening the output topic")?;
            let dead = args.job.open_dead_letters(&log, args.topic.first().map_or("events", String::as_str));
            Some((counts, dead.context("opening the dead-letter topic")?, log))
        }
        _ => None,
    };
    let policy = args.source.policy();

    let results = tributary::run(&args.cluster, move |scope, _| {
        let job = match &outputs {
            Some((_, dead, log)) => log.job(scope).dead_letters_to(dead),
            None => Job::without_commits(scope),
        };
        let events = job.source(&input, SourceOptions { policy, ..Default::default() });
        let windows = events.records.map_timed(|e| (e.key, ())).window_aggregate("WindowedCount", window, Count);
        job.dead_letter(windows.late.map(|late| DeadLetter::late("WindowedCount", &late)));
        if let Some((counts, _, _)) = &outputs {
            windows.results.as_collection().sink_kafka("Counts", counts, &job);
            return (job.finish(), None, None);
        }
        if bounded {
            return (job.finish(), None, Some(windows.results.collect_final()));
        }
        // Unbounded: each window's count once it closes, and again if a late record corrects it.
        let printed = windows.results.exchange(|_| 0).inspect(|(((key, start), count), _, diff)| {
            if *diff > 0 {
                let _ = writeln!(std::io::stdout(), "{key},{start},{count}");
            }
        });
        (job.finish(), Some(printed.probe().0), None)
    })?;
    let mut out = std::io::stdout().lock();
    for (((key, start), count), _) in results.into_iter().flat_map(|(_, _, counts)| counts.into_iter().flatten()) {
        writeln!(out, "{key},{start},{count}").context("writing results")?;
    }
    Ok(())
}
