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
//! restarts: key `["<key>", <window_start_ms>]`, value the count; malformed and too-late records go to the
//! dead-letter topic (`<topic>.dead-letters` by default) with the reason and the original bytes.
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
use tributary::operators::aggregate::Count;
use tributary::operators::window::{LateRecord, WindowAggregate, Windows};
use tributary::operators::{Timed, WatermarkPolicy};
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Concat, Exchange, Inspect, Probe};

/// Counts events per key in tumbling event-time windows.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
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
    /// Dead-letter topic, with --output-topic (default `<first topic>.dead-letters`).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// The job's commit log topic, with --output-topic (default `<output topic>.commits`).
    #[arg(long)]
    commit_log: Option<String>,
    /// Kafka: read up to the end offsets seen at start, print final counts, and exit.
    #[arg(long)]
    until_end: bool,
    /// Window size.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How far out of order records may arrive and still be on time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_out_of_orderness: Duration,
    /// How long after a window's end a late record may still correct it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// A partition with nothing to read for this long stops holding the watermark back.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Records stamped further ahead of the wall clock than this go to the dead letters instead of moving the
    /// watermark into the future.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    max_ahead: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
struct Event {
    key: String,
    ts_ms: u64,
}

enum Input {
    Files(FileSource<Event>),
    Kafka(KafkaSource<Event>),
}

impl Input {
    /// The source, built in the job when there is one (its commits then carry the source's positions).
    fn build<'scope>(
        &self,
        job: Option<&Job<'scope>>,
        scope: tributary::timely::dataflow::Scope<'scope, u64>,
        options: SourceOptions,
    ) -> SourceStreams<'scope, Event> {
        match (self, job) {
            (Input::Files(source), Some(job)) => job.source(source, options),
            (Input::Kafka(source), Some(job)) => job.source(source, options),
            (Input::Files(source), None) => source.build(scope, options),
            (Input::Kafka(source), None) => Source::build(source, scope, options),
        }
    }
}

/// The Kafka outputs: counts, dead letters, and the job's commit log.
struct Sinks {
    log: CommitLog,
    counts: KafkaSink<(String, u64), isize>,
    dead: KafkaSink<String, DeadLetter>,
}

/// What a worker hands back: final counts (bounded runs, worker 0 only) and what it routed away.
struct Outcome {
    counts: Vec<((String, u64), isize)>,
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
    let event_time = |e: &Event| Ok(e.ts_ms);
    let input = match (&args.csv, &args.brokers) {
        (Some(path), _) => Input::Files(FileSource::new(vec![path.clone()], event_time)?),
        (None, Some(brokers)) => {
            let topics: Vec<&str> = args.topic.iter().map(String::as_str).collect();
            let config = KafkaConfig::new(brokers.clone())?;
            Input::Kafka(KafkaSource::new(config, &topics, Decoder::json(), EventTime::extract(event_time))?.until_end(args.until_end))
        }
        (None, None) => anyhow::bail!("give --csv or --brokers"),
    };
    let bounded = matches!(input, Input::Files(_)) || args.until_end;
    let sinks = match (&args.output_topic, &args.brokers) {
        (Some(topic), Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let first = args.topic.first().map_or("events", String::as_str);
            let dead = args.dead_letter_topic.clone().unwrap_or_else(|| format!("{first}.dead-letters"));
            let commit_log = args.commit_log.clone().unwrap_or_else(|| format!("{topic}.commits"));
            let log = CommitLog::open(config.clone(), &commit_log).with_context(|| format!("opening the commit log {commit_log}"))?;
            let counts =
                KafkaSink::json(config.clone(), topic).partitions(args.output_partitions).open(&log).context("opening the output topic")?;
            let dead = KafkaSink::dead_letters(config, dead).open(&log).context("opening the dead-letter topic")?;
            Some(Sinks { log, counts, dead })
        }
        _ => None,
    };
    let policy = WatermarkPolicy {
        max_out_of_orderness_ms: args.max_out_of_orderness.as_millis() as u64,
        idle_timeout: Some(args.idle_timeout),
        max_lateness_ms: None,
        max_ahead_ms: Some(args.max_ahead.as_millis() as u64),
    };

    let outcomes = tributary::execute(&args.cluster, move |worker, _ctx| {
        let collected = Rc::new(RefCell::new(Vec::new()));
        let too_late = Rc::new(RefCell::new(0usize));
        let dead_letters = Rc::new(RefCell::new(0usize));
        let (sink, late_count, dead_count) = (Rc::clone(&collected), Rc::clone(&too_late), Rc::clone(&dead_letters));
        let options = SourceOptions { policy, ..Default::default() };
        let probes = worker.dataflow::<u64, _, _>(|scope| {
            let job = sinks.as_ref().map(|sinks| sinks.log.job(scope));
            let SourceStreams { records, dead_letters, .. } = input.build(job.as_ref(), scope, options);
            let bad = dead_letters.clone();
            dead_letters.inspect(move |letter: &DeadLetter| {
                *dead_count.borrow_mut() += 1;
                tracing::warn!(
                    source = letter.source,
                    partition = letter.partition,
                    offset = letter.offset,
                    "dead letter: {}",
                    letter.reason
                );
            });
            let windows = records
                .map(|(event, time, diff)| (Timed { event_time: event.event_time, value: (event.value.key, ()) }, time, diff))
                .window_aggregate("WindowedCount", Windows::Tumbling { size_ms: window }, lateness, Count);
            windows.late.clone().inspect(move |late: &LateRecord<(String, ())>| {
                *late_count.borrow_mut() += 1;
                tracing::warn!(
                    key = late.record.0,
                    ts_ms = late.event_time,
                    arrived_at = late.arrived_at,
                    "record later than the allowed lateness"
                );
            });
            if let (Some(sinks), Some(job)) = (&sinks, &job) {
                let late = windows.late.map(|late| DeadLetter::late("WindowedCount", &late));
                let counts = windows.results.as_collection().sink_kafka("Counts", &sinks.counts, job);
                bad.concat(late).concat(counts.refused).sink_dead_letters("DeadLetters", &sinks.dead, job);
                return vec![job.finish()];
            }
            let printed = windows
                .results
                .exchange(|_| 0)
                .inspect(move |(((key, start), count), _time, diff)| {
                    if bounded {
                        sink.borrow_mut().push(((key.clone(), *start), count * diff));
                    } else if *diff > 0 {
                        // Unbounded: each window's count once it closes, and again if a late record corrects it.
                        let _ = writeln!(std::io::stdout(), "{key},{start},{count}");
                    }
                })
                .probe()
                .0;
            vec![printed]
        });
        worker.step_or_park_while(None, || probes.iter().any(|p| !p.done()));
        let mut totals: BTreeMap<(String, u64), isize> = BTreeMap::new();
        for (window, count) in collected.borrow_mut().drain(..) {
            *totals.entry(window).or_default() += count;
        }
        let counts = totals.into_iter().filter(|(_, c)| *c != 0).collect();
        let (too_late, dead_letters) = (*too_late.borrow(), *dead_letters.borrow());
        Outcome { counts, too_late, dead_letters }
    })?;

    let mut out = std::io::stdout().lock();
    let (mut too_late, mut dead) = (0, 0);
    for outcome in outcomes {
        for ((key, start), count) in outcome.counts {
            writeln!(out, "{key},{start},{count}").context("writing results")?;
        }
        too_late += outcome.too_late;
        dead += outcome.dead_letters;
    }
    if too_late + dead > 0 {
        tracing::warn!("this process routed away {too_late} record(s) later than the allowed lateness and {dead} dead letter(s)");
    }
    Ok(())
}
