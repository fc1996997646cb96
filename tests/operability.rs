//! What an operator of a running job sees: the metrics endpoint of a job on the real broker, scraped while
//! records are produced, and the progress line on a terminal.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::kafka::{Job, lines_of, produce, sqlite_broker};
use common::{Scratch, free_addresses};

const LONG: Duration = Duration::from_secs(120);

/// One scrape: every sample of the text format, `name{labels}` -> value.
fn scrape(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "a complete exposition: {body}");
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
            .collect(),
    )
}

/// The samples of `name` for the `lines` topic, by partition (summed over workers).
fn per_partition(samples: &BTreeMap<String, f64>, name: &str) -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    for (key, value) in samples {
        let Some(labels) = key.strip_prefix(name).and_then(|rest| rest.strip_prefix('{')) else { continue };
        if !labels.contains("origin=\"lines\"") {
            continue;
        }
        let partition = labels.split("partition=\"").nth(1).and_then(|p| p.split('"').next()).and_then(|p| p.parse().ok());
        *out.entry(partition.expect("a partition label")).or_default() += value;
    }
    out
}

/// Scrapes until `done` holds for what the endpoint shows, failing after a deadline with the last scrape.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + LONG;
    let mut last = BTreeMap::new();
    loop {
        if let Some(samples) = scrape(addr) {
            if done(&samples) {
                return samples;
            }
            last = samples;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within {LONG:?}; the last scrape: {last:#?}");
        // Polling the endpoint is how the test sees the job's progress.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_metrics_endpoint_shows_counts_positions_lag_and_watermarks_move_as_records_arrive() {
    let scratch = Scratch::new("metrics");
    let broker = sqlite_broker(&scratch.0);
    let bootstrap = broker.bootstrap();
    broker.create_topic("lines", 2, &[]).unwrap();
    let words = ["river", "delta", "stream"];
    let mut first = lines_of(&words, 0, 10_000, 10, 200, 1);
    first.extend(lines_of(&words, 1, 10_000, 10, 150, 2));
    produce(&bootstrap, "lines", &first);

    let addr = free_addresses(1)[0];
    let args: Vec<String> = [
        "--brokers",
        &bootstrap,
        "--topic",
        "lines",
        "--output-topic",
        "counts",
        "--commit-log",
        "commits",
        "--idle-timeout",
        "1s",
        "--metrics-addr",
        &addr.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let job = Job::start(&scratch.0, "kafka_word_count", (1, 2), &args, &[]);

    let caught_up = |records: [f64; 2], end: [f64; 2]| {
        move |s: &BTreeMap<String, f64>| {
            let want = |name: &str, v: [f64; 2]| per_partition(s, name) == BTreeMap::from([(0, v[0]), (1, v[1])]);
            want("tributary_source_records_total", records)
                && want("tributary_source_position", end)
                && want("tributary_source_end_offset", end)
                && want("tributary_source_lag", [0.0, 0.0])
        }
    };
    let before = scrape_until(addr, "200 + 150 records read, lag 0", caught_up([200.0, 150.0], [200.0, 150.0]));
    let watermark = per_partition(&before, "tributary_source_watermark_seconds");
    // The largest timestamps were 10 s + 199 * 10 ms and 10 s + 149 * 10 ms.
    assert_eq!(watermark, BTreeMap::from([(0, 11.99), (1, 11.49)]), "the watermarks, in seconds");
    let dead = per_partition(&before, "tributary_source_dead_letters_total");
    assert_eq!(dead, BTreeMap::from([(0, 0.0), (1, 0.0)]), "no dead letters yet");

    // More on partition 0, later, and a malformed record (invalid UTF-8) on partition 1.
    produce(&bootstrap, "lines", &lines_of(&words, 0, 20_000, 10, 100, 3));
    produce(&bootstrap, "lines", &[(1, 20_000, vec![0xff, 0xfe])]);
    let after = scrape_until(addr, "the new records read, lag 0 again", caught_up([300.0, 150.0], [300.0, 151.0]));
    let watermark = per_partition(&after, "tributary_source_watermark_seconds");
    assert_eq!(watermark[&0], 20.99, "partition 0's watermark moved with its records");
    let dead = per_partition(&after, "tributary_source_dead_letters_total");
    assert_eq!(dead, BTreeMap::from([(0, 0.0), (1, 1.0)]), "the malformed record is counted");
    let delay = per_partition(&after, "tributary_source_watermark_delay_seconds");
    assert!(delay.values().all(|d| *d > 1e9), "watermarks of 1970 are decades behind the wall clock: {delay:?}");

    // The sink wrote, and the job committed past the first records' times.
    let sum = |s: &BTreeMap<String, f64>, name: &str| s.iter().filter(|(k, _)| k.starts_with(name)).map(|(_, v)| v).sum::<f64>();
    let committed = scrape_until(addr, "a commit past the new records", |s| {
        sum(s, "tributary_commits_total{") >= 1.0 && sum(s, "tributary_committed_time_milliseconds{") >= 20_000.0
    });
    assert!(sum(&committed, "tributary_sink_records_total{") > 0.0, "the sink's records: {committed:#?}");
    assert!(sum(&committed, "tributary_commit_latency_seconds_count{") >= 1.0, "commit latencies observed: {committed:#?}");
    // The word counts live in differential arrangements: their sizes are reported.
    assert!(sum(&committed, "tributary_arrangement_records{") > 0.0, "arrangement sizes: {committed:#?}");
    let named = |k: &String| k.starts_with("tributary_arrangement_records{") && !k.contains("operator=\"operator ");
    assert!(committed.keys().any(named), "arrangements are named after their operators: {committed:#?}");

    job.signal(nix::sys::signal::Signal::SIGTERM);
    job.stopped("the job", LONG);
}

/// Runs `windowed_count` over `csv` under a pseudo-terminal (util-linux `script`), stdout to `out`, with `flags`;
/// returns what the terminal showed.
fn on_a_terminal(scratch: &Scratch, csv: &std::path::Path, out: &std::path::Path, flags: &str) -> String {
    use common::OutputWithin;
    let typescript = scratch.0.join(format!("typescript{}", flags.replace(' ', "")));
    let command = format!("{} --csv {} {flags} > {}", common::example("windowed_count").display(), csv.display(), out.display());
    let output = std::process::Command::new("script")
        .args(["-qfec", &command])
        .arg(&typescript)
        .stdin(std::process::Stdio::null())
        .output_within(LONG)
        .unwrap_or_else(|e| panic!("cannot run `script` (util-linux) to give the job a terminal: {e}; install util-linux"));
    assert!(output.status.success(), "windowed_count under a terminal failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read_to_string(&typescript).expect("the typescript")
}

#[test]
fn the_progress_line_is_drawn_on_a_terminal_and_not_with_quiet_or_without_a_terminal() {
    use common::OutputWithin;
    let scratch = Scratch::new("progress");
    let csv = scratch.0.join("events.csv");
    let mut rows = String::from("key,ts_ms\n");
    for i in 0..20_000u64 {
        rows.push_str(&format!("k{},{}\n", i % 7, 1_000 * i));
    }
    std::fs::write(&csv, rows).unwrap();
    let marker = "] records ";

    let shown = on_a_terminal(&scratch, &csv, &scratch.0.join("terminal.out"), "");
    assert!(shown.contains(marker), "a progress line on the terminal: {shown:?}");
    // Drawn on stderr, cleared at the end: the results are untouched.
    let results = std::fs::read_to_string(scratch.0.join("terminal.out")).unwrap();
    assert!(!results.contains(marker) && results.lines().count() > 100, "{results}");

    let quiet = on_a_terminal(&scratch, &csv, &scratch.0.join("quiet.out"), "--quiet");
    assert!(!quiet.contains(marker), "--quiet: no progress line: {quiet:?}");
    assert_eq!(std::fs::read_to_string(scratch.0.join("quiet.out")).unwrap(), results);

    let piped = std::process::Command::new(common::example("windowed_count")).arg("--csv").arg(&csv).output_within(LONG).unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("source finished") && !stderr.contains(marker), "no progress line on a pipe: {stderr}");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), results);
}
