//! Exactly-once jobs: the one commit point that ties source positions, time state and sink progress together.
//!
//! A [`CommitLog`](crate::kafka::CommitLog) (a compacted Kafka topic, one record per commit) holds the job's
//! latest [`Commit`]: a time `T` such that every output at times up to `T` is in the output topics; per input
//! partition, from which offset on its records travel after `T` and what the wall clock decided about the
//! records before (lifts, rejections: [`PartitionHistory`](tributary_operators::event_time::PartitionHistory));
//! per output partition, the offset where the output consistent with `T` ends. Nothing else is a commit point.
//!
//! In each worker's dataflow a [`Job`] connects the pieces: sources built through [`Job::source`] send their
//! control streams (snapshots, drains) to it and get the stored state back on a restart; sinks take the sources'
//! drains (to write or withhold the times a drain left unfinished) and report what Kafka has acknowledged; and
//! a coordinator on worker 0 ([`coordinator`]) combines both into commits, written every commit interval and
//! once more when the dataflow ends. The protocol and what it promises: `docs/exactly-once.md`.

mod coordinator;

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concatenate, Inspect, Probe, ToStream};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::dead_letter::{DeadLetter, DeadLetterLog};
use crate::kafka::{AdminError, CommitLog, CommitLogError, Delivery, KafkaConfig, KafkaSink, SinkDeadLetters, SinkError};
use crate::source::{CommitAfter, Control, PartitionSnapshot, Source, SourceOptions, SourceResume, SourceStreams};

/// One commit: everything a restart needs to continue the job's output exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The record format (1).
    pub version: u32,
    /// Counts the runs that wrote commits; each run writes `previous + 1`.
    pub run: u64,
    /// Every output at times up to this one is in the output topics.
    pub time: u64,
    /// Per input partition: where its records come after `time`, and its recorded time state.
    pub sources: Vec<PartitionSnapshot>,
    /// Per output partition: where the output consistent with `time` ends.
    pub sinks: Vec<SinkPosition>,
    /// The checkpoints a restart may restore, newest first (at most two; none without `--checkpoint-dir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointRef>,
}

/// A checkpoint a commit names: its time, every worker's part (by its fingerprint), and where each input
/// partition's records after its time begin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The run that wrote it.
    pub generation: u64,
    /// The state in it holds every input at times up to this one.
    pub time: u64,
    /// Per worker of the run that wrote it, the checksum of its part's manifest.
    pub parts: Vec<u32>,
    /// Per input partition, its snapshot as of `time` (its `resume` point is where a restore reads from).
    pub sources: Vec<PartitionSnapshot>,
}

impl CheckpointRef {
    pub(crate) fn id(&self) -> tributary_runtime::checkpoint::CheckpointId {
        tributary_runtime::checkpoint::CheckpointId { generation: self.generation, time: self.time }
    }

    /// Reads and verifies every worker's part from `dir`.
    pub(crate) fn load(&self, dir: &std::path::Path) -> Result<tributary_operators::checkpoint::Restored, String> {
        let mut restored = tributary_operators::checkpoint::Restored { time: self.time, parts: Default::default() };
        for (worker, fingerprint) in self.parts.iter().enumerate() {
            let store = tributary_runtime::checkpoint::CheckpointStore::open(dir, worker).map_err(|e| e.to_string())?;
            let loaded = store.load(self.id(), *fingerprint).map_err(|e| e.to_string())?;
            for (name, contents) in loaded.files {
                restored.parts.entry(name).or_default().push(contents);
            }
        }
        Ok(restored)
    }
}

impl Commit {
    /// The current record format.
    pub const VERSION: u32 = 1;

    /// The stored position of output partition `partition` of `topic`.
    pub fn sink(&self, topic: &str, partition: i32) -> Option<&SinkPosition> {
        self.sinks.iter().find(|s| s.topic == topic && s.partition == partition)
    }
}

/// Where an output partition's committed content ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SinkPosition {
    /// The output topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The records before this offset are the output up to time `base`; what follows was written later (by this
    /// run or one that was interrupted) and is reconciled by the next run.
    pub offset: i64,
    /// The time the records before `offset` are consistent with; `None`: none (reconcile everything).
    pub base: Option<u64>,
}

/// What a sink tells the coordinator once Kafka has acknowledged a time's records: a [`SinkPosition`].
pub(crate) type SinkProgress = SinkPosition;

/// What reaches the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A source's control message.
    Control(Control),
    /// A sink's acknowledged position.
    Sink(SinkProgress),
    /// Which commit a worker resumed from (the commit log offset), so processes that read different commits are
    /// caught before they write anything.
    Resumed { worker: usize, commit: Option<i64>, checkpoint: Option<u64> },
}

/// A job's exactly-once plumbing in one worker's dataflow. Build sources with [`Job::source`], then sinks
/// (`sink_kafka(name, &sink, &job)`); the coordinator is built when the `Job` is dropped at the end of the
/// dataflow closure, or by [`Job::finish`], which returns a probe that passes a time once it is committed.
///
/// ```no_run
/// use tributary_connectors::kafka::{CommitLog, Decoder, EventTime, KafkaConfig, KafkaSink, KafkaSource, SinkKafka};
/// use tributary_connectors::SourceOptions;
/// use differential_dataflow::AsCollection;
///
/// let config = KafkaConfig::new("127.0.0.1:9092")?;
/// let log = CommitLog::open(config.clone(), "lengths.commits")?;
/// let source = KafkaSource::new(config.clone(), &["lines"], Decoder::utf8(), EventTime::KafkaTimestamp)?;
/// let sink = KafkaSink::<String, usize>::json(config, "lengths").open(&log)?;
/// timely::execute_directly(move |worker| {
///     let done = worker.dataflow::<u64, _, _>(|scope| {
///         let job = log.job(scope);
///         let lines = job.source(&source, SourceOptions::default());
///         let lengths = lines.records.as_collection().map(|line| (line.value.clone(), line.value.len()));
///         lengths.sink_kafka("Lengths", &sink, &job);
///         job.finish()
///     });
///     worker.step_while(|| !done.done());
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A program that prints its results instead (files, or bounded Kafka input without an output topic) builds the
/// same dataflow with [`Job::without_commits`]: sources and dead letters are handled alike, and the dead letters
/// are logged.
pub struct Job<'scope> {
    scope: Scope<'scope, u64>,
    /// `None`: a job without commits ([`Job::without_commits`]).
    log: Option<CommitLog>,
    /// The worker's checkpoint registry, if the job takes checkpoints.
    checkpoints: Option<tributary_operators::checkpoint::Checkpoints>,
    state: RefCell<JobState<'scope>>,
}

struct JobState<'scope> {
    controls: Vec<Stream<'scope, u64, Vec<Control>>>,
    /// The sources' controls broadcast to every worker, once a sink asked for them.
    broadcast: Option<Stream<'scope, u64, Vec<Control>>>,
    progress: Vec<Stream<'scope, u64, Vec<SinkProgress>>>,
    commits: Vec<CommitAfter>,
    written: Vec<ProbeHandle<u64>>,
    finished: Option<ProbeHandle<u64>>,
    /// Where the job's dead letters go (see [`Job::dead_letters_to`]).
    dead_letter_sink: Option<KafkaSink<String, DeadLetter>>,
    /// Dead letters to write there when the job is finished.
    dead: Vec<Stream<'scope, u64, Vec<DeadLetter>>>,
    /// Whether `dead` went to the dead-letter sink already.
    dead_letters_routed: bool,
}

impl<'scope> Job<'scope> {
    fn new(scope: Scope<'scope, u64>, log: Option<CommitLog>) -> Self {
        let state = JobState {
            controls: Vec::new(),
            broadcast: None,
            progress: Vec::new(),
            commits: Vec::new(),
            written: Vec::new(),
            finished: None,
            dead_letter_sink: None,
            dead: Vec::new(),
            dead_letters_routed: false,
        };
        let settings = log.as_ref().filter(|l| l.delivery() == Delivery::ExactlyOnce).and_then(|l| l.checkpoint_settings().cloned());
        let checkpoints = settings.map(|settings| {
            let restored = settings.restored.as_ref().map(|(_, state)| state.clone());
            let registry = tributary_operators::checkpoint::Checkpoints::install(restored);
            registry.set_interval(settings.interval);
            if let Some(commit) = log.as_ref().and_then(CommitLog::latest) {
                registry.set_min_time(commit.time);
            }
            registry
        });
        Job { scope, log, checkpoints, state: RefCell::new(state) }
    }

    /// A job without a commit log, for a program that prints its results: [`Job::source`] builds sources from
    /// their start, [`Job::dead_letter`] and the sources' dead letters are logged (the first ten of each worker in full,
    /// the rest counted by reason every few seconds: nothing else keeps them), and [`Job::finish`] returns a probe that is done once the sources and dead letters are. Kafka
    /// sinks need a job with a commit log ([`CommitLog::job`]).
    ///
    /// ```
    /// use tributary_connectors::{DeadLetter, Job, Reason};
    /// use timely::dataflow::operators::ToStream;
    ///
    /// timely::execute_directly(|worker| {
    ///     let done = worker.dataflow::<u64, _, _>(|scope| {
    ///         let job = Job::without_commits(scope);
    ///         let reason = Reason::Malformed { error: "not JSON".into() };
    ///         let letter = DeadLetter { source: "lines".into(), partition: 0, offset: 3, reason, key: None, payload: None };
    ///         // Logged at WARN with its origin and reason.
    ///         job.dead_letter(vec![letter].to_stream(scope).container::<Vec<_>>());
    ///         job.finish()
    ///     });
    ///     worker.step_while(|| !done.done());
    /// });
    /// ```
    pub fn without_commits(scope: Scope<'scope, u64>) -> Self {
        Job::new(scope, None)
    }

    /// The scope the job's dataflow is built in.
    pub fn scope(&self) -> Scope<'scope, u64> {
        self.scope
    }

    /// The commit log the job resumes from and writes to (`None` for [`Job::without_commits`]).
    pub fn log(&self) -> Option<&CommitLog> {
        self.log.as_ref()
    }

    /// Builds `source` in the job's dataflow: on a restart it gets back what the last commit recorded of its
    /// partitions, and its positions and time state go into the job's commits.
    ///
    /// # Panics
    /// If a sink was built already: build every source of a job before its sinks.
    pub fn source<S: Source + ?Sized>(&self, source: &S, options: SourceOptions) -> SourceStreams<'scope, S::Item> {
        let mut options = options;
        if let Some(log) = &self.log {
            let commit = log.latest();
            let mut resume = SourceResume::new(commit.map(|c| c.time), commit.map(|c| c.sources.clone()).unwrap_or_default());
            if let (Some(settings), Some(_)) = (log.checkpoint_settings(), &self.checkpoints) {
                resume.store = Some((settings.dir.clone(), commit.map_or(1, |c| c.run.saturating_add(1))));
                resume.restored = settings.restored.as_ref().map(|(checkpoint, _)| {
                    let points = checkpoint.sources.iter().filter_map(|s| s.resume.map(|point| (s.key.clone(), point))).collect();
                    (checkpoint.time, std::sync::Arc::new(points))
                });
            }
            options.resume = Some(resume);
        }
        let streams = source.build(self.scope, options);
        let mut state = self.state.borrow_mut();
        assert!(state.broadcast.is_none(), "Job::source after a sink: build every source of a job before its sinks");
        state.controls.push(streams.control.clone());
        state.commits.push(streams.commits.clone());
        state.dead.push(streams.dead_letters.clone());
        streams
    }

    /// Sends the job's dead letters to `sink`: every source's (malformed, too late, too far ahead), every Kafka
    /// sink's refused records, and whatever [`Job::dead_letter`] adds, written exactly once like the other
    /// outputs when the job is finished. The first ten of each worker are also logged at WARN with their origin
    /// and reason, the rest counted by reason in a line every few seconds. The streams in [`SourceStreams::dead_letters`] and
    /// [`Written::refused`](crate::kafka::Written::refused) stay available to count or log: do not write them
    /// to the sink again.
    ///
    /// # Panics
    /// If a source was built already: set it first, `log.job(scope).dead_letters_to(&sink)`.
    pub fn dead_letters_to(self, sink: &KafkaSink<String, DeadLetter>) -> Self {
        {
            let mut state = self.state.borrow_mut();
            assert!(state.controls.is_empty(), "Job::dead_letters_to after Job::source: set the dead-letter sink first");
            state.dead_letter_sink = Some(sink.clone());
        }
        self
    }

    /// Adds dead letters of the program's own (e.g. a window's late records, [`DeadLetter::late`]) to the
    /// job's dead letters (see [`Job::dead_letters_to`]).
    pub fn dead_letter(&self, letters: Stream<'scope, u64, Vec<DeadLetter>>) {
        self.state.borrow_mut().dead.push(letters);
    }

    /// A Kafka sink's refused records, for the job's dead letters.
    pub(crate) fn route_refused(&self, refused: Stream<'scope, u64, Vec<DeadLetter>>) {
        let mut state = self.state.borrow_mut();
        if !state.dead_letters_routed {
            state.dead.push(refused);
        }
    }

    /// The sources' control messages, at every worker (for sinks).
    pub(crate) fn controls(&self) -> Stream<'scope, u64, Vec<Control>> {
        let mut state = self.state.borrow_mut();
        let controls = state.controls.clone();
        state.broadcast.get_or_insert_with(|| self.scope.concatenate(controls).broadcast()).clone()
    }

    /// Registers a sink: its acknowledged positions, and the probe that passes the times it has written.
    pub(crate) fn add_sink(&self, progress: Stream<'scope, u64, Vec<SinkProgress>>, written: ProbeHandle<u64>) {
        assert!(self.log.is_some(), "a Kafka sink needs a job with a commit log (CommitLog::job), not Job::without_commits");
        let mut state = self.state.borrow_mut();
        assert!(state.finished.is_none(), "a sink was added to a job after Job::finish");
        state.progress.push(progress);
        state.written.push(written);
    }

    /// Builds the coordinator (once): returns a probe that passes a time once it is committed, and is done once
    /// the job's last commit is written.
    pub fn finish(&self) -> ProbeHandle<u64> {
        if let Some(probe) = self.state.borrow().finished.clone() {
            return probe;
        }
        let (sink, dead) = {
            let mut state = self.state.borrow_mut();
            (state.dead_letter_sink.take(), std::mem::take(&mut state.dead))
        };
        if let Some(registry) = &self.checkpoints {
            tributary_operators::checkpoint::Checkpoints::uninstall();
            let unsupported = registry.unsupported();
            if !unsupported.is_empty() && self.scope.index() == 0 {
                tracing::warn!(
                    operators = ?unsupported,
                    "checkpoints are off: these operators cannot checkpoint their state yet; restarts replay the input from the start"
                );
            } else if self.scope.index() == 0 {
                tracing::info!(operators = ?registry.participants(), "taking checkpoints of the state of these operators");
            }
        }
        let mut logged_letters = None;
        if !dead.is_empty() {
            let mut log = DeadLetterLog::new(sink.as_ref().map(|sink| sink.topic().to_owned()));
            let letters = self.scope.concatenate(dead).inspect_core(move |event| match event {
                Ok((_, letters)) => letters.iter().for_each(|letter: &DeadLetter| log.letter(letter)),
                // The stream has ended (or moved on): what was only counted is logged now, at the end at the latest.
                Err([]) => log.summary(),
                Err(_) => {}
            });
            if let Some(sink) = sink {
                // Set before the sink is built: its own refused records (none: dead letters are fitted to the
                // topic) must not come back into the list just taken.
                self.state.borrow_mut().dead_letters_routed = true;
                letters.sink_dead_letters("DeadLetters", &sink, self);
            } else {
                logged_letters = Some(letters);
            }
        }
        let Some(log) = self.log.clone() else {
            // No commits: done once the sources (their control streams) and the dead letters are.
            let mut state = self.state.borrow_mut();
            let mut done: Vec<Stream<'scope, u64, Vec<()>>> = state.controls.iter().map(|c| c.clone().map(|_| ())).collect();
            done.extend(logged_letters.map(|letters| letters.map(|_| ())));
            done.push(Vec::<()>::new().to_stream(self.scope).container::<Vec<_>>());
            let (probe, _) = self.scope.concatenate(done).probe();
            state.finished = Some(probe.clone());
            return probe;
        };
        let mut state = self.state.borrow_mut();
        // Committed positions (for lag tools) wait for every sink of the job.
        for commits in &state.commits {
            for written in &state.written {
                commits.after(written);
            }
        }
        let scope = self.scope;
        let mut events: Vec<Stream<'scope, u64, Vec<Event>>> = Vec::new();
        events.extend(state.controls.iter().map(|c| c.clone().map(Event::Control)));
        events.extend(state.progress.iter().map(|p| p.clone().map(Event::Sink)));
        let restored = self.checkpoints.as_ref().and_then(tributary_operators::checkpoint::Checkpoints::restored_time);
        let resumed = Event::Resumed { worker: scope.index(), commit: log.latest_offset(), checkpoint: restored };
        events.push(vec![resumed].to_stream(scope).container::<Vec<_>>());
        let registry = if scope.index() == 0 { self.checkpoints.clone() } else { None };
        let committed = coordinator::build(scope.concatenate(events), log, registry);
        let (probe, _) = committed.probe();
        state.finished = Some(probe.clone());
        probe
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.state.borrow().finished.is_none() {
            self.finish();
        }
    }
}

/// Why a running job stopped in its commit protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Two workers resumed from different commits: the processes did not open the commit log together.
    #[error(
        "worker {worker} resumed from the commit at offset {commit:?} of {topic}, worker {first} from the one at {first_commit:?}: every process must open the commit log before any of them runs; stop all processes and start them together"
    )]
    DifferentCommits {
        /// The commit log.
        topic: String,
        /// The worker that disagrees.
        worker: usize,
        /// The commit (log offset) it resumed from.
        commit: Option<i64>,
        /// The worker it disagrees with.
        first: usize,
        /// The commit that one resumed from.
        first_commit: Option<i64>,
    },
    /// Two workers restored different checkpoints (a part was readable in one process and not in another).
    #[error(
        "worker {worker} restored the checkpoint at time {checkpoint:?}, worker {first} the one at {first_checkpoint:?}: every process must read the same checkpoint directory (a shared file system across hosts); check it, then restart all processes"
    )]
    DifferentCheckpoints {
        /// The worker that disagrees.
        worker: usize,
        /// The checkpoint it restored.
        checkpoint: Option<u64>,
        /// The worker it disagrees with.
        first: usize,
        /// The checkpoint that one restored.
        first_checkpoint: Option<u64>,
    },
    /// No producer for the commit log could be created.
    #[error("cannot write the job's commits to {topic}: {source}")]
    CommitWriter {
        /// The commit log.
        topic: String,
        /// Why.
        source: AdminError,
    },
    /// A commit could not be written or was not acknowledged.
    #[error(
        "the commit at time {time} was not written to {topic}: {reason}; restart the job once the brokers are reachable (what was written since the last commit is reconciled)"
    )]
    CommitNotWritten {
        /// The commit log.
        topic: String,
        /// The commit's time.
        time: u64,
        /// What failed.
        reason: String,
    },
}

/// The flags of a job's outputs, to `#[command(flatten)]` into a program's clap arguments: `--commit-log`,
/// `--at-least-once`, `--dead-letter-topic`.
///
/// ```
/// use clap::Parser;
/// use tributary_connectors::job::JobArgs;
/// use tributary_connectors::kafka::Delivery;
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     job: JobArgs,
/// }
/// let args = Args::parse_from(["prog", "--at-least-once"]);
/// assert_eq!(args.job.delivery(), Delivery::AtLeastOnce);
/// assert_eq!(args.job.commit_log_topic("word-counts"), "word-counts.commits");
/// assert_eq!(args.job.dead_letter_topic("lines"), "lines.dead-letters");
/// ```
#[derive(clap::Args, Clone, Debug)]
// Without this a program with no doc comment of its own would show these docs as its `--help` text.
#[command(about = None, long_about = None)]
pub struct JobArgs {
    /// The job's commit log topic (default `<job>.commits`, the job named after its output).
    #[arg(long)]
    pub commit_log: Option<String>,
    /// Write at least once instead of exactly once (faster; a restart writes everything again).
    #[arg(long)]
    pub at_least_once: bool,
    /// Dead-letter topic (default `<input topic>.dead-letters`).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Take checkpoints of the job's state into this directory (local disk, or a file system every process
    /// shares): a restart restores the newest one and reads only the input after it.
    #[arg(long, value_name = "DIR", env = "TRIBUTARY_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// How often a checkpoint is taken (with `--checkpoint-dir`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: std::time::Duration,
}

impl JobArgs {
    /// The delivery guarantee the flags ask for.
    pub fn delivery(&self) -> Delivery {
        if self.at_least_once { Delivery::AtLeastOnce } else { Delivery::ExactlyOnce }
    }

    /// The commit log's topic: `--commit-log`, or `<job>.commits`.
    pub fn commit_log_topic(&self, job: &str) -> String {
        self.commit_log.clone().unwrap_or_else(|| format!("{job}.commits"))
    }

    /// The dead-letter topic: `--dead-letter-topic`, or `<input>.dead-letters`.
    pub fn dead_letter_topic(&self, input: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{input}.dead-letters"))
    }

    /// Opens the job's commit log (see [`commit_log_topic`](Self::commit_log_topic)), its sinks' delivery set by
    /// `--at-least-once`. Every process opens it before the cluster starts.
    pub fn open_commit_log(&self, config: &KafkaConfig, job: &str) -> Result<CommitLog, CommitLogError> {
        let log = CommitLog::open(config.clone(), self.commit_log_topic(job))?.with_delivery(self.delivery());
        Ok(match &self.checkpoint_dir {
            Some(dir) => log.with_checkpoints(dir, self.checkpoint_interval),
            None => log,
        })
    }

    /// Opens the dead-letter sink (see [`dead_letter_topic`](Self::dead_letter_topic)) in the job `log` belongs to.
    pub fn open_dead_letters(&self, log: &CommitLog, input: &str) -> Result<KafkaSink<String, DeadLetter>, SinkError> {
        KafkaSink::dead_letters(log.config().clone(), self.dead_letter_topic(input)).open(log)
    }
}

impl CommitLog {
    /// The job's plumbing in one worker's dataflow (see [`Job`]).
    pub fn job<'scope>(&self, scope: Scope<'scope, u64>) -> Job<'scope> {
        Job::new(scope, Some(self.clone()))
    }
}
