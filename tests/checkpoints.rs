//! Checkpoints on the real broker (tansu, sqlite): `windowed_count` with `--checkpoint-dir` runs unbounded until a
//! commit names a checkpoint, is killed (-9), more input lands, and a bounded restart at another layout restores
//! the checkpoint: it reads only the records after it (fewer than the input holds), and the output topic read as
//! a table equals the counts over all the input. Then a part of the newest checkpoint is corrupted: the next
//! restart falls back (to the previous checkpoint, or a replay), and the output stays exact. `enrich_join` (an
//! upsert table, a temporal join and windowed sums) the same way: the customers, read long before the
//! checkpoint, come back from it, not from the topic.
//!
//! Across hosts: three network namespaces (3 processes x 2 workers, one host file, a supervisor per host as
//! systemd would be) and the broker in a fourth; a host's link is cut, later a process is killed: every process
//! stops naming the peer it lost, the supervisors bring the cluster back, and the output stays exact.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Scratch;
use common::kafka::{Job, produce, read, sqlite_broker, table};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(150);

/// The tests of this file run one at a time: each runs its own broker and clusters, and the million-record
/// test, sharing 2 cores with the others, starves its sqlite broker (metadata requests time out).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
const KEYS: &[&str] = &["apple", "pear", "fig", "kiwi", "plum"];

/// `count` in-order events per partition from `from` ms, 10 ms apart.
fn events(from: u64, count: u64) -> Vec<(i32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..count {
        for partition in 0..2 {
            let ts = from + i * 10;
            let key = KEYS[((i * 7 + partition as u64 * 3) % KEYS.len() as u64) as usize];
            out.push((partition, ts as i64, format!("{{\"key\":\"{key}\",\"ts_ms\":{ts}}}").into_bytes()));
        }
    }
    out
}

/// The upsert table the job must leave: `["key",start]` -> count, 1 s windows.
fn reference(all: &[(i32, i64, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for (_, ts, bytes) in all {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let ts = *ts as u64;
        *counts.entry((value["key"].as_str().unwrap().to_owned(), ts - ts % 1000)).or_default() += 1;
    }
    counts.into_iter().map(|((key, start), n)| (format!("[\"{key}\",{start}]"), n.to_string())).collect()
}

fn args(bootstrap: &str, dir: &std::path::Path, bounded: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--brokers", bootstrap, "--topic", "ck-in", "--output-topic", "ck-out", "--output-partitions", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(
        ["--commit-log", "ck.commits", "--dead-letter-topic", "ck.dead", "--window", "1s", "--allowed-lateness", "1h"].map(String::from),
    );
    args.extend(["--idle-timeout", "500ms", "--checkpoint-interval", "300ms", "--checkpoint-dir"].map(String::from));
    args.push(dir.display().to_string());
    if bounded {
        args.push("--until-end".into());
    }
    args
}

/// The records the job's sources read, from their `source finished: N records read` lines.
fn records_read(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|line| line.split("source finished: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// How many different checkpoints the commits of `log` have named as their newest.
fn committed_checkpoints(bootstrap: &str, log: &str) -> usize {
    let newest: std::collections::BTreeSet<String> = read(bootstrap, log)
        .into_iter()
        .flatten()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.value.as_deref()?).ok())
        .filter_map(|commit| commit["checkpoints"].get(0).map(|c| format!("{}-{}", c["generation"], c["time"])))
        .collect();
    newest.len()
}

/// Every file under `dir`.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(listing(&entry.path()));
        } else {
            out.push(entry.path().display().to_string());
        }
    }
    out
}

/// Waits until two commits of `log` name checkpoints, then kills the job (-9). A checkpoint completes once the
/// input's time passes it, so `more` produces a little more input each round, as a live stream would.
fn wait_for_checkpoints(bootstrap: &str, log: &str, job: Job, more: impl FnMut()) -> String {
    wait_for_commits(bootstrap, log, 2, job, more)
}

/// Waits until `count` commits of `log` name checkpoints, then kills the job (-9); returns its stderr.
fn wait_for_commits(bootstrap: &str, log: &str, count: usize, job: Job, more: impl FnMut()) -> String {
    let job =
        wait_until(job, &format!("{count} commits of {log} naming checkpoints"), || committed_checkpoints(bootstrap, log) >= count, more);
    job.signal(Signal::SIGKILL);
    job.wait(LONG).1
}

/// Polls `done` (calling `more` before each look, to feed input as a live stream would) until it holds, within
/// [`LONG`]; past it, kills the job and fails with its stderr.
fn wait_until(job: Job, what: &str, mut done: impl FnMut() -> bool, mut more: impl FnMut()) -> Job {
    let deadline = Instant::now() + LONG;
    loop {
        more();
        if done() {
            return job;
        }
        if Instant::now() > deadline {
            job.signal(Signal::SIGKILL);
            let (_, stderr) = job.wait(LONG);
            panic!("not within {LONG:?}: {what}:\n{stderr}");
        }
        // Polling the commit log is how the test sees the job's progress.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restart_restores_the_checkpoint_reads_only_what_follows_and_stays_exact() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ck-in", 2, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    let mut all = events(1_000_000, 3000);
    produce(&bootstrap, "ck-in", &all);

    // Unbounded until a commit names a checkpoint, then killed.
    let job = Job::start(&scratch.0, "windowed_count", (1, 1), &args(&bootstrap, &dir, false), &[]);
    let mut next = 3000;
    wait_for_checkpoints(&bootstrap, "ck.commits", job, || {
        let live = events(1_000_000 + next * 10, 20);
        produce(&bootstrap, "ck-in", &live);
        all.extend(live);
        next += 20;
    });

    let more = events(1_000_000 + next * 10, 1000);
    produce(&bootstrap, "ck-in", &more);
    all.extend(more);
    let stderr = Job::start(&scratch.0, "windowed_count", (2, 1), &args(&bootstrap, &dir, true), &[]).succeed("the restored run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the restart restored no checkpoint:\n{stderr}");
    let consumed = records_read(&stderr);
    assert!(consumed < all.len() as u64, "the restored run read {consumed} records, the whole input is {}", all.len());
    assert_eq!(table(&bootstrap, "ck-out"), reference(&all), "after the restore");

    // A corrupt part of the newest committed checkpoint: the restart falls back to the previous one, and the
    // output stays exact.
    let commit = last_commit(&bootstrap, "ck.commits").expect("a commit");
    let newest = &commit["checkpoints"][0];
    assert!(commit["checkpoints"][1].is_object(), "the last commit names two checkpoints: {commit}");
    let part = dir.join(format!("g{}-t{}", newest["generation"], newest["time"])).join("p0").join("WindowedCount.state");
    let mut bytes = std::fs::read(&part)
        .unwrap_or_else(|e| panic!("the window operator's part {}: {e}; the store holds {:?}", part.display(), listing(&dir)));
    bytes[0] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let more = events(1_000_000 + (next + 1000) * 10, 500);
    produce(&bootstrap, "ck-in", &more);
    all.extend(more);
    let stderr = Job::start(&scratch.0, "windowed_count", (1, 2), &args(&bootstrap, &dir, true), &[]).succeed("the fallback run", LONG);
    assert!(stderr.contains("falling back to the previous checkpoint"), "the corrupt part was not noticed:\n{stderr}");
    assert!(stderr.contains("restoring the checkpoint"), "the previous checkpoint was not restored:\n{stderr}");
    assert_eq!(table(&bootstrap, "ck-out"), reference(&all), "after the fallback");
}

/// The newest commit of `log`, parsed.
fn last_commit(bootstrap: &str, log: &str) -> Option<serde_json::Value> {
    let last = read(bootstrap, log).into_iter().flatten().filter_map(|r| r.value).next_back()?;
    serde_json::from_slice(&last).ok()
}

#[test]
fn a_sigterm_takes_a_final_checkpoint_and_the_restart_reads_only_what_followed_it() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints-final");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ck-in", 2, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    let mut all = events(1_000_000, 3000);
    produce(&bootstrap, "ck-in", &all);

    // No checkpoint on the interval (an hour): the only one is the stop's. Two processes, so the stop's
    // agreement travels between them.
    let mut unbounded = args(&bootstrap, &dir, false);
    let at = unbounded.iter().position(|a| a == "--checkpoint-interval").unwrap();
    unbounded[at + 1] = "1h".into();
    let job = Job::start(&scratch.0, "windowed_count", (2, 1), &unbounded, &[]);
    // Once the job has committed most of the input (its last 10 s of event time may still be open), stop it.
    let committed = || last_commit(&bootstrap, "ck.commits").and_then(|c| c["time"].as_u64()).is_some_and(|t| t >= 1_020_000);
    let job = wait_until(job, "a commit at 1,020,000 or later", committed, || {});
    job.signal(Signal::SIGTERM);
    let stderr = job.succeed("the unbounded run stopped with SIGTERM", LONG);
    assert!(stderr.contains("taking the final checkpoint"), "no final checkpoint was taken:\n{stderr}");

    // The last commit names the stop's checkpoint, at the commit's own time, and no other.
    let commit = last_commit(&bootstrap, "ck.commits").expect("a commit");
    let checkpoint = &commit["checkpoints"][0];
    assert_eq!(checkpoint["time"], commit["time"], "the final checkpoint is at the stop's commit: {commit}");
    assert_eq!(committed_checkpoints(&bootstrap, "ck.commits"), 1, "one checkpoint, the stop's: {commit}");
    // What a restore reads again: per partition, the records from the checkpoint's resume point on.
    let mut after = 0u64;
    for source in checkpoint["sources"].as_array().expect("the checkpoint's sources") {
        let partition = source["key"]["partition"].as_i64().expect("a partition") as i32;
        let from = source["resume"]["offset"].as_u64().unwrap_or_else(|| panic!("no resume point: {source}"));
        let records = all.iter().filter(|(p, _, _)| *p == partition).count() as u64;
        assert!(from > 0 && from <= records, "partition {partition} resumes at {from} of {records}: {commit}");
        after += records - from;
    }

    let more = events(1_000_000 + 3000 * 10, 1000);
    produce(&bootstrap, "ck-in", &more);
    all.extend(more);
    let stderr = Job::start(&scratch.0, "windowed_count", (1, 1), &args(&bootstrap, &dir, true), &[]).succeed("the restart", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the restart restored no checkpoint:\n{stderr}");
    let consumed = records_read(&stderr);
    assert_eq!(consumed, after + 2000, "the restart read the records after the final checkpoint and the new ones, nothing else");
    assert_eq!(table(&bootstrap, "ck-out"), reference(&all), "after SIGTERM, more input and the restart");
}

fn word_args(bootstrap: &str, dir: &std::path::Path, bounded: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--brokers", bootstrap, "--topic", "wc-lines", "--output-topic", "wc-counts", "--output-partitions", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--commit-log", "wc.commits", "--dead-letter-topic", "wc.dead", "--idle-timeout", "500ms"].map(String::from));
    args.extend(["--checkpoint-interval", "300ms", "--checkpoint-dir"].map(String::from));
    args.push(dir.display().to_string());
    if bounded {
        args.push("--until-end".into());
    }
    args
}

/// `count` in-order events on `partition` from `from` ms, 10 ms apart.
fn events_on(partition: i32, from: u64, count: u64) -> Vec<(i32, i64, Vec<u8>)> {
    events(from, count).into_iter().filter(|(p, _, _)| *p == partition).collect()
}

/// Checkpoints on the interval while partition 1 runs 5 s of event time behind partition 0: at any moment a
/// request at partition 0's time is open, waiting for partition 1 to pass it. SIGTERM then: the final
/// checkpoint, earlier than that request, is the one the last commit names.
#[test]
fn a_sigterm_while_an_interval_checkpoint_is_open_still_takes_the_final_one() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints-final-open");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ck-in", 2, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    let (mut ahead, mut behind) = (1_005_000, 1_000_000);
    let mut all = events_on(0, ahead, 1000);
    all.extend(events_on(1, behind, 1000));
    produce(&bootstrap, "ck-in", &all);
    (ahead, behind) = (ahead + 10_000, behind + 10_000);

    let job = Job::start(&scratch.0, "windowed_count", (2, 1), &args(&bootstrap, &dir, false), &[]);
    // Two checkpoints committed on the interval, then a few more rounds of input so one is likely open.
    let mut rounds = 0;
    let checkpointed = || {
        if committed_checkpoints(&bootstrap, "ck.commits") >= 2 {
            rounds += 1;
        }
        rounds > 5
    };
    let live = || {
        let mut live = events_on(0, ahead, 20);
        live.extend(events_on(1, behind, 20));
        produce(&bootstrap, "ck-in", &live);
        all.extend(live);
        (ahead, behind) = (ahead + 200, behind + 200);
    };
    let job = wait_until(job, "two checkpoints committed", checkpointed, live);
    job.signal(Signal::SIGTERM);
    let stderr = job.succeed("the unbounded run stopped with SIGTERM", LONG);
    assert!(stderr.contains("taking the final checkpoint"), "no final checkpoint was taken:\n{stderr}");
    let commit = last_commit(&bootstrap, "ck.commits").expect("a commit");
    assert_eq!(commit["checkpoints"][0]["time"], commit["time"], "the last commit names the stop's checkpoint: {commit}");

    let mut more = events_on(0, ahead, 300);
    more.extend(events_on(1, behind, 300));
    produce(&bootstrap, "ck-in", &more);
    all.extend(more);
    let stderr = Job::start(&scratch.0, "windowed_count", (1, 1), &args(&bootstrap, &dir, true), &[]).succeed("the restart", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the restart restored no checkpoint:\n{stderr}");
    assert_eq!(table(&bootstrap, "ck-out"), reference(&all), "after SIGTERM, more input and the restart");
}

/// `kafka_word_count` counts with `aggregate`: its counts come back from the checkpoint, not from reading every
/// line again (with differential's `count` the restored run started from empty counts: wrong totals).
#[test]
fn word_counts_restored_from_a_checkpoint_stay_exact() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints-words");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("wc-lines", 2, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    let words = &["river", "delta", "stream", "flow", "basin", "creek"];
    let mut all = common::kafka::lines_of(words, 0, 1_000_000, 10, 2000, 1);
    all.extend(common::kafka::lines_of(words, 1, 1_000_000, 10, 2000, 2));
    produce(&bootstrap, "wc-lines", &all);

    let job = Job::start(&scratch.0, "kafka_word_count", (1, 2), &word_args(&bootstrap, &dir, false), &[]);
    let mut next: i64 = 0;
    wait_for_checkpoints(&bootstrap, "wc.commits", job, || {
        let from = 1_000_000 + 20_000 + next * 10;
        let mut live = common::kafka::lines_of(words, 0, from, 10, 10, 10 + next as u64);
        live.extend(common::kafka::lines_of(words, 1, from, 10, 10, 1000 + next as u64));
        produce(&bootstrap, "wc-lines", &live);
        all.extend(live);
        next += 10;
    });

    let from = 1_000_000 + 20_000 + next * 10;
    let mut more = common::kafka::lines_of(words, 0, from, 10, 500, 7);
    more.extend(common::kafka::lines_of(words, 1, from, 10, 500, 8));
    produce(&bootstrap, "wc-lines", &more);
    all.extend(more);
    let stderr =
        Job::start(&scratch.0, "kafka_word_count", (2, 1), &word_args(&bootstrap, &dir, true), &[]).succeed("the restored run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the restart restored no checkpoint:\n{stderr}");
    let consumed = records_read(&stderr);
    assert!(consumed < all.len() as u64, "the restored run read {consumed} lines, the whole input is {}", all.len());
    let counts: BTreeMap<String, i64> = table(&bootstrap, "wc-counts").into_iter().map(|(w, n)| (w, n.parse().expect("a count"))).collect();
    assert_eq!(counts, common::kafka::word_counts(&all), "after the restore");
}

fn order(id: u64) -> (i32, i64, Vec<u8>) {
    let ts = 1_000_000 + id * 10;
    let json = format!("{{\"order_id\":{id},\"customer_id\":{},\"amount_cents\":{},\"ts_ms\":{ts}}}", id % 8, id % 100 + 1);
    ((id % 2) as i32, ts as i64, json.into_bytes())
}

fn join_args(bootstrap: &str, dir: &std::path::Path, bounded: bool) -> Vec<String> {
    let mut args: Vec<String> =
        ["--brokers", bootstrap, "--topic", "ej-orders", "--customers-topic", "ej-customers"].map(String::from).to_vec();
    args.extend(
        ["--output-topic", "ej-out", "--output-partitions", "2", "--commit-log", "ej.commits", "--dead-letter-topic", "ej.dead"]
            .map(String::from),
    );
    args.extend(
        ["--window", "1s", "--allowed-lateness", "1h", "--idle-timeout", "500ms", "--checkpoint-interval", "300ms"].map(String::from),
    );
    args.push("--checkpoint-dir".into());
    args.push(dir.display().to_string());
    if bounded {
        args.push("--until-end".into());
    }
    args
}

/// The enriched orders (order id -> customer name) and the totals (`[customer,start]` -> cents) the job must
/// leave, for orders `0..n`.
fn join_reference(n: u64) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut enriched = BTreeMap::new();
    let mut totals: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for id in 0..n {
        let ts = 1_000_000 + id * 10;
        enriched.insert(id.to_string(), format!("customer-{}", id % 8));
        *totals.entry((id % 8, ts - ts % 1000)).or_default() += id % 100 + 1;
    }
    (enriched, totals.into_iter().map(|((c, start), sum)| (format!("[{c},{start}]"), sum.to_string())).collect())
}

fn join_outputs(bootstrap: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let enriched = table(bootstrap, "ej-out")
        .into_iter()
        .map(|(id, value)| {
            let value: serde_json::Value = serde_json::from_str(&value).expect("an enriched order");
            (id, value["name"].as_str().unwrap_or("(none)").to_owned())
        })
        .collect();
    (enriched, table(bootstrap, "ej-out.totals"))
}

/// A customer record (JSON, as `enrich_join` reads it) at `ts`.
fn customer(id: u64, ts: u64, name: &str) -> (i32, i64, Vec<u8>) {
    let json = format!("{{\"customer_id\":{id},\"ts_ms\":{ts},\"name\":\"{name}\",\"region\":\"r\"}}");
    (0, ts as i64, json.into_bytes())
}

/// Orders `next..next + n`, and a customer no order refers to, so the table's time moves on with the orders'
/// (a quiet table holds the join back).
fn live_orders(bootstrap: &str, next: &mut u64, n: u64) {
    produce(bootstrap, "ej-orders", &(*next..*next + n).map(order).collect::<Vec<_>>());
    produce(bootstrap, "ej-customers", &[customer(1000 + *next, 1_000_000 + *next * 10, "new")]);
    *next += n;
}

#[test]
fn an_enrich_join_restored_from_a_checkpoint_keeps_its_table_and_stays_exact() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints-join");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ej-orders", 2, &[]).unwrap();
    broker.create_topic("ej-customers", 1, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    produce(&bootstrap, "ej-customers", &(0..8).map(|c| customer(c, 1000, &format!("customer-{c}"))).collect::<Vec<_>>());
    produce(&bootstrap, "ej-orders", &(0..4000).map(order).collect::<Vec<_>>());

    let job = Job::start(&scratch.0, "enrich_join", (1, 1), &join_args(&bootstrap, &dir, false), &[]);
    let mut next = 4000;
    wait_for_checkpoints(&bootstrap, "ej.commits", job, || live_orders(&bootstrap, &mut next, 20));

    let total = next + 1000;
    produce(&bootstrap, "ej-orders", &(next..total).map(order).collect::<Vec<_>>());
    let stderr = Job::start(&scratch.0, "enrich_join", (2, 2), &join_args(&bootstrap, &dir, true), &[]).succeed("the restored run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the restart restored no checkpoint:\n{stderr}");
    let consumed = records_read(&stderr);
    let input = total + 8 + (total - 4000) / 20;
    assert!(consumed < input, "the restored run read {consumed} records, the whole input is {input}");
    assert_eq!(join_outputs(&bootstrap), join_reference(total));
}

#[test]
fn restores_across_layouts_give_the_output_of_one_uninterrupted_run() {
    let _serial = serial();
    let scratch = Scratch::new("checkpoints-layouts");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ck-in", 2, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    let mut all = events(1_000_000, 1000);
    produce(&bootstrap, "ck-in", &all);
    let mut next = 1000;
    let mut committed = 0;
    for (i, layout) in [(1, 1), (2, 2), (3, 2), (1, 4)].into_iter().enumerate() {
        let job = Job::start(&scratch.0, "windowed_count", layout, &args(&bootstrap, &dir, false), &[]);
        // Each run lives until a checkpoint of its own is committed, then is killed.
        committed = committed_checkpoints(&bootstrap, "ck.commits").max(committed) + 1;
        let stderr = wait_for_commits(&bootstrap, "ck.commits", committed, job, || {
            let live = events(1_000_000 + next * 10, 20);
            produce(&bootstrap, "ck-in", &live);
            all.extend(live);
            next += 20;
        });
        if i > 0 {
            assert!(stderr.contains("restoring the checkpoint"), "the run at {layout:?} restored no checkpoint:\n{stderr}");
        }
    }
    let stderr = Job::start(&scratch.0, "windowed_count", (1, 1), &args(&bootstrap, &dir, true), &[]).succeed("the last run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the last run restored no checkpoint:\n{stderr}");
    assert_eq!(table(&bootstrap, "ck-out"), reference(&all));
}

/// The processes the launcher runs now, once they are `n` and none of `old`.
fn next_cluster(launcher: i32, n: usize, old: &std::collections::BTreeSet<i32>) -> std::collections::BTreeSet<i32> {
    let deadline = Instant::now() + LONG;
    loop {
        let now = common::children(launcher);
        if now.len() == n && now.is_disjoint(old) {
            return now;
        }
        assert!(Instant::now() < deadline, "no new cluster of {n} processes under the launcher: {now:?} (old {old:?})");
        // Polling /proc is how the test sees the launcher restart the cluster.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a process and its descendants when dropped (a test that fails leaves nothing running).
struct KillTree(i32);

impl Drop for KillTree {
    fn drop(&mut self) {
        if std::thread::panicking() {
            common::kill_tree(self.0);
        }
    }
}

/// Stops the launcher and fails with `why` and the end of its stderr.
fn give_up(launcher: common::Running, why: &str) -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher.pid), Signal::SIGTERM);
    let (_, stderr) = launcher.wait(LONG);
    let lines: Vec<&str> = stderr.lines().collect();
    panic!("{why}; the launcher's last lines:\n{}", lines[lines.len().saturating_sub(200)..].join("\n"));
}

/// How many orders the kill test starts with: the issue asks for at least a million records.
const KILL_TEST_ORDERS: u64 = 1_000_000;

/// `launch --restart on-failure` at 3x2 with checkpoints over a million orders (the release binary: a debug
/// cluster and the broker would share 2 cores for many minutes), orders arriving all along: ten SIGKILLs of a
/// random process at random moments, one as soon as a restarted cluster is up (during its restore), two within
/// a second; then the launcher is stopped and a bounded run catches up. The enriched orders and the totals equal
/// the reference: nothing lost, nothing doubled.
#[test]
fn ten_random_kills_under_launch_restart_on_failure_lose_and_duplicate_nothing() {
    let _serial = serial();
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let scratch = Scratch::new("checkpoints-kills");
    let broker = sqlite_broker(&scratch.0);
    broker.create_topic("ej-orders", 2, &[]).unwrap();
    broker.create_topic("ej-customers", 1, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    produce(&bootstrap, "ej-customers", &(0..8).map(|c| customer(c, 1000, &format!("customer-{c}"))).collect::<Vec<_>>());
    let mut next = KILL_TEST_ORDERS;
    for chunk in (0..next).collect::<Vec<_>>().chunks(100_000) {
        produce(&bootstrap, "ej-orders", &chunk.iter().copied().map(order).collect::<Vec<_>>());
    }
    let live = |next: &mut u64, n: u64| {
        live_orders(&bootstrap, next, n);
        // The pace of a live stream (about 1,000 orders a second), not a wait for anything.
        std::thread::sleep(Duration::from_millis(50));
    };
    let program = common::release_example("enrich_join");
    let launch = std::process::Command::new(common::launcher())
        .args(["launch", "-n", "3", "-w", "2", "--restart", "on-failure", "--max-restarts", "20", "--restart-delay", "100ms", "--"])
        .arg(&program)
        .args(join_args(&bootstrap, &dir, false))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let launcher = common::Running::new(launch);
    // A failing assertion must not leave the launcher restarting clusters behind the test.
    let _kill_on_failure = KillTree(launcher.pid);
    let mut seed = 0x5eed_u64;
    let mut random = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut cluster = next_cluster(launcher.pid, 3, &Default::default());
    // Kills that found their cluster already gone (it failed by itself: the launcher's log says why) are
    // tried again on the cluster the launcher started instead, so ten kills land.
    let mut missed = 0;
    let mut kill_number = 0;
    while kill_number < 10 {
        // Kill 3 hits a cluster as soon as it is up (restoring); kills 6 and 7 come within a second.
        let wait_ms = match kill_number {
            3 | 7 => 0,
            6 => 300,
            _ => random(1500),
        };
        if wait_ms > 0 {
            // Most kills come after the cluster committed a checkpoint of its own, so restarts restore.
            let before = committed_checkpoints(&bootstrap, "ej.commits");
            // The first cluster commits its first checkpoint once its output up to it is written: with a
            // million records of backlog, most of them.
            let deadline = Instant::now() + if kill_number == 0 { 4 * LONG } else { LONG };
            while committed_checkpoints(&bootstrap, "ej.commits") <= before {
                if Instant::now() > deadline {
                    give_up(launcher, &format!("cluster {kill_number} committed no checkpoint within {LONG:?}"));
                }
                live(&mut next, 50);
            }
        }
        let until = Instant::now() + Duration::from_millis(wait_ms);
        while Instant::now() < until {
            live(&mut next, 50);
        }
        let victims: Vec<i32> = cluster.iter().copied().collect();
        let victim = victims[random(victims.len() as u64) as usize];
        match kill(Pid::from_raw(victim), Signal::SIGKILL) {
            Ok(()) => kill_number += 1,
            Err(nix::errno::Errno::ESRCH) => missed += 1,
            Err(e) => panic!("cannot kill process {victim} of the cluster: {e}"),
        }
        cluster = next_cluster(launcher.pid, 3, &cluster);
    }
    // The last cluster runs until it has committed a checkpoint of its own.
    let before = committed_checkpoints(&bootstrap, "ej.commits");
    let deadline = Instant::now() + LONG;
    while committed_checkpoints(&bootstrap, "ej.commits") <= before {
        if Instant::now() > deadline {
            give_up(launcher, &format!("the last cluster committed no checkpoint within {LONG:?}"));
        }
        live(&mut next, 50);
    }
    kill(Pid::from_raw(launcher.pid), Signal::SIGTERM).expect("stop the launcher");
    let (status, stderr) = launcher.wait(LONG);
    assert!(status.success(), "the launcher, stopped with SIGTERM after the kills: {status}\n{stderr}");
    let failures: Vec<&str> = stderr.lines().filter(|l| l.contains("tributary_runtime::launch") && !l.contains("INFO")).collect();
    // A process that exited other than by our SIGKILL failed by itself: say why, from its own error lines.
    let by_themselves = failures.iter().filter(|l| l.contains("exited with") && !l.contains("code 137")).count();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ") || l.contains("Error:") || l.contains("panicked")).collect();
    eprintln!(
        "{by_themselves} clusters failed by themselves ({missed} kills found theirs gone); the launcher's warnings:\n{}\nthe error lines:\n{}",
        failures.join("\n"),
        errors.join("\n")
    );
    // Every kill restarted the cluster, and so did every failure of its own (a kill that hit a cluster already
    // failing by itself shares its restart).
    let restarts = stderr.matches("restarting the cluster").count();
    assert!(
        (10..=10 + by_themselves).contains(&restarts),
        "{restarts} restarts for ten kills and {by_themselves} failures (the launcher's warnings above)"
    );
    assert!(stderr.contains("restoring the checkpoint"), "no restarted cluster restored a checkpoint:\n{stderr}");
    let program = program.display().to_string();
    let stderr = Job::start(&scratch.0, &program, (1, 2), &join_args(&bootstrap, &dir, true), &[]).succeed("the bounded run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the bounded run restored no checkpoint:\n{stderr}");
    assert!(next > KILL_TEST_ORDERS, "orders arrived while the kills went on");
    assert_eq!(join_outputs(&bootstrap), join_reference(next), "after ten kills and a bounded run");
}

/// One exit of a supervised process: its host, when, how, and its stderr.
struct Exit {
    host: usize,
    at: Instant,
    status: std::process::ExitStatus,
    stderr: String,
}

/// Per host a supervisor as systemd's `Restart=on-failure` is (one unit per host, nothing shared between
/// them): it starts the host's process, and starts it again 200 ms after it fails, until told to stop.
struct Supervisors {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    running: std::sync::Arc<std::sync::Mutex<Vec<Option<i32>>>>,
    exits: std::sync::mpsc::Receiver<Exit>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Supervisors {
    /// A test that fails leaves no process restarting: stop supervising and kill every process group.
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            while !thread.is_finished() {
                for &pid in self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().flatten() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = thread.join();
        }
    }
}

impl Supervisors {
    fn start(hosts: usize, command: impl Fn(usize) -> std::process::Command + Send + Sync + 'static) -> Supervisors {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = Arc::new(Mutex::new(vec![None; hosts]));
        let (tx, exits) = std::sync::mpsc::channel();
        let command = Arc::new(command);
        let threads = (0..hosts)
            .map(|host| {
                let (stop, running, tx, command) = (Arc::clone(&stop), Arc::clone(&running), tx.clone(), Arc::clone(&command));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let mut child = command(host)
                            .process_group(0)
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::piped())
                            .spawn()
                            .expect("start a host's process");
                        running.lock().unwrap()[host] = Some(child.id() as i32);
                        let mut stderr = String::new();
                        let _ = child.stderr.take().expect("stderr piped").read_to_string(&mut stderr);
                        let status = child.wait().expect("wait for a host's process");
                        running.lock().unwrap()[host] = None;
                        let _ = tx.send(Exit { host, at: Instant::now(), status, stderr });
                        if status.success() {
                            break;
                        }
                        // systemd's RestartSec: the supervisor's policy, not a synchronisation.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            })
            .collect();
        Supervisors { stop, running, exits, threads }
    }

    /// The process running on `host` now, waiting up to `LONG` for one.
    fn pid(&self, host: usize) -> i32 {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(pid) = self.running.lock().unwrap()[host] {
                return pid;
            }
            assert!(Instant::now() < deadline, "host {host} ran no process within {LONG:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every host's process has exited once since `since`, producing more input meanwhile; returns
    /// the first exit of each host after `since`.
    fn wait_all_exit(&self, since: Instant, within: Duration, mut more: impl FnMut()) -> Vec<Exit> {
        let mut first: Vec<Option<Exit>> = (0..self.threads.len()).map(|_| None).collect();
        let deadline = Instant::now() + within;
        while first.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exits.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(exit) if exit.at >= since && first[exit.host].is_none() => {
                    let host = exit.host;
                    first[host] = Some(exit);
                }
                Ok(_) => {}
                Err(_) if left.is_zero() => {
                    let missing: Vec<usize> = (0..first.len()).filter(|h| first[*h].is_none()).collect();
                    panic!("the processes of hosts {missing:?} did not stop within {within:?}");
                }
                Err(_) => more(),
            }
        }
        first.into_iter().flatten().collect()
    }

    /// Stops supervising and the processes (SIGTERM); returns the stderr of every exit seen.
    fn stop(mut self) -> String {
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut stderr = String::new();
        let deadline = Instant::now() + LONG;
        let mut signalled = std::collections::BTreeSet::new();
        for thread in std::mem::take(&mut self.threads) {
            while !thread.is_finished() {
                // Once each: a second SIGTERM stops a process without its graceful shutdown.
                for &pid in self.running.lock().unwrap().iter().flatten() {
                    if signalled.insert(pid) {
                        let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
                    }
                }
                if Instant::now() > deadline {
                    for pid in self.running.lock().unwrap().iter().flatten() {
                        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = thread.join();
        }
        for exit in self.exits.try_iter() {
            stderr.push_str(&exit.stderr);
        }
        stderr
    }
}

#[test]
fn three_hosts_survive_a_cut_link_and_a_killed_process_under_their_supervisors_exactly() {
    let _serial = serial();
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    const TEST: &str = "checkpoints::three_hosts_survive_a_cut_link_and_a_killed_process_under_their_supervisors_exactly";
    let network = match common::netns::Network::create(4) {
        Ok(network) => network,
        Err(why) if why.contains("cannot run `ip`") || why.contains("Operation not permitted") => {
            return common::skip(TEST, &format!("cannot create network namespaces here ({why})"));
        }
        Err(why) => panic!("creating the test's network namespaces failed: {why}"),
    };
    let scratch = Scratch::new("checkpoints-hosts");
    // The broker is the fourth host.
    let broker_address = std::net::SocketAddr::from((network.address(3), tributary_testkit::free_port().unwrap()));
    let broker = tributary_testkit::Broker::start_in_netns(
        tributary_testkit::Storage::Sqlite("broker.db".into()),
        &scratch.0.join("broker"),
        network.netns(3),
        broker_address,
    )
    .unwrap_or_else(|e| panic!("cannot start the test broker in its namespace: {e:#}"));
    broker.create_topic("ej-orders", 2, &[]).unwrap();
    broker.create_topic("ej-customers", 1, &[]).unwrap();
    let bootstrap = broker.bootstrap();
    let dir = scratch.0.join("checkpoints");
    produce(&bootstrap, "ej-customers", &(0..8).map(|c| customer(c, 1000, &format!("customer-{c}"))).collect::<Vec<_>>());
    let mut next = 20_000;
    produce(&bootstrap, "ej-orders", &(0..next).map(order).collect::<Vec<_>>());
    let port = tributary_testkit::free_port().unwrap();
    let addresses: Vec<std::net::SocketAddr> = (0..3).map(|h| std::net::SocketAddr::from((network.address(h), port))).collect();
    let hostfile = common::write_hostfile(&scratch.0, &addresses);
    let peer_timeout = Duration::from_secs(3);
    let mut args = join_args(&bootstrap, &dir, false);
    args.extend(["--workers", "2", "--processes", "3", "--hostfile"].map(String::from));
    args.push(hostfile.display().to_string());
    args.extend(["--peer-timeout".to_owned(), humantime::format_duration(peer_timeout).to_string()]);
    let network = std::sync::Arc::new(network);
    let net = std::sync::Arc::clone(&network);
    let supervisors = Supervisors::start(3, move |host| {
        let mut command = net.command(host, &common::example("enrich_join"));
        command.args(&args).args(["--process", &host.to_string()]);
        command
    });
    let live = |next: &mut u64| live_orders(&bootstrap, next, 50);
    let wait_for_checkpoint = |what: &str, next: &mut u64| {
        let before = committed_checkpoints(&bootstrap, "ej.commits");
        let deadline = Instant::now() + LONG;
        while committed_checkpoints(&bootstrap, "ej.commits") <= before {
            assert!(Instant::now() < deadline, "{what}: no checkpoint committed within {LONG:?}");
            live(next);
        }
    };
    wait_for_checkpoint("the first cluster", &mut next);

    // Host 2's link fails: no reset reaches anyone, only the heartbeats stop. Every process stops with a
    // message naming the peer it lost, within the peer timeout and a margin.
    let cut = Instant::now();
    network.set_link(2, false);
    let exits = supervisors.wait_all_exit(cut, peer_timeout + Duration::from_secs(30), || {});
    for exit in &exits {
        assert!(!exit.status.success(), "host {} exited {} after the cut", exit.host, exit.status);
        assert!(
            exit.stderr.contains("sent no heartbeat") || exit.stderr.contains("lost its connection"),
            "host {} stopped without naming the lost peer:\n{}",
            exit.host,
            exit.stderr
        );
        eprintln!("host {} stopped {:?} after the cut", exit.host, exit.at - cut);
    }
    network.set_link(2, true);
    wait_for_checkpoint("the cluster after the cut", &mut next);

    // Host 1's process is killed: the others see the connection close and stop at once.
    let killed = Instant::now();
    kill(Pid::from_raw(supervisors.pid(1)), Signal::SIGKILL).expect("kill host 1's process");
    let exits = supervisors.wait_all_exit(killed, peer_timeout + Duration::from_secs(30), || {});
    for exit in exits.iter().filter(|e| e.host != 1) {
        let named = exit
            .stderr
            .lines()
            .any(|l| l.contains("process 1") && (l.contains("lost its connection") || l.contains("closed its connection")));
        assert!(named, "host {} stopped without naming process 1 as lost:\n{}", exit.host, exit.stderr);
        eprintln!("host {} stopped {:?} after the kill", exit.host, exit.at - killed);
    }
    wait_for_checkpoint("the cluster after the kill", &mut next);

    let stderr = supervisors.stop();
    assert!(stderr.contains("restoring the checkpoint"), "no restarted cluster restored a checkpoint:\n{stderr}");
    let stderr = Job::start(&scratch.0, "enrich_join", (1, 2), &join_args(&bootstrap, &dir, true), &[]).succeed("the bounded run", LONG);
    assert!(stderr.contains("restoring the checkpoint"), "the bounded run restored no checkpoint:\n{stderr}");
    assert_eq!(join_outputs(&bootstrap), join_reference(next), "after a cut link, a kill and a bounded run");
}
