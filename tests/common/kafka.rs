//! Helpers for tests that run jobs against a real broker: producing with explicit partitions and timestamps,
//! reading topics back, reading them as tables and changelogs, and running example jobs as 1 or more processes
//! that can be signalled.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Timestamp;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_testkit::{Broker, Storage};

use super::{Running, example, free_addresses, write_hostfile};

/// A record read back: key, value (`None`: a tombstone), timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
}

/// `count` lines of words from `vocabulary` on `partition` with timestamps `from, from + step, ...`, drawn
/// from `seed`: `(partition, timestamp, bytes)`, as [`produce`] takes them.
pub fn lines_of(vocabulary: &[&str], partition: i32, from: i64, step: i64, count: usize, seed: u64) -> Vec<(i32, i64, Vec<u8>)> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..count)
        .map(|i| {
            let n = 1 + next() % 4;
            let line = (0..n).map(|_| vocabulary[next() % vocabulary.len()]).collect::<Vec<_>>().join(" ");
            (partition, from + i as i64 * step, line.into_bytes())
        })
        .collect()
}

/// The word counts of lines (words separated by single spaces), as `kafka_word_count` computes them.
pub fn word_counts(lines: &[(i32, i64, Vec<u8>)]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for (_, _, bytes) in lines {
        for word in std::str::from_utf8(bytes).expect("text lines").split(' ').filter(|w| !w.is_empty()) {
            *counts.entry(word.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// A broker on the sqlite engine (exact offsets and ends), in `dir`.
pub fn sqlite_broker(dir: &Path) -> Broker {
    Broker::start(Storage::Sqlite("broker.db".into()), &dir.join("broker"))
        .unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"))
}

/// Produces `(partition, timestamp, bytes)` records to `topic` and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, records: &[(i32, i64, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("producer");
    for (partition, timestamp, bytes) in records {
        let mut record = BaseRecord::<(), _>::to(topic).partition(*partition).timestamp(*timestamp).payload(bytes);
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
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// How long a metadata or offsets request may take: a sqlite broker busy with a large job answers slowly.
const BROKER_ANSWER: Duration = Duration::from_secs(60);

/// A consumer for reading topics to their end (no group, fetches answered at once).
fn reader(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer")
}

/// The number of partitions of `topic` (0 if it does not exist).
pub fn partitions(bootstrap: &str, topic: &str) -> i32 {
    partitions_with(&reader(bootstrap), topic)
}

fn partitions_with(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer.fetch_metadata(Some(topic), BROKER_ANSWER).expect("metadata");
    metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len() as i32)
}

/// The number of records in `topic` (sum of partition ends).
pub fn size(bootstrap: &str, topic: &str) -> i64 {
    let consumer = reader(bootstrap);
    (0..partitions_with(&consumer, topic)).map(|p| consumer.fetch_watermarks(topic, p, BROKER_ANSWER).expect("watermarks").1).sum()
}

/// Waits until `topic` holds at least `at_least` records.
pub fn wait_for_records(bootstrap: &str, topic: &str, at_least: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if partitions(bootstrap, topic) > 0 && size(bootstrap, topic) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} did not reach {at_least} records within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record of every partition of `topic`, in offset order per partition.
pub fn read(bootstrap: &str, topic: &str) -> Vec<Vec<Record>> {
    let consumer = reader(bootstrap);
    let count = partitions_with(&consumer, topic);
    let mut out = vec![Vec::new(); count as usize];
    // All partitions at once: the fetches run in parallel.
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in 0..count {
        let (low, high) = consumer.fetch_watermarks(topic, partition, BROKER_ANSWER).expect("watermarks");
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
        ends.push(high);
    }
    if assignment.count() == 0 {
        return out;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next: Vec<i64> = vec![0; count as usize];
    let done = |next: &[i64]| next.iter().zip(&ends).all(|(n, e)| n >= e);
    while !done(&next) {
        assert!(Instant::now() < deadline, "reading {topic}: stuck at {next:?} of {ends:?}");
        // Connection errors are transient (librdkafka reconnects); the deadline ends the read.
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) else { continue };
        let partition = message.partition() as usize;
        next[partition] = message.offset() + 1;
        let timestamp = match message.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            Timestamp::NotAvailable => None,
        };
        out[partition].push(Record { key: message.key().map(<[u8]>::to_vec), value: message.payload().map(<[u8]>::to_vec), timestamp });
    }
    out
}

/// An upsert topic read as a table: the latest value per key, keys whose latest record is a tombstone removed.
pub fn table(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for record in read(bootstrap, topic).into_iter().flatten() {
        let key = String::from_utf8(record.key.expect("upserts are keyed")).expect("utf-8 key");
        match record.value {
            Some(value) => table.insert(key, String::from_utf8(value).expect("utf-8 value")),
            None => table.remove(&key),
        };
    }
    table
}

/// A changelog topic summed: per key and value (as JSON text), the sum of the diffs, zeros removed.
pub fn changelog(bootstrap: &str, topic: &str) -> BTreeMap<(String, String), i64> {
    let mut sums: BTreeMap<(String, String), i64> = BTreeMap::new();
    for record in read(bootstrap, topic).into_iter().flatten() {
        let key = String::from_utf8(record.key.expect("changes are keyed")).expect("utf-8 key");
        let envelope: serde_json::Value = serde_json::from_slice(&record.value.expect("a changelog has no tombstones")).expect("JSON");
        *sums.entry((key, envelope["value"].to_string())).or_default() += envelope["diff"].as_i64().expect("diff");
    }
    sums.retain(|_, n| *n != 0);
    sums
}

/// An example job running as `processes` processes of `workers` workers each (a host file with free ports).
/// Processes not waited for are killed when it is dropped, so a failing test leaves none behind.
pub struct Job {
    pub processes: Vec<Running>,
}

impl Drop for Job {
    fn drop(&mut self) {
        for process in &self.processes {
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
    }
}

impl Job {
    /// Starts `name` (an example, or an absolute path to a program) with `args` as `processes` x `workers`;
    /// `env` is set for every process.
    pub fn start(dir: &Path, name: &str, (processes, workers): (usize, usize), args: &[String], env: &[(&str, &str)]) -> Job {
        let program = if Path::new(name).is_absolute() { Path::new(name).to_path_buf() } else { example(name) };
        let hostfile = write_hostfile(dir, &free_addresses(processes));
        let running = (0..processes)
            .map(|process| {
                let mut command = Command::new(&program);
                command.args(args).args(["--workers", &workers.to_string()]);
                if processes > 1 {
                    command
                        .args(["--processes", &processes.to_string(), "--process", &process.to_string()])
                        .arg("--hostfile")
                        .arg(&hostfile);
                }
                command.env_remove("TRIBUTARY_FAILPOINT").envs(env.iter().copied());
                Running::new(
                    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn a job process"),
                )
            })
            .collect();
        Job { processes: running }
    }

    /// Takes the processes out, to wait for them one by one (they are then no longer killed on drop).
    pub fn into_processes(mut self) -> Vec<Running> {
        std::mem::take(&mut self.processes)
    }

    /// Sends `signal` to every process.
    pub fn signal(&self, signal: Signal) {
        for process in &self.processes {
            let _ = kill(Pid::from_raw(process.pid), signal);
        }
    }

    /// Waits for every process; returns their exit statuses and stderr, all joined.
    pub fn wait(mut self, timeout: Duration) -> (Vec<ExitStatus>, String) {
        let mut statuses = Vec::new();
        let mut stderr = String::new();
        for (i, process) in std::mem::take(&mut self.processes).into_iter().enumerate() {
            let (status, err) = process.wait(timeout);
            statuses.push(status);
            stderr.push_str(&format!("--- process {i} ({status}) ---\n{err}"));
        }
        (statuses, stderr)
    }

    /// Waits for every process after a SIGTERM: each must have stopped cleanly, or have been stopped by the signal
    /// itself (one that arrives while the program is still setting up, before it handles signals).
    pub fn stopped(self, what: &str, timeout: Duration) -> String {
        use std::os::unix::process::ExitStatusExt;
        let (statuses, stderr) = self.wait(timeout);
        // A process still connecting to its peers stops with an error that says so.
        let interrupted = stderr.matches("stopped by SIGTERM while connecting to the peer processes").count();
        let failed = statuses.iter().filter(|s| !s.success() && s.signal() != Some(Signal::SIGTERM as i32)).count();
        assert!(failed <= interrupted, "{what} failed:\n{stderr}");
        stderr
    }

    /// Waits for every process and fails the test unless all succeeded.
    pub fn succeed(self, what: &str, timeout: Duration) -> String {
        let (statuses, stderr) = self.wait(timeout);
        assert!(statuses.iter().all(ExitStatus::success), "{what} failed:\n{stderr}");
        stderr
    }
}
