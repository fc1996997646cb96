//! Broker faults, through the testkit's fault-injecting proxy in front of tansu (sqlite engine): a 30 s outage in
//! the middle of a run is survived with exact output in both delivery modes; a lost produce response (so the retry
//! meets a duplicate sequence number) neither loses nor duplicates output, also across a crash; an outage past
//! the delivery timeout stops the job with a message, and a restart completes the output; a stop that cannot
//! drain (no acknowledgement comes) ends at `--shutdown-timeout`, or at once on a second signal, and a restart
//! completes the output exactly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Scratch;
use common::kafka::{Job, changelog, lines_of, produce, table, word_counts};
use nix::sys::signal::Signal;
use tributary_testkit::{Broker, Proxy, Storage};

const LONG: Duration = Duration::from_secs(180);
const WORDS: &[&str] = &["river", "delta", "stream", "flow", "tributary", "basin", "creek", "rapids"];

fn lines(partition: i32, from: i64, count: usize, seed: u64) -> Vec<(i32, i64, Vec<u8>)> {
    lines_of(WORDS, partition, from, 10, count, seed)
}

fn reference(all: &[(i32, i64, Vec<u8>)]) -> BTreeMap<String, String> {
    word_counts(all).into_iter().map(|(w, n)| (w, n.to_string())).collect()
}

fn start() -> (Scratch, Broker, Proxy) {
    let scratch = Scratch::new(&format!("faults-{}", std::thread::current().name().unwrap_or("t").replace("::", "-")));
    let (broker, proxy) = Broker::start_behind_proxy(Storage::Sqlite("broker.db".into()), &scratch.0.join("broker"))
        .unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
    broker.create_topic("lines", 2, &[]).unwrap();
    (scratch, broker, proxy)
}

/// `kafka_word_count` through the proxy into `<name>` (upsert) and `<name>.changes` (changelog).
fn args(proxy: &Proxy, name: &str, bounded: bool, extra: &[&str]) -> Vec<String> {
    let address = proxy.address().to_string();
    let mut args: Vec<String> = ["--brokers", &address, "--topic", "lines", "--output-partitions", "2", "--idle-timeout", "2s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, value) in [
        ("--output-topic", name.to_owned()),
        ("--changelog-topic", format!("{name}.changes")),
        ("--dead-letter-topic", format!("{name}.dead")),
        ("--commit-log", format!("{name}.commits")),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if bounded {
        args.push("--until-end".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn check_exact(proxy: &Proxy, name: &str, expected: &BTreeMap<String, String>) {
    let bootstrap = proxy.address().to_string();
    assert_eq!(table(&bootstrap, name), *expected, "{name} read as a table");
    let summed: BTreeMap<String, String> = changelog(&bootstrap, &format!("{name}.changes"))
        .into_iter()
        .map(|((w, n), diff)| {
            assert_eq!(diff, 1, "{w} = {n} is in the changelog {diff} times: a change written twice");
            (w, n)
        })
        .collect();
    assert_eq!(summed, *expected, "{name}'s changelog summed");
}

#[test]
fn a_30s_broker_outage_is_survived_exactly_once_and_at_least_once() {
    let (scratch, _broker, proxy) = start();
    let bootstrap = proxy.address().to_string();
    let mut all = lines(0, 10_000, 400, 1);
    all.extend(lines(1, 10_000, 400, 2));
    produce(&bootstrap, "lines", &all);
    let exactly = Job::start(&scratch.0, "kafka_word_count", (1, 2), &args(&proxy, "exact", false, &[]), &[]);
    let loose = Job::start(&scratch.0, "kafka_word_count", (1, 2), &args(&proxy, "loose", false, &["--at-least-once"]), &[]);
    // The outage begins once both jobs are writing.
    let exactly = wait_until(&bootstrap, "exact", exactly, |t| !t.is_empty());
    let loose = wait_until(&bootstrap, "loose", loose, |t| !t.is_empty());
    proxy.set_down(true);
    let outage = Instant::now();
    // The outage itself: 30 s during which every connection is reset and none accepted.
    std::thread::sleep(Duration::from_secs(30));
    proxy.set_down(false);
    eprintln!("the broker was unreachable for {:?}", outage.elapsed());

    // After it the jobs go on: records produced now reach their outputs.
    let more: Vec<_> = lines_of(&["lagoon"], 0, 14_000, 10, 50, 3).into_iter().chain(lines_of(&["lagoon"], 1, 14_000, 10, 50, 4)).collect();
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    let exactly = wait_until(&bootstrap, "exact", exactly, |t| t.contains_key("lagoon"));
    let loose = wait_until(&bootstrap, "loose", loose, |t| t.contains_key("lagoon"));
    exactly.signal(Signal::SIGTERM);
    loose.signal(Signal::SIGTERM);
    exactly.succeed("the exactly-once job across the outage", LONG);
    loose.succeed("the at-least-once job across the outage", LONG);
    // What the stop left unfinished, a bounded run completes.
    for (name, extra) in [("exact", vec![]), ("loose", vec!["--at-least-once"])] {
        Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, name, true, &extra), &[]).succeed("the bounded run", LONG);
    }
    check_exact(&proxy, "exact", &reference(&all));
    assert_eq!(table(&bootstrap, "loose"), reference(&all), "the at-least-once table");
}

/// Waits until the upsert topic `name` that `job` writes satisfies `done`.
fn wait_until(bootstrap: &str, name: &str, job: Job, done: impl Fn(&BTreeMap<String, String>) -> bool) -> Job {
    let deadline = Instant::now() + LONG;
    while !done(&table(bootstrap, name)) {
        if Instant::now() > deadline {
            job.signal(Signal::SIGKILL);
            let (_, stderr) = job.wait(LONG);
            panic!("{name} did not get there within {LONG:?}: {:?}\n{stderr}", table(bootstrap, name));
        }
        // Polling the topic is how the test sees the job's progress.
        std::thread::sleep(Duration::from_millis(200));
    }
    job
}

#[test]
fn a_lost_produce_response_loses_and_duplicates_nothing() {
    let (scratch, _broker, proxy) = start();
    let bootstrap = proxy.address().to_string();
    let mut all = lines(0, 10_000, 300, 5);
    all.extend(lines(1, 10_000, 300, 6));
    produce(&bootstrap, "lines", &all);
    // The producer gives a request up after `socket.timeout.ms` (2 s here) and retries it; the broker has stored
    // the batch, so the retry meets a duplicate sequence number. Against tansu the delivery reports that follow do
    // not always add up (a later record reported at an offset the sink had already counted): the sink then stops
    // the job with its typed fault rather than trust them, and the restart reconciles. Either way nothing may be
    // lost or doubled.
    proxy.drop_produce_responses(3);
    let fast_retry = ["--kafka-option", "socket.timeout.ms=2000"];
    let job = Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, "counts", true, &fast_retry), &[]);
    let (statuses, stderr) = job.wait(LONG);
    assert!(proxy.dropped() > 0, "no produce response was dropped");
    if !statuses[0].success() {
        assert!(stderr.contains("worker 0 stopped the job") && stderr.contains("Kafka sink"), "not the sink's typed fault: {stderr}");
    }
    let more: Vec<_> = lines(0, 14_000, 50, 7).into_iter().chain(lines(1, 14_000, 50, 8)).collect();
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, "counts", true, &[]), &[]).succeed("the restart", LONG);
    check_exact(&proxy, "counts", &reference(&all));
}

#[test]
fn an_outage_past_the_delivery_timeout_stops_the_job_with_a_message() {
    let (scratch, _broker, proxy) = start();
    let bootstrap = proxy.address().to_string();
    let mut all = lines(0, 10_000, 100, 9);
    all.extend(lines(1, 10_000, 100, 10));
    produce(&bootstrap, "lines", &all);
    for (name, extra) in [("exact", vec![]), ("loose", vec!["--at-least-once"])] {
        let mut options = vec!["--kafka-option", "message.timeout.ms=3000", "--kafka-option", "request.timeout.ms=1000"];
        options.extend(extra.iter().copied());
        // No produce request gets an answer: the broker stores the records, the job never learns it did (the
        // outcome every retry-based protocol must survive).
        proxy.drop_produce_responses(usize::MAX);
        let job = Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, name, true, &options), &[]);
        let (statuses, stderr) = job.wait(LONG);
        proxy.drop_produce_responses(0);
        assert!(!statuses[0].success(), "{name}: the job succeeded without acknowledgements: {stderr}");
        assert!(
            stderr.contains("a record was not delivered") || stderr.contains("was not written to"),
            "{name}: no clear message: {stderr}"
        );
        assert!(stderr.contains("restart the job"), "{name}: the message says what to do: {stderr}");
        let restart =
            Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, name, true, &extra), &[]).succeed("the restart", LONG);
        if name == "exact" {
            // The broker stored what the failed run wrote and nothing of it was committed: the restart must have
            // reconciled that output, not started from an empty topic (else this scenario tests nothing of it).
            assert!(
                restart.contains("reconciling output written after the last commit"),
                "{name}: the restart did not reconcile the unacknowledged output: {restart}"
            );
        }
        assert_eq!(table(&bootstrap, name), reference(&all), "{name}: after the restart");
    }
    check_exact(&proxy, "exact", &reference(&all));
}

#[test]
fn a_stop_that_cannot_drain_ends_at_the_shutdown_timeout_or_at_a_second_signal() {
    let (scratch, _broker, proxy) = start();
    let bootstrap = proxy.address().to_string();
    let mut all = lines(0, 10_000, 100, 11);
    all.extend(lines(1, 10_000, 100, 12));
    produce(&bootstrap, "lines", &all);
    // (output name, --shutdown-timeout, a second signal)
    for (name, grace, second) in [("timeout", 2, None), ("second", 600, Some(Signal::SIGINT))] {
        let grace_flag = format!("{grace}s");
        let job = Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, name, false, &["--shutdown-timeout", &grace_flag]), &[]);
        let job = wait_until(&bootstrap, name, job, |t| !t.is_empty());
        // From now on the broker stores what the job writes but no acknowledgement reaches it, so the sink can
        // never finish: a stop cannot drain. New input gives it something to write (produced with acks=0, which
        // waits for no response; the input topic's size is checked below).
        proxy.drop_produce_responses(usize::MAX);
        let more = lines_of(&["lagoon", name], 0, 15_000, 10, 40, grace);
        produce_unacknowledged(&bootstrap, "lines", &more);
        all.extend(more);
        // Its output for the new input is in the topic, unacknowledged: the sink holds that time open.
        let job = wait_until(&bootstrap, name, job, |t| t.contains_key("lagoon"));
        assert!(proxy.dropped() > 0, "{name}: no acknowledgement was held back");
        let signalled = Instant::now();
        job.signal(Signal::SIGTERM);
        if let Some(signal) = second {
            job.signal(signal);
        }
        let (statuses, stderr) = job.wait(LONG);
        let took = signalled.elapsed();
        proxy.drop_produce_responses(0);
        assert!(!statuses[0].success(), "{name}: a stop that did not drain is not a success: {stderr}");
        assert!(stderr.contains(": asking sources to stop"), "{name}: {stderr}");
        match second {
            None => {
                assert!(took >= Duration::from_secs(2), "{name}: exited after {took:?}, before its 2 s shutdown timeout");
                assert!(stderr.contains("stopping after SIGTERM: the dataflow did not finish within 2s"), "{name}: {stderr}");
            }
            Some(_) => {
                // The two signals may be handled in either order.
                assert!(stderr.contains("while stopping after") && stderr.contains("exiting now"), "{name}: {stderr}");
                assert!(stderr.contains("came before the dataflow finished"), "{name}: no clear message: {stderr}");
                assert!(took < Duration::from_secs(60), "{name}: the second signal took {took:?} to end a 600 s grace");
            }
        }
        assert_eq!(common::kafka::size(&bootstrap, "lines"), all.len() as i64, "{name}: the broker lost input produced with acks=0");
        // Whatever the forced exit left half-written, a bounded run completes exactly.
        Job::start(&scratch.0, "kafka_word_count", (1, 1), &args(&proxy, name, true, &[]), &[]).succeed("the restart", LONG);
        check_exact(&proxy, name, &reference(&all));
    }
}

/// Produces `records` with acks=0: the broker sends no response, so this works while the proxy swallows them.
fn produce_unacknowledged(bootstrap: &str, topic: &str, records: &[(i32, i64, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "0")
        .set("enable.idempotence", "false")
        .create()
        .expect("producer");
    for (partition, timestamp, bytes) in records {
        producer.send(BaseRecord::<(), _>::to(topic).partition(*partition).timestamp(*timestamp).payload(bytes)).expect("queue a record");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}
