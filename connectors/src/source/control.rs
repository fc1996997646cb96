//! What a source tells the exactly-once machinery besides its records: where its partitions stand in offsets and
//! time ([`PartitionSnapshot`]), and when its times stop being final ([`Drain`]); and what a restart hands back
//! to it ([`SourceResume`]).
//!
//! Every source operator has a control output. Just before it moves its capability past a time `c` it sends, at
//! `c`, a [`Control::Snapshot`] of the partitions whose state changed: the next offset of each, its watermark,
//! and what the wall clock decided ([`PartitionHistory`]). Every record read after that snapshot travels at a
//! time later than `c`. So for a completed time `T`, the latest snapshot at or before `T` of every partition
//! says from which offset on its records come after `T`: that, with the sinks' progress, is a commit
//! (`crate::job`).
//!
//! When a source stops before its input is complete in event time it sends a [`Control::Drain`] at its
//! capability: times at or after the horizon are not final. A bounded source that read its input to the end
//! drains [`DrainMode::Provisional`]ly: sinks write those times (the job's final results) and a later run corrects
//! them. A source told to stop (SIGTERM) drains [`DrainMode::Abandon`]: sinks write nothing at or after the
//! horizon, and a restart computes those times again.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary_operators::event_time::{PartitionHistory, ResumePoint};

/// A partition of a source, as named in commits: the source operator's name, the topic or file, the Kafka
/// partition (0 for files).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    /// The source operator's name (e.g. `KafkaSource`).
    pub source: String,
    /// The topic, or the file.
    pub origin: String,
    /// The Kafka partition (0 for files).
    pub partition: i32,
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.origin, self.partition)
    }
}

/// Where one partition's reading stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Which partition.
    pub key: PartitionKey,
    /// The offset the job first read it from: a replay starts here.
    pub start: u64,
    /// The next offset to read.
    pub position: u64,
    /// The partition's watermark at `position`.
    pub watermark: u64,
    /// Lifts and rejections a replay must apply again.
    #[serde(default)]
    pub history: PartitionHistory,
    /// Where a replay that restores the state as of this snapshot's time can start instead of `start`: the first
    /// record read so far whose dataflow time is later (or `position`), with the watermark there
    /// ([`SourceClock::resume_point`](tributary_operators::SourceClock::resume_point)). What checkpoints
    /// (issue 12) resume from; restarts without them replay from `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumePoint>,
}

/// How a drained source's unfinished times are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DrainMode {
    /// The input was read to its end (bounded run): sinks write the remaining times as provisional results.
    Provisional,
    /// The source was told to stop: sinks write nothing at or after the horizon.
    Abandon,
}

/// A source's message on its control output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The partitions whose state changed since the previous snapshot, as of the message's time.
    Snapshot(Vec<PartitionSnapshot>),
    /// Every partition of the sender, as of the time before the message's (sent at a graceful stop by a source
    /// whose time is just after the final checkpoint's, so the checkpoint resumes after what it read).
    SnapshotBefore(Vec<PartitionSnapshot>),
    /// Times at or after `horizon` are not final.
    Drain {
        /// The first time that is not final.
        horizon: u64,
        /// What sinks do with such times.
        mode: DrainMode,
    },
    /// Worker `worker` wrote its part of the checkpoint at `time`; `fingerprint` is its manifest's checksum.
    Checkpointed {
        /// The checkpoint's time.
        time: u64,
        /// The worker.
        worker: usize,
        /// The checksum of the part's manifest (what the commit records).
        fingerprint: u32,
    },
}

/// What a restart gives a source back from the commit it resumes from. Opaque: built by the job.
#[derive(Clone, Debug, Default)]
pub struct SourceResume {
    /// The commit's time: every output at times up to it is written.
    pub(crate) time: Option<u64>,
    pub(crate) partitions: Arc<HashMap<PartitionKey, PartitionSnapshot>>,
    /// The checkpoint restored: its time (records at or before it are in the restored state) and where each
    /// partition's later records begin.
    pub(crate) restored: Option<(u64, Arc<HashMap<PartitionKey, ResumePoint>>)>,
    /// Where this run writes its checkpoints, and its generation.
    pub(crate) store: Option<(std::path::PathBuf, u64)>,
}

impl SourceResume {
    /// A resume point at `time` with these partitions.
    pub(crate) fn new(time: Option<u64>, partitions: impl IntoIterator<Item = PartitionSnapshot>) -> Self {
        SourceResume {
            time,
            partitions: Arc::new(partitions.into_iter().map(|p| (p.key.clone(), p)).collect()),
            restored: None,
            store: None,
        }
    }

    /// Where `key`'s records after the restored checkpoint begin, if a checkpoint was restored.
    pub fn checkpoint_point(&self, key: &PartitionKey) -> Option<ResumePoint> {
        self.restored.as_ref().and_then(|(_, points)| points.get(key).copied())
    }

    /// The time of the restored checkpoint: records at or before it are not emitted again.
    pub fn restored_time(&self) -> Option<u64> {
        self.restored.as_ref().map(|(time, _)| *time)
    }

    /// The stored state of one partition.
    pub fn partition(&self, key: &PartitionKey) -> Option<&PartitionSnapshot> {
        self.partitions.get(key)
    }

    /// The commit's time, if there is a commit.
    pub fn time(&self) -> Option<u64> {
        self.time
    }
}
