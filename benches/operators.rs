//! The windowed count and the windowed join, in memory: events/s, per-epoch latency and peak memory of
//! Tributary's operators against the hand-written differential pipeline for the same computation, same run.
//!
//! Under `cargo test` it runs as a smoke test with 20k events.
//!
//! ```sh
//! cargo bench --bench operators                        # 5M events per run, and the window at 50M for memory
//! cargo bench --bench operators -- --events 1000000
//! ```
//!
//! Input: events generated in each worker (its share of a global sequence), 1,000 per epoch, an epoch being a
//! millisecond of event time and the dataflow time of its records (as a source's watermark would make it);
//! event times trail their epoch by up to 50 ms, so a few records land in a window that has just closed and
//! correct it (allowed lateness 100 ms). Windows are 1 s tumbling.
//! - `window count`: a count per key (100k keys) and window. Tributary: `window_aggregate` (one result per window
//!   when it closes, state released after the lateness). Peer: records mapped to `(key, window)` and
//!   differential's `count` (a changelog on every epoch, every window kept).
//! - `window join`: two streams (half the events each, 500k keys) paired by key within a window. Tributary:
//!   `window_join`. Peer: both mapped to `((key, window), id)` and differential's `join` (state kept).
//!
//! Latency: each worker closes an epoch once its records are in and keeps at most 8 epochs in flight; an epoch's
//! latency is from its close until the output's frontier passes it (worker 0's view), so it includes waiting
//! behind the epochs before it. Each run is a fresh process, so its peak RSS (VmHWM) is its own.

use std::collections::VecDeque;
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tributary::differential_dataflow::AsCollection;
use tributary::operators::Timed;
use tributary::operators::aggregate::Count;
use tributary::operators::window::{WindowAggregate, Windows};
use tributary::operators::window_join::WindowJoin;
use tributary::timely::dataflow::operators::vec::Map;
use tributary::timely::dataflow::operators::{Input, Inspect, Probe};
use tributary::timely::dataflow::{InputHandle, ProbeHandle};
use tributary_testkit::{flag as arg, peak_rss_mib};

const PER_EPOCH: u64 = 1_000;
const WINDOW_MS: u64 = 1_000;
const LATENESS_MS: u64 = 100;
const DISORDER_MS: u64 = 50;
const IN_FLIGHT: u64 = 8;
const COUNT_KEYS: u64 = 100_000;
const JOIN_KEYS: u64 = 500_000;

type Records = Vec<(Timed<(u64, u64)>, u64, isize)>;
type Handle = InputHandle<u64, tributary::timely::container::CapacityContainerBuilder<Records>>;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn main() -> anyhow::Result<()> {
    match arg("--pipeline") {
        Some(pipeline) => {
            let workers: usize = arg("--workers").unwrap_or_else(|| "1".into()).parse()?;
            let events: u64 = arg("--events").unwrap_or_default().parse()?;
            run(&pipeline, workers, events)
        }
        None => orchestrate(),
    }
}

fn orchestrate() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` runs this with no arguments, as a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let events: u64 = arg("--events").map(|r| r.parse()).transpose()?.unwrap_or(if full { 5_000_000 } else { 20_000 });
    println!(
        "machine: {} cores; {events} events per run, {PER_EPOCH} per 1 ms epoch, 1 s tumbling windows, lateness {LATENESS_MS} ms",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<36} {:>7} {:>11} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "pipeline", "workers", "events", "events/s", "p50 ms", "p99 ms", "max ms", "RSS MiB"
    );
    let exe = std::env::current_exe()?;
    let mut runs = Vec::new();
    for (pipeline, name) in [
        ("window", "window count: tributary"),
        ("window-dd", "window count: differential (peer)"),
        ("join", "window join: tributary"),
        ("join-dd", "window join: differential (peer)"),
    ] {
        for workers in [1, 2] {
            runs.push((pipeline, name, workers, events));
        }
    }
    // Memory over a 10x longer run: flat for Tributary's windows, growing for the peer's.
    runs.push(("window", "window count: tributary", 1, events * 10));
    runs.push(("window-dd", "window count: differential (peer)", 1, events * 10));
    for (pipeline, name, workers, events) in runs {
        let output = Command::new(&exe)
            .args(["--pipeline", pipeline, "--workers", &workers.to_string(), "--events", &events.to_string()])
            .output()?;
        anyhow::ensure!(output.status.success(), "{name} failed: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8(output.stdout)?;
        let f: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        anyhow::ensure!(f.len() == 5, "unexpected output from {name}: {line}");
        println!(
            "{name:<36} {workers:>7} {events:>11} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>8.1}",
            events as f64 / f[0],
            f[1],
            f[2],
            f[3],
            f[4]
        );
    }
    Ok(())
}

/// One worker's share of epoch `epoch` on a side (0 or 1), as `(key, id, event time)`.
fn events_of(epoch: u64, side: u64, sides: u64, worker: u64, workers: u64, keys: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let per_side = PER_EPOCH / sides;
    (0..per_side).filter(move |j| j % workers == worker).map(move |j| {
        let id = (epoch * per_side + j) * sides + side;
        let h = mix(id);
        let event_time = epoch.saturating_sub(h % DISORDER_MS);
        (h / DISORDER_MS % keys, id, event_time)
    })
}

/// Runs one pipeline and prints `seconds p50_ms p99_ms max_ms peak_rss_mib`.
fn run(pipeline: &str, workers: usize, events: u64) -> anyhow::Result<()> {
    let epochs = events.div_ceil(PER_EPOCH);
    let pipeline = pipeline.to_owned();
    let report = Arc::new(Mutex::new(None));
    let out = Arc::clone(&report);
    let started = Instant::now();
    tributary::timely::execute(tributary::timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let outputs = Rc::new(std::cell::Cell::new(0u64));
        let counted = Rc::clone(&outputs);
        let windows = Windows::Tumbling { size_ms: WINDOW_MS };
        let (mut inputs, probe): (Vec<Handle>, ProbeHandle<u64>) = worker.dataflow::<u64, _, _>(|scope| {
            let (left_in, left) = scope.new_input::<Records>();
            let (right_in, right) = scope.new_input::<Records>();
            let probe = match pipeline.as_str() {
                "window" => {
                    let streams = left.window_aggregate("Count", windows.allowed_lateness(Duration::from_millis(LATENESS_MS)), Count);
                    streams.late.inspect(|_| panic!("no record is later than the lateness"));
                    streams.results.inspect(move |_| counted.set(counted.get() + 1)).probe().0
                }
                "window-dd" => {
                    left.map(|(r, t, d)| ((r.value.0, r.event_time - r.event_time % WINDOW_MS), t, d))
                        .as_collection()
                        .count()
                        .inner
                        .inspect(move |_| counted.set(counted.get() + 1))
                        .probe()
                        .0
                }
                "join" => {
                    let streams = left.window_join("Join", right, windows, Duration::from_millis(LATENESS_MS));
                    streams.results.inspect(move |_| counted.set(counted.get() + 1)).probe().0
                }
                "join-dd" => {
                    let by_window = |(r, t, d): (Timed<(u64, u64)>, u64, isize)| {
                        (((r.value.0, r.event_time - r.event_time % WINDOW_MS), r.value.1), t, d)
                    };
                    let left = left.map(by_window).as_collection();
                    let right = right.map(by_window).as_collection();
                    left.join(right).inner.inspect(move |_| counted.set(counted.get() + 1)).probe().0
                }
                other => panic!("unknown pipeline {other}"),
            };
            (vec![left_in, right_in], probe)
        });
        let (sides, keys) = if pipeline.starts_with("join") { (2, JOIN_KEYS) } else { (1, COUNT_KEYS) };
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        let mut closed: VecDeque<(u64, Instant)> = VecDeque::new();
        let settle = |probe: &ProbeHandle<u64>, closed: &mut VecDeque<(u64, Instant)>, latency: &mut Histogram<u64>| {
            while let Some(&(epoch, at)) = closed.front() {
                if probe.less_equal(&epoch) {
                    break;
                }
                latency.saturating_record(at.elapsed().as_micros() as u64);
                closed.pop_front();
            }
        };
        for epoch in 0..epochs {
            for (side, input) in inputs.iter_mut().enumerate().take(sides as usize) {
                for (key, id, event_time) in events_of(epoch, side as u64, sides, index, peers, keys) {
                    input.send((Timed::new(event_time, (key, id)), epoch, 1));
                }
            }
            for input in inputs.iter_mut() {
                input.advance_to(epoch + 1);
            }
            closed.push_back((epoch, Instant::now()));
            while probe.less_than(&(epoch + 1).saturating_sub(IN_FLIGHT)) {
                worker.step();
                settle(&probe, &mut closed, &mut latency);
            }
            settle(&probe, &mut closed, &mut latency);
        }
        inputs.clear();
        while !probe.done() {
            worker.step();
            settle(&probe, &mut closed, &mut latency);
        }
        assert!(outputs.get() > 0 || epochs < 2 * WINDOW_MS, "the pipeline produced output");
        if index == 0 {
            *out.lock().unwrap() = Some(latency);
        }
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let latency = report.lock().unwrap().take().expect("worker 0 reported");
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1000.0;
    println!("{seconds:.3} {:.3} {:.3} {:.3} {:.1}", ms(0.5), ms(0.99), ms(1.0), peak_rss_mib());
    Ok(())
}
