//! Writing a worker's checkpoint parts off the worker thread: the files are written and fsynced by a thread of
//! their own, so a slow disk delays the checkpoint, not the dataflow. The source that reports the worker's parts
//! hands each complete part over ([`PartWriter::submit`]), is woken when it is written, and then tells the
//! coordinator ([`PartWriter::written`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use timely::scheduling::SyncActivator;

/// A part: per operator name, its state.
type Part = BTreeMap<String, Vec<u8>>;

/// What a written part reports: its time and its manifest's checksum, or why it was not written.
pub(super) type Written = (u64, Result<u32, String>);

/// A worker's part writer (see the module docs).
pub(super) struct PartWriter {
    jobs: Option<mpsc::Sender<(u64, Part)>>,
    results: mpsc::Receiver<Written>,
    /// Only when the thread could not be started: parts are written on the worker thread.
    inline: Option<(Option<(PathBuf, u64)>, mpsc::Sender<Written>)>,
    worker: usize,
    pending: BTreeSet<u64>,
}

impl PartWriter {
    /// A writer of worker `worker`'s parts into `store` (the checkpoint directory and this run's generation);
    /// `wake` activates the source once a part is written.
    pub(super) fn start(store: Option<(PathBuf, u64)>, worker: usize, wake: SyncActivator) -> PartWriter {
        let (jobs, inbox) = mpsc::channel::<(u64, Part)>();
        let (done, results) = mpsc::channel();
        let thread_store = store.clone();
        let thread_done = done.clone();
        let spawned = std::thread::Builder::new().name(format!("tributary-checkpoint-{worker}")).spawn(move || {
            for (time, parts) in inbox {
                // A panic is reported as a failed write, so the source does not wait for this part for ever.
                let written =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_part(thread_store.as_ref(), worker, time, &parts)));
                let result = written.unwrap_or_else(|_| Err("the checkpoint writer panicked".into()));
                if thread_done.send((time, result)).is_err() {
                    return;
                }
                // The source is gone when this fails; nothing is left to tell.
                let _ = wake.activate();
            }
        });
        match spawned {
            Ok(_) => PartWriter { jobs: Some(jobs), results, inline: None, worker, pending: BTreeSet::new() },
            Err(e) => {
                tracing::warn!(worker, "no thread for writing checkpoints ({e}): the worker writes them itself");
                PartWriter { jobs: None, results, inline: Some((store, done)), worker, pending: BTreeSet::new() }
            }
        }
    }

    /// Writes the part at `time`.
    pub(super) fn submit(&mut self, time: u64, parts: Part) {
        self.pending.insert(time);
        let parts = match &self.jobs {
            Some(jobs) => match jobs.send((time, parts)) {
                Ok(()) => return,
                Err(mpsc::SendError((_, parts))) => parts,
            },
            None => parts,
        };
        // No thread (it could not start, or it ended): write it here.
        let result = write_part(self.inline.as_ref().and_then(|(store, _)| store.as_ref()), self.worker, time, &parts);
        if let Some((_, done)) = &self.inline {
            let _ = done.send((time, result));
        } else {
            self.pending.remove(&time);
            tracing::warn!(worker = self.worker, time, "the checkpoint writer stopped; this checkpoint is skipped, the next one is tried");
        }
    }

    /// The parts written since the last call.
    pub(super) fn written(&mut self) -> Vec<Written> {
        let written: Vec<Written> = self.results.try_iter().collect();
        for (time, _) in &written {
            self.pending.remove(time);
        }
        written
    }

    /// Whether a part handed over is not written yet.
    pub(super) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Writes one worker's part of the checkpoint at `time` into the store; returns its fingerprint.
fn write_part(store: Option<&(PathBuf, u64)>, worker: usize, time: u64, parts: &Part) -> Result<u32, String> {
    let started = Instant::now();
    let Some((root, generation)) = store else { return Err("no checkpoint directory is configured".into()) };
    let store = tributary_runtime::checkpoint::CheckpointStore::open(root, worker).map_err(|e| e.to_string())?;
    let id = tributary_runtime::checkpoint::CheckpointId { generation: *generation, time };
    let mut writer = store.writer(id).map_err(|e| e.to_string())?;
    for (name, contents) in parts {
        writer.write(name, contents).map_err(|e| e.to_string())?;
    }
    let fingerprint = writer.seal().map_err(|e| e.to_string())?;
    let labels = crate::metrics::labels(&[("worker", &worker.to_string())]);
    let metrics = crate::metrics::metrics();
    metrics.checkpoint_parts.get_or_create(&labels).inc();
    let bytes: usize = parts.values().map(Vec::len).sum();
    metrics.checkpoint_bytes.get_or_create(&labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    metrics.checkpoint_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::debug!(worker, time, bytes, micros, "checkpoint part written");
    Ok(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_written_by_the_thread_and_reported_once() {
        let dir = std::env::temp_dir().join(format!("tributary-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The source the writer wakes: an activator of a worker (gone by the time it is used, which is allowed).
        let activator = timely::execute::execute_directly(|worker| worker.sync_activator_for(vec![0]));
        let mut writer = PartWriter::start(Some((dir.clone(), 3)), 0, activator);
        writer.submit(7, BTreeMap::from([("Op".to_owned(), vec![1, 2, 3])]));
        assert!(writer.busy());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let mut written = Vec::new();
        while written.is_empty() {
            assert!(Instant::now() < deadline, "the part was not written within 30 s");
            written = writer.written();
            std::thread::yield_now();
        }
        assert!(!writer.busy());
        let (time, fingerprint) = written.pop().expect("one part");
        assert_eq!(time, 7);
        let fingerprint = fingerprint.expect("written");
        let store = tributary_runtime::checkpoint::CheckpointStore::open(&dir, 0).unwrap();
        let loaded = store.load(tributary_runtime::checkpoint::CheckpointId { generation: 3, time: 7 }, fingerprint).unwrap();
        assert_eq!(loaded.files.get("Op"), Some(&vec![1, 2, 3]));
        assert!(writer.written().is_empty(), "reported once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
