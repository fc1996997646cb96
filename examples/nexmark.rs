//! Nexmark q0-q8: in memory from the generator, or from Kafka topics; prints throughput, a checksum of the
//! result (the same for any number of workers and processes) and peak memory.
//!
//! In memory, each worker generates the logical partitions it owns (`--partitions`, 8 by default; partition
//! `p` holds the events `n` with `n % partitions == p`) and feeds them with the sources' time model (watermark =
//! event time - 4 s per partition). From Kafka, a topic loaded with `--load` holds the same partitions, so the
//! checksum is the same. Output: one line on stdout from process 0,
//! `query=q5 events=1000000 seconds=0.61 events/s=1639344 rows=1234 checksum=<hex> late=0 peak_rss_mib=41.2`.
//!
//! ```sh
//! cargo run --release --example nexmark -- --query q5 --events 10000000 --workers 2
//! cargo run --release --example nexmark -- --load --brokers 127.0.0.1:9092 --topic nexmark --events 1000000
//! cargo run --release --example nexmark -- --query q1 --brokers 127.0.0.1:9092 --topic nexmark --output-topic q1-out
//! cargo run --release --example nexmark -- --dump events.jsonl --events 1000000     # for the Python peers
//! cargo build --release --example nexmark --bin tributary
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/nexmark --query q8
//! ```
//!
//! Across machines: the same binary and host file on every host, process `I` started with
//! `nexmark --query q8 --workers 2 --processes 2 --process I --hostfile hosts.txt`.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary::connectors::kafka::{
    CommitLog, Decoder, EventTime, KafkaConfig, KafkaSink, KafkaSource, SinkFormat, SinkKafka, create_topic,
};
use tributary::connectors::{Source, SourceOptions, SourceStreams};
use tributary::operators::PartitionClock;
use tributary::operators::Timed;
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Exchange, Input, Inspect, Probe};
use tributary_nexmark::{Checksum, Config, Event, Query, Row};
use tributary_testkit::peak_rss_mib;

/// Runs a Nexmark query.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
    /// The query: q0 .. q8.
    #[arg(long, default_value = "q0")]
    query: Query,
    /// Events to generate (in memory, --load, --dump).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Logical partitions of the event stream (Kafka partitions with --load).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// The generator's disorder: events shuffled in groups of this size (1000: up to ~100 ms out of order).
    #[arg(long, default_value_t = 1_000)]
    out_of_order_group_size: usize,
    /// In memory: feed this many events per second (wall clock), with event time advancing at the same rate, and
    /// report the latency from the input passing a time to the result passing it (beyond the watermark delay).
    #[arg(long)]
    rate: Option<usize>,
    /// Event time advances by this many events per second (default: --rate, or 10,000). With a lower rate the
    /// generator's disorder spans more event time: 500-event groups at 25 events/s reach 20 s, well past the 4 s
    /// watermark delay, so the windowed queries find late records.
    #[arg(long)]
    event_rate: Option<usize>,
    /// Event time of the first event (epoch ms).
    #[arg(long, default_value_t = 1_700_000_000_000)]
    base_time: u64,
    /// Read the events from Kafka instead of generating them (to the end offsets seen at start).
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// The events topic.
    #[arg(long)]
    topic: Option<String>,
    /// Kafka: stop once this process has read this many events (for brokers whose end offsets are inexact;
    /// without it, read to the end offsets seen at start).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Write the generated events to --topic (created with --partitions partitions) and exit.
    #[arg(long, requires = "brokers")]
    load: bool,
    /// Write the generated events to this JSON-lines file and exit.
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
    /// Run the hand-written differential-only version instead (the benchmark's peer; q1, q3, q5).
    #[arg(long)]
    differential: bool,
    /// Also write the result's rows, consolidated, to DIR/rows-<worker>.txt (`<multiplicity>\t<row>` per line),
    /// for a check that does not go through the checksum.
    #[arg(long, value_name = "DIR")]
    rows_dir: Option<PathBuf>,
    /// Write the result's changelog to this topic (exactly once).
    #[arg(long, requires = "brokers")]
    output_topic: Option<String>,
}

/// What each worker hands back: its part of the checksum, late records, and events it fed.
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Part {
    sum: u64,
    rows: i64,
    late: u64,
    events: u64,
    /// Latency percentiles (µs) seen by this worker with --rate: p50, p99, max.
    latency: [u64; 3],
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the cluster starts: opening topics and the commit log logs too.
    tributary::runtime::logging::init();
    let config = Config {
        events: args.events,
        partitions: args.partitions.max(1),
        base_time: args.base_time,
        out_of_order_group_size: args.out_of_order_group_size.max(1),
        rate: args.event_rate.or(args.rate).unwrap_or(Config::default().rate).max(1),
    };
    let rate = args.rate;
    if let Some(path) = &args.dump {
        return dump(&config, path);
    }
    if args.load {
        let (brokers, topic) = (args.brokers.as_deref().unwrap_or_default(), args.topic.as_deref().context("--load needs --topic")?);
        return load(&config, brokers, topic);
    }
    let query = args.query;
    let differential = args.differential;
    anyhow::ensure!(!differential || matches!(query, Query::Q1 | Query::Q3 | Query::Q5), "--differential has q1, q3 and q5 only");
    let source = match (&args.brokers, &args.topic) {
        (Some(brokers), Some(topic)) => Some(
            KafkaSource::new(
                KafkaConfig::new(brokers.clone())?,
                &[topic.as_str()],
                Decoder::json(),
                EventTime::extract(|e: &Event| Ok(e.date_time())),
            )?
            .until_end(args.stop_after.is_none()),
        ),
        _ => None,
    };
    let stop_after = args.stop_after;
    let read = Arc::new(AtomicU64::new(0));
    let sink = match (&args.output_topic, &args.brokers) {
        (Some(topic), Some(brokers)) => {
            let config = KafkaConfig::new(brokers.clone())?;
            let log = CommitLog::open(config.clone(), format!("{topic}.commits")).with_context(|| format!("opening {topic}.commits"))?;
            let sink = KafkaSink::<String, Row>::json(config, topic)
                .partitions(4)
                .format(SinkFormat::Changelog)
                .open(&log)
                .with_context(|| format!("opening {topic}"))?;
            Some((log, sink))
        }
        _ => None,
    };

    let rows_dir = args.rows_dir.clone();
    let started = Instant::now();
    let parts = tributary::execute(&args.cluster, move |worker, ctx| {
        let part = Rc::new(RefCell::new(Part::default()));
        let listed: Rc<RefCell<std::collections::BTreeMap<String, isize>>> = Rc::default();
        let (list, listing) = (rows_dir.is_some().then(|| Rc::clone(&listed)), rows_dir.clone());
        let (digest, late_count) = (Rc::clone(&part), Rc::clone(&part));
        let (index, peers) = (worker.index() as u32, worker.peers() as u32);
        let (mut input, probes) = worker.dataflow::<u64, _, _>(|scope| {
            let job = sink.as_ref().map(|(log, _)| log.job(scope));
            let (input, events) = match &source {
                Some(source) => {
                    // Generated event times may run ahead of the wall clock (a fixed base time): no far-ahead limit.
                    let policy = tributary_nexmark::policy();
                    let options = SourceOptions { policy, ..Default::default() };
                    let SourceStreams { records, .. } = source.build_in(scope, job.as_ref(), options);
                    let counted = Rc::clone(&part);
                    let (read, shutdown) = (Arc::clone(&read), ctx.shutdown.clone());
                    let records = records.inspect(move |_| {
                        counted.borrow_mut().events += 1;
                        if stop_after.is_some_and(|n| read.fetch_add(1, Ordering::Relaxed) + 1 == n) {
                            shutdown.request();
                        }
                    });
                    (None, records)
                }
                None => {
                    let (input, events) = scope.new_input::<Vec<(Timed<Event>, u64, isize)>>();
                    (Some(input), events)
                }
            };
            let rows = if differential {
                tributary_nexmark::differential::build(query, events).unwrap_or_else(|| panic!("no differential-only version of {query}"))
            } else {
                let result = tributary_nexmark::build(query, events);
                result.late.inspect(move |_| late_count.borrow_mut().late += 1);
                result.rows
            };
            let rows = rows.inner.inspect(move |(row, _time, diff)| {
                let mut part = digest.borrow_mut();
                let mut checksum = Checksum { sum: part.sum, rows: part.rows };
                checksum.add(row, *diff);
                (part.sum, part.rows) = (checksum.sum, checksum.rows);
                if let Some(list) = &list {
                    *list.borrow_mut().entry(format!("{row:?}")).or_default() += *diff;
                }
            });
            let mut probes = vec![rows.clone().probe().0];
            if let (Some((_, sink)), Some(job)) = (&sink, &job) {
                let keyed = rows.map(|(row, time, diff)| ((format!("{:016x}", row_hash(&row)), row), time, diff));
                let written = tributary::differential_dataflow::AsCollection::as_collection(keyed).sink_kafka("NexmarkOutput", sink, job);
                written.refused.inspect(|letter| tracing::warn!("{}", letter.reason));
                probes.push(job.finish());
            }
            (input, probes)
        });
        if let Some(input) = input.as_mut() {
            // Generate the partitions this worker owns, round robin, with their clocks (the operators' time model,
            // as a source applies it).
            let policy = tributary_nexmark::policy();
            let mut partitions: Vec<_> = (0..config.partitions)
                .filter(|p| p % peers == index)
                .map(|p| (config.partition(p).peekable(), PartitionClock::default()))
                .collect();
            let mut fed = 0u64;
            let batch = if rate.is_some() { 32 } else { 256 };
            let paced = rate.map(|r| (Instant::now(), r as f64 / peers as f64));
            // With --rate: when the input passed each time, to measure how long the result takes to pass it.
            let mut passed: std::collections::VecDeque<(u64, Instant)> = std::collections::VecDeque::new();
            let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
            let output = probes[0].clone();
            let settle = |passed: &mut std::collections::VecDeque<(u64, Instant)>, latency: &mut hdrhistogram::Histogram<u64>| {
                while let Some(&(time, at)) = passed.front() {
                    if output.less_equal(&time) {
                        break;
                    }
                    latency.saturating_record(at.elapsed().as_micros() as u64);
                    passed.pop_front();
                }
            };
            while !partitions.is_empty() {
                if let Some((start, per_second)) = paced {
                    let due = start + Duration::from_secs_f64(fed as f64 / per_second);
                    while Instant::now() < due {
                        worker.step_or_park(Some(due.saturating_duration_since(Instant::now())));
                        settle(&mut passed, &mut latency);
                    }
                }
                for (events, clock) in partitions.iter_mut() {
                    for (_, event) in events.by_ref().take(batch) {
                        let event_time = event.date_time();
                        // No maximum lateness, and a partition clock does not look at the wall clock: every event is kept.
                        let time = clock.observe(event_time, &policy).time();
                        input.send((Timed::new(event_time, event), time, 1));
                        fed += 1;
                    }
                }
                partitions.retain_mut(|(events, _)| events.peek().is_some());
                if let Some(watermark) = partitions.iter().map(|(_, clock)| clock.watermark()).min()
                    && watermark > *input.time()
                {
                    input.advance_to(watermark);
                    if paced.is_some() {
                        passed.push_back((watermark - 1, Instant::now()));
                    }
                }
                worker.step();
                settle(&mut passed, &mut latency);
            }
            part.borrow_mut().events += fed;
            if paced.is_some() {
                let end = Instant::now();
                input.advance_to(u64::MAX);
                passed.push_back((u64::MAX - 1, end));
                while probes[0].less_than(&u64::MAX) {
                    worker.step();
                    settle(&mut passed, &mut latency);
                }
                part.borrow_mut().latency = [latency.value_at_quantile(0.5), latency.value_at_quantile(0.99), latency.max()];
            }
        }
        drop(input);
        worker.step_or_park_while(None, || probes.iter().any(|p| !p.done()));
        if let Some(dir) = &listing {
            let path = dir.join(format!("rows-{}.txt", worker.index()));
            let text: String = listed.borrow().iter().filter(|(_, n)| **n != 0).map(|(row, n)| format!("{n}\t{row}\n")).collect();
            if let Err(e) = std::fs::write(&path, text) {
                tracing::error!("cannot write {}: {e}", path.display());
            }
        }
        let mine = *part.borrow();
        // Worker 0 adds up every worker's part, over the network if need be.
        let gathered = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&gathered);
        let (mut parts, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (parts, stream) = scope.new_input::<Vec<Part>>();
            (parts, stream.exchange(|_| 0).inspect(move |p| sink.borrow_mut().push(*p)).probe().0)
        });
        parts.send(mine);
        drop(parts);
        worker.step_or_park_while(None, || !probe.done());
        gathered.borrow().iter().fold(None, |acc: Option<Part>, p| {
            let mut t = acc.unwrap_or_default();
            t.sum = t.sum.wrapping_add(p.sum);
            t.rows += p.rows;
            t.late += p.late;
            t.events += p.events;
            for (mine, theirs) in t.latency.iter_mut().zip(p.latency) {
                *mine = (*mine).max(theirs);
            }
            Some(t)
        })
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(total) = parts.into_iter().flatten().next() {
        let checksum = Checksum { sum: total.sum, rows: total.rows };
        let latency = match rate {
            Some(_) => {
                let ms = |us: u64| us as f64 / 1000.0;
                format!(
                    " latency_p50_ms={:.2} latency_p99_ms={:.2} latency_max_ms={:.2}",
                    ms(total.latency[0]),
                    ms(total.latency[1]),
                    ms(total.latency[2])
                )
            }
            None => String::new(),
        };
        writeln!(
            std::io::stdout(),
            "query={query} events={} seconds={seconds:.3} events/s={:.0} rows={} checksum={checksum} late={} peak_rss_mib={:.1}{latency}",
            total.events,
            total.events as f64 / seconds,
            total.rows,
            total.late,
            peak_rss_mib()
        )?;
    }
    Ok(())
}

fn row_hash(row: &Row) -> u64 {
    let mut checksum = Checksum::default();
    checksum.add(row, 1);
    checksum.sum
}

/// Writes the events as JSON lines, in sequence order.
fn dump(config: &Config, path: &PathBuf) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for (_, event, _) in config.all() {
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!("wrote {} events to {}", config.events, path.display());
    Ok(())
}

/// Writes the events to `topic`, partition `n % partitions`, in sequence order per partition.
fn load(config: &Config, brokers: &str, topic: &str) -> anyhow::Result<()> {
    create_topic(&KafkaConfig::new(brokers)?, topic, config.partitions as i32)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .context("cannot create a producer")?;
    let started = Instant::now();
    for (partition, event, _) in config.all() {
        let value = serde_json::to_vec(&event)?;
        let mut record = BaseRecord::<(), _>::to(topic).partition(partition as i32).payload(&value).timestamp(event.date_time() as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300)).context("flushing the events")?;
    eprintln!(
        "loaded {} events into {topic} ({} partitions) in {:.1} s",
        config.events,
        config.partitions,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
