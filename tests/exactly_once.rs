//! Exactly-once in ordinary operation, the scenarios of docs/exactly-once.md's failure table, on the real broker
//! (tansu's sqlite engine) at 1x1 and 2x2: `kafka_word_count` writes an upsert topic and a changelog topic, and
//! after every run the upsert topic read as a table, and the changelog topic summed, equal the word counts of all
//! the input produced so far.
//!
//! - a bounded run while one partition lags in event time, more records on it, a second bounded run;
//! - an unbounded run stopped with SIGTERM once it has written output, more input, a restart (a rolling deploy),
//!   also at another layout;
//! - a quiet partition past the idle timeout (so the job writes ahead of it), kill -9, a record with an older
//!   timestamp on the quiet partition, a restart;
//! - `tributary launch --restart on-failure`: a process killed while the job runs, and a process of the
//!   restarted cluster killed as soon as it starts; the launcher restarts the whole cluster each time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::kafka::{Job, changelog, lines_of, produce, sqlite_broker, table, word_counts};
use common::{Running, Scratch, children, example, launcher};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(180);
const WORDS: &[&str] = &["river", "delta", "stream", "flow", "tributary", "basin", "creek", "rapids", "eddy", "weir", "ford", "bank"];

/// Words that only the records landing behind the job's progress use: their counts change at those times only,
/// so a lost change shows in the table (not only in the changelog).
const LATE_WORDS: &[&str] = &["lagoon", "marsh", "fen", "bayou"];

fn lines(partition: i32, from: i64, step: i64, count: usize, seed: u64) -> Vec<(i32, i64, Vec<u8>)> {
    lines_of(WORDS, partition, from, step, count, seed)
}

fn reference(all: &[(i32, i64, Vec<u8>)]) -> BTreeMap<String, i64> {
    word_counts(all)
}

/// The upsert topic read as a table and the changelog topic summed, both as word counts.
fn outputs(bootstrap: &str) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let table = table(bootstrap, "counts").into_iter().map(|(w, n)| (w, n.parse().expect("a count"))).collect();
    let mut summed = BTreeMap::new();
    for ((word, count), n) in changelog(bootstrap, "changes") {
        assert_eq!(n, 1, "{word}: the changelog sums to one current count per word, not {n} of {count}");
        assert!(summed.insert(word.clone(), count.parse::<i64>().expect("a count")).is_none(), "{word} has two current counts");
    }
    (table, summed)
}

/// Waits until the upsert topic read as a table is `expected` (the job has got that far).
fn wait_for_table(bootstrap: &str, expected: &BTreeMap<String, i64>, job: &Job) {
    let deadline = std::time::Instant::now() + LONG;
    while outputs(bootstrap).0 != *expected {
        if std::time::Instant::now() > deadline {
            job.signal(Signal::SIGKILL);
            panic!("the job's output did not reach {expected:?}; it is {:?}", outputs(bootstrap).0);
        }
        // Polling the topic is how the test sees the job's progress.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(bootstrap: &str, all: &[(i32, i64, Vec<u8>)], what: &str) {
    let expected = reference(all);
    let (table, summed) = outputs(bootstrap);
    assert_eq!(table, expected, "{what}: the upsert topic read as a table");
    assert_eq!(summed, expected, "{what}: the changelog topic summed");
}

fn args(bootstrap: &str, bounded: bool, idle: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--brokers",
        bootstrap,
        "--topic",
        "lines",
        "--output-topic",
        "counts",
        "--changelog-topic",
        "changes",
        "--output-partitions",
        "3",
        "--dead-letter-topic",
        "dead",
        "--commit-log",
        "commits",
        "--idle-timeout",
        idle,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if bounded {
        args.push("--until-end".into());
    }
    args
}

fn bounded(dir: &Path, bootstrap: &str, layout: (usize, usize), what: &str) {
    Job::start(dir, "kafka_word_count", layout, &args(bootstrap, true, "10s"), &[]).succeed(what, LONG);
}

fn setup(name: &str) -> (Scratch, tributary_testkit::Broker) {
    let scratch = Scratch::new(name);
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("lines", 2, &[]).unwrap();
    (scratch, broker)
}

/// A bounded run while partition 1 lags partition 0 in event time; more records land on partition 1 (behind
/// partition 0, ahead of its own past); a second bounded run; then more on both and a run at the other layout.
fn lagging_partition_rerun(layout: (usize, usize), other: (usize, usize)) {
    let (scratch, broker) = setup(&format!("eo-lagging-{}x{}", layout.0, layout.1));
    let bootstrap = broker.bootstrap();
    let mut all = lines(0, 10_000, 10, 300, 1);
    all.extend(lines(1, 1_000, 10, 50, 2));
    produce(&bootstrap, "lines", &all);
    bounded(&scratch.0, &bootstrap, layout, "first bounded run");
    check(&bootstrap, &all, "after the first bounded run");

    let more = lines_of(LATE_WORDS, 1, 2_000, 10, 80, 3);
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    bounded(&scratch.0, &bootstrap, layout, "second bounded run");
    check(&bootstrap, &all, "after more records on the lagging partition and a second bounded run");

    let mut more = lines(0, 14_000, 10, 60, 4);
    more.extend(lines(1, 3_000, 10, 60, 5));
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    bounded(&scratch.0, &bootstrap, other, "a bounded run at the other layout");
    check(&bootstrap, &all, "after a run at another layout");

    // Nothing new: a rerun writes nothing at all.
    let before = common::kafka::size(&bootstrap, "changes");
    bounded(&scratch.0, &bootstrap, layout, "a rerun without new input");
    check(&bootstrap, &all, "after a rerun without new input");
    assert_eq!(common::kafka::size(&bootstrap, "changes"), before, "a rerun without new input writes no change");
}

#[test]
fn a_bounded_rerun_after_new_input_on_a_lagging_partition_counts_it_1x1() {
    lagging_partition_rerun((1, 1), (2, 2));
}

#[test]
fn a_bounded_rerun_after_new_input_on_a_lagging_partition_counts_it_2x2() {
    lagging_partition_rerun((2, 2), (1, 1));
}

/// An unbounded run stopped with SIGTERM once it has written output; more input; a restart at `restart`.
fn sigterm_then_more_input(layout: (usize, usize), restart: (usize, usize)) {
    let (scratch, broker) = setup(&format!("eo-sigterm-{}x{}-{}x{}", layout.0, layout.1, restart.0, restart.1));
    let bootstrap = broker.bootstrap();
    let mut all = lines(0, 10_000, 10, 300, 11);
    all.extend(lines(1, 1_000, 10, 300, 12));
    produce(&bootstrap, "lines", &all);
    let job = Job::start(&scratch.0, "kafka_word_count", layout, &args(&bootstrap, false, "10s"), &[]);
    // Partition 1 holds the frontier at its watermark: output up to there is written (all of partition 1 but
    // its last line), partition 0's is not.
    let behind: Vec<_> = all.iter().filter(|(p, ts, _)| *p == 1 && *ts < 1_000 + 299 * 10).cloned().collect();
    wait_for_table(&bootstrap, &reference(&behind), &job);
    job.signal(Signal::SIGTERM);
    job.succeed("the unbounded run stopped with SIGTERM", LONG);

    let mut more = lines(0, 13_000, 10, 100, 13);
    more.extend(lines_of(LATE_WORDS, 1, 4_000, 10, 100, 14));
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    bounded(&scratch.0, &bootstrap, restart, "the restart");
    check(&bootstrap, &all, "after SIGTERM, more input and a restart");
}

#[test]
fn sigterm_more_input_and_a_restart_lose_nothing_1x1() {
    sigterm_then_more_input((1, 1), (1, 1));
}

#[test]
fn sigterm_more_input_and_a_restart_lose_nothing_2x2() {
    sigterm_then_more_input((2, 2), (2, 2));
}

#[test]
fn sigterm_more_input_and_a_restart_at_another_layout_lose_nothing() {
    sigterm_then_more_input((1, 1), (2, 2));
}

/// Partition 1 goes quiet past the idle timeout, so the job writes ahead of it; kill -9; a record with an older
/// timestamp lands on partition 1; a restart.
fn idle_partition_kill_then_old_record(layout: (usize, usize)) {
    let (scratch, broker) = setup(&format!("eo-idle-{}x{}", layout.0, layout.1));
    let bootstrap = broker.bootstrap();
    let mut all = lines(0, 10_000, 10, 200, 21);
    all.extend(lines(1, 1_000, 10, 20, 22));
    produce(&bootstrap, "lines", &all);
    let job = Job::start(&scratch.0, "kafka_word_count", layout, &args(&bootstrap, false, "1s"), &[]);
    // Once partition 1 is idle the job writes everything up to partition 0's watermark (its last record, at the
    // watermark itself, waits): wait until the table shows exactly that.
    let ahead: Vec<_> = all.iter().filter(|(p, ts, _)| *p == 1 || *ts < 10_000 + 199 * 10).cloned().collect();
    wait_for_table(&bootstrap, &reference(&ahead), &job);
    job.signal(Signal::SIGKILL);
    job.wait(LONG);

    let old = vec![(1, 1_005, b"lagoon lagoon marsh".to_vec()), (1, 900, b"fen".to_vec())];
    produce(&bootstrap, "lines", &old);
    all.extend(old);
    bounded(&scratch.0, &bootstrap, layout, "the restart");
    check(&bootstrap, &all, "after kill -9 and older records on the idle partition");
}

#[test]
fn a_quiet_partition_kill_and_an_older_record_lose_nothing_1x1() {
    idle_partition_kill_then_old_record((1, 1));
}

#[test]
fn a_quiet_partition_kill_and_an_older_record_lose_nothing_2x2() {
    idle_partition_kill_then_old_record((2, 2));
}

/// Two processes, one SIGSTOPped: the other stops within the peer timeout, naming it; a restart is exact.
#[test]
fn a_stopped_process_stops_the_job_within_the_peer_timeout_and_a_restart_is_exact() {
    let (scratch, broker) = setup("eo-sigstop");
    let bootstrap = broker.bootstrap();
    let mut all = lines(0, 10_000, 10, 200, 31);
    all.extend(lines(1, 10_000, 10, 200, 32));
    produce(&bootstrap, "lines", &all);
    let mut flags = args(&bootstrap, false, "10s");
    flags.extend(["--peer-timeout".to_owned(), "3s".to_owned()]);
    let job = Job::start(&scratch.0, "kafka_word_count", (2, 2), &flags, &[]);
    let written: Vec<_> = all.iter().filter(|(_, ts, _)| *ts < 10_000 + 199 * 10).cloned().collect();
    wait_for_table(&bootstrap, &reference(&written), &job);
    let mut processes = job.into_processes().into_iter();
    let (first, second) = (processes.next().expect("process 0"), processes.next().expect("process 1"));
    let stop = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(second.pid), signal).expect("signal process 1");
    stop(Signal::SIGSTOP);
    let stopped = std::time::Instant::now();
    let (status, stderr) = first.wait(Duration::from_secs(60));
    let took = stopped.elapsed();
    stop(Signal::SIGKILL);
    let _ = second.wait(LONG);
    assert!(!status.success(), "process 0 went on: {stderr}");
    assert!(stderr.contains("lost its connection to process 1") && stderr.contains("sent no heartbeat for 3s"), "{stderr}");
    assert!(took < Duration::from_secs(30), "process 0 took {took:?} to stop");

    let more = lines_of(LATE_WORDS, 1, 11_000, 10, 50, 33);
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    bounded(&scratch.0, &bootstrap, (2, 2), "the restart");
    check(&bootstrap, &all, "after a stopped process and a restart");
}

/// Waits until `launcher` has `n` children none of which is in `old` (a new cluster), and returns them.
fn next_cluster(launcher: i32, n: usize, old: &std::collections::BTreeSet<i32>) -> std::collections::BTreeSet<i32> {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let now = children(launcher);
        if now.len() == n && now.is_disjoint(old) {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "no new cluster of {n} processes under the launcher: {now:?} (old {old:?})");
        // Polling /proc is how the test sees the launcher restart the cluster.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `launch --restart on-failure` at 2x2: SIGKILL one process while the job runs, then one of the restarted
/// cluster as soon as it is up (so during its restore); more input; the output is exact and the launcher, stopped
/// with SIGTERM, exits cleanly after two restarts.
#[test]
fn launch_restart_on_failure_restarts_the_cluster_after_kills_and_the_output_stays_exact() {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let (scratch, broker) = setup("eo-restart");
    let bootstrap = broker.bootstrap();
    let mut all = lines(0, 10_000, 10, 400, 41);
    all.extend(lines(1, 10_000, 10, 400, 42));
    produce(&bootstrap, "lines", &all);
    let launch = std::process::Command::new(launcher())
        .args(["launch", "-n", "2", "-w", "2", "--restart", "on-failure", "--restart-delay", "200ms", "--"])
        .arg(example("kafka_word_count"))
        .args(args(&bootstrap, false, "1s"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let launcher = Running::new(launch);
    let first = next_cluster(launcher.pid, 2, &Default::default());
    common::kafka::wait_for_records(&bootstrap, "counts", 1, LONG);
    let victim = *first.iter().next_back().expect("a process");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a running process");
    let second = next_cluster(launcher.pid, 2, &first);
    let victim = *second.iter().next().expect("a process");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a process of the restarted cluster");
    let third = next_cluster(launcher.pid, 2, &second);

    let more = lines_of(LATE_WORDS, 1, 14_000, 10, 100, 43);
    produce(&bootstrap, "lines", &more);
    all.extend(more);
    // Running, the job writes every time the watermark has passed: all but the last record (partition 0 is idle,
    // so partition 1's watermark leads).
    let written: Vec<_> = all.iter().filter(|(_, ts, _)| *ts < 14_000 + 99 * 10).cloned().collect();
    let expected = reference(&written);
    let deadline = std::time::Instant::now() + LONG;
    while outputs(&bootstrap).0 != expected {
        if std::time::Instant::now() > deadline {
            let _ = kill(Pid::from_raw(launcher.pid), Signal::SIGKILL);
            for pid in children(launcher.pid).iter().chain(&third) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            panic!("the restarted job's output did not reach the reference; it is {:?}", outputs(&bootstrap).0);
        }
        // Polling the topic is how the test sees the job's progress.
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(Pid::from_raw(launcher.pid), Signal::SIGTERM).expect("stop the launcher");
    let (status, stderr) = launcher.wait(LONG);
    assert!(status.success(), "the launcher, stopped with SIGTERM after the restarts: {status}\n{stderr}");
    assert_eq!(stderr.matches("restarting the cluster").count(), 2, "two restarts: {stderr}");
    check(&bootstrap, &written, "after two kills under launch --restart on-failure and a SIGTERM");
    bounded(&scratch.0, &bootstrap, (2, 2), "the bounded rerun after the restarts");
    check(&bootstrap, &all, "after the bounded rerun");
}
