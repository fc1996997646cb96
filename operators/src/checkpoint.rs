//! Checkpoints of operator state: how a stateful operator takes part in a job's checkpoints, and gets its state
//! back on a restart.
//!
//! A job with checkpoints (`--checkpoint-dir`) installs a [`Checkpoints`] registry in each worker while its
//! dataflow is built. Every stateful operator built then joins it as a [`Participant`] under its name (names are
//! what identifies state across restarts, so two stateful operators of one dataflow need different names).
//!
//! The job's sources ask for a checkpoint at a time `T` ([`Checkpoints::request`]) while nothing downstream of
//! them can have passed `T` (the request travels on a loop that holds every source's output at `T + 1` until
//! every worker has registered it). An operator processes its input one time at a time once the frontier has
//! passed it; before it processes a time after a requested `T` (or once its frontier has passed `T`), it
//! serializes its state *as of `T`* (every input at times up to `T` applied, none later) and hands it over with
//! [`Participant::put`]. Once every participant of a worker has, the worker's part of the checkpoint is complete
//! and the job writes it. Records at later times are not part of it: a restart reads them again (sources resume
//! from the point where their later records begin, and drop what the restored state already holds).
//!
//! At a graceful stop the sources agree on a final checkpoint ([`Checkpoints::stopped`]): at the time before
//! the earliest any of them stopped at, which is where the stop's last commit is.
//!
//! On a restart from a checkpoint at `T`, [`Participant::restored`] gives an operator what every worker of the
//! earlier run saved under its name (the earlier run may have had another number of workers): it keeps the
//! entries whose key now routes to it, and schedules what was due after `T`.
//!
//! An operator that keeps state and cannot checkpoint it calls [`unsupported`]: the job then takes no
//! checkpoints and says so, and restarts replay the input from the start as before.
//!
//! A custom operator takes part the same way (see the window operator, `crate::window`, for a complete one):
//!
//! ```
//! use tributary_operators::checkpoint::{Checkpoints, Participant};
//!
//! let registry = Checkpoints::install(None);
//! let mut counter = Participant::join("MyCounter").expect("a registry is installed");
//! Checkpoints::uninstall(); // the dataflow is built
//! let mut count = 0u64;
//! registry.request(10);
//! // Before applying the input at time 12, the state as of 10 is handed over.
//! for time in counter.due_before(12) {
//!     counter.put(time, count.to_le_bytes().to_vec());
//! }
//! count += 1;
//! assert_eq!(registry.take_complete().len(), 1);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// What a restart hands back: the checkpoint's time and, per operator name, one part per worker of the run that
/// wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The checkpoint's time: the restored state holds every input at times up to it.
    pub time: u64,
    /// Per operator name, the parts the earlier run's workers saved.
    pub parts: BTreeMap<String, Vec<Vec<u8>>>,
}

/// One worker's complete part of a checkpoint: per operator name, its state as of `time`.
pub type Part = (u64, BTreeMap<String, Vec<u8>>);

#[derive(Default)]
struct Inner {
    requested: BTreeSet<u64>,
    participants: BTreeSet<String>,
    unsupported: BTreeSet<String>,
    /// Requests some participant had already processed past (cannot be taken consistently).
    poisoned: BTreeSet<u64>,
    taken: BTreeMap<u64, BTreeMap<String, Vec<u8>>>,
    complete: Vec<Part>,
    restore: Option<Rc<Restored>>,
    wake: Option<Box<dyn Fn()>>,
    /// Participants may still join: no part is complete before the dataflow is built.
    building: bool,
    /// How often the sources ask for a checkpoint.
    interval: Option<std::time::Duration>,
    /// The job's sources in this worker: the time each holds (`None`: finished).
    sources: Vec<Option<u64>>,
    /// A checkpoint being asked for, and which sources have passed the request on.
    gate: Option<(u64, Vec<bool>)>,
    last_request: Option<std::time::Instant>,
    min_time: Option<u64>,
    /// Requests the job has not released yet (see [`Checkpoints::oldest_open`]).
    open: BTreeSet<u64>,
    /// The latest time any participant handed its state over for in this run.
    latest_put: Option<u64>,
    /// The job is stopping (SIGTERM): no checkpoint is asked for on the interval any more.
    stopping: bool,
    /// While stopping: per source, the earliest time any of its instances stopped at (`None`: none holds one).
    stopped: Vec<Option<Option<u64>>>,
    /// While stopping: the final checkpoint's time, once decided (`None` inside: there is none).
    final_time: Option<Option<u64>>,
    /// While stopping: no request after this time is taken (the stop's last commit cannot name it).
    cut: Option<u64>,
    /// While stopping: why this worker takes no final checkpoint, and whether the reason is one other workers
    /// may not share (their parts are then written for nothing: worth a warning).
    declined: Option<(&'static str, bool)>,
}

/// A worker's checkpoint registry (see the module docs). Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct Checkpoints(Rc<RefCell<Inner>>);

thread_local! {
    static CURRENT: RefCell<Option<Checkpoints>> = const { RefCell::new(None) };
}

impl Checkpoints {
    /// Installs a registry for the dataflow this worker builds next, with what a restart restores.
    pub fn install(restore: Option<Restored>) -> Checkpoints {
        let registry = Checkpoints::default();
        registry.0.borrow_mut().restore = restore.map(Rc::new);
        registry.0.borrow_mut().building = true;
        CURRENT.with(|c| *c.borrow_mut() = Some(registry.clone()));
        registry
    }

    /// The registry installed in this worker, if the dataflow being built takes checkpoints.
    pub fn current() -> Option<Checkpoints> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Ends the registration of participants (the dataflow is built).
    pub fn uninstall() {
        let Some(registry) = CURRENT.with(|c| c.borrow_mut().take()) else { return };
        let mut inner = registry.0.borrow_mut();
        inner.building = false;
        let requested: Vec<u64> = inner.requested.iter().copied().collect();
        for time in requested {
            Self::check(&mut inner, time);
        }
    }

    /// Sets how often the job's sources ask for a checkpoint (on worker 0).
    pub fn set_interval(&self, interval: std::time::Duration) {
        self.0.borrow_mut().interval = Some(interval);
    }

    /// Registers one of the job's sources; returns its index (the first is 0).
    pub fn add_source(&self) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.sources.push(Some(0));
        inner.sources.len() - 1
    }

    /// Source `source` now holds `time` (`None`: it has finished).
    pub fn publish(&self, source: usize, time: Option<u64>) {
        if let Some(slot) = self.0.borrow_mut().sources.get_mut(source) {
            *slot = time;
        }
    }

    /// On the worker that decides (worker 0): whether a checkpoint is due at `now`; if so, its time, which is
    /// registered here and which every source of this worker passes on to the others ([`gate_for`](Self::gate_for)).
    ///
    /// The time is the latest any source of this worker holds: nothing downstream of any of them has passed it,
    /// and until each has passed the request on (at its next activation, before it moves), none moves.
    pub fn open_gate(&self, now: std::time::Instant) -> Option<u64> {
        let time = {
            let mut inner = self.0.borrow_mut();
            let interval = inner.interval?;
            if inner.building
                || inner.stopping
                || !inner.unsupported.is_empty()
                || inner.gate.is_some()
                || !inner.requested.is_empty()
                || inner.last_request.is_some_and(|last| now.saturating_duration_since(last) < interval)
            {
                return None;
            }
            if inner.last_request.is_none() {
                // The first checkpoint comes an interval after the start.
                inner.last_request = Some(now);
                return None;
            }
            let held: Option<Vec<u64>> = inner.sources.iter().copied().collect();
            let time = held?.into_iter().max()?;
            let restored = inner.restore.as_ref().map(|r| r.time);
            if time == 0 || restored.is_some_and(|r| time <= r) || inner.min_time.is_some_and(|m| time <= m) {
                return None;
            }
            inner.last_request = Some(now);
            let sources = inner.sources.len();
            inner.gate = Some((time, vec![false; sources]));
            time
        };
        self.request(time);
        Some(time)
    }

    /// The checkpoint time source `source` has to pass on to the other workers, once.
    pub fn gate_for(&self, source: usize) -> Option<u64> {
        let mut inner = self.0.borrow_mut();
        let (time, sent) = inner.gate.as_mut()?;
        let time = *time;
        let slot = sent.get_mut(source)?;
        if *slot {
            return None;
        }
        *slot = true;
        if sent.iter().all(|s| *s) {
            inner.gate = None;
        }
        Some(time)
    }

    /// Called (on the worker's thread) whenever a part becomes complete.
    pub fn on_complete(&self, wake: impl Fn() + 'static) {
        self.0.borrow_mut().wake = Some(Box::new(wake));
    }

    /// Asks for a checkpoint at `time` (nothing downstream of the sources has processed a later time).
    pub fn request(&self, time: u64) {
        let mut inner = self.0.borrow_mut();
        if inner.cut.is_some_and(|cut| time > cut) || inner.taken.contains_key(&time) || !inner.requested.insert(time) {
            return;
        }
        inner.taken.insert(time, BTreeMap::new());
        inner.open.insert(time);
        Self::check(&mut inner, time);
    }

    /// The job is stopping (SIGTERM): no more checkpoints on the interval; the sources decide a final one
    /// ([`stopped`](Self::stopped)).
    pub fn stopping(&self) {
        self.0.borrow_mut().stopping = true;
    }

    /// At a graceful stop: every instance of source `source` has stopped, the earliest at `time` (`None`: none
    /// of them held a time). Once every source of this worker that still holds a time has said so, the final
    /// checkpoint is decided, the same on every worker: at the time before the earliest any source stopped at
    /// (nothing downstream of the sources has processed a time after it, and the job's last commit is at it),
    /// unless some operator handed over its state at or after it already (or it was restored, or committed).
    /// A request on the interval still open after it does not stand in the way: no operator has reached it
    /// yet, and each hands over the earlier time first. Returns the
    /// decision once made: `Some(Some(T))` (asked for here), `Some(None)` (no final checkpoint).
    pub fn stopped(&self, source: usize, time: Option<u64>) -> Option<Option<u64>> {
        let decided = {
            let mut inner = self.0.borrow_mut();
            if let Some(decided) = inner.final_time {
                return Some(decided);
            }
            let sources = inner.sources.len();
            inner.stopped.resize(sources, None);
            if let Some(slot) = inner.stopped.get_mut(source) {
                *slot = Some(time);
            }
            let waiting = inner.sources.iter().zip(&inner.stopped).any(|(held, stopped)| held.is_some() && stopped.is_none());
            if waiting {
                return None;
            }
            let earliest = inner.stopped.iter().flatten().flatten().min().copied();
            let cut = earliest.map_or(0, |e| e.saturating_sub(1));
            // Requests after the stop's last commit could never be named: they are not taken.
            inner.cut = Some(cut);
            inner.requested.retain(|&t| t <= cut);
            inner.taken.retain(|&t, _| t <= cut);
            inner.open.retain(|&t| t <= cut);
            let floor = [inner.latest_put, inner.restore.as_ref().map(|r| r.time), inner.min_time].into_iter().flatten().max();
            // A source that read its input to the end on this worker says nothing of its other instances: the
            // workers could not agree on a time, so there is no final checkpoint.
            let enabled = inner.interval.is_some() && inner.unsupported.is_empty() && !inner.building && !inner.sources.contains(&None);
            let time = Some(cut).filter(|&t| enabled && t > 0 && floor.is_none_or(|f| t > f));
            if time.is_none() {
                inner.declined = Some(if inner.sources.contains(&None) {
                    ("a source of this worker had read its input to the end", true)
                } else if inner.latest_put.is_some_and(|p| p >= cut) {
                    (
                        "an operator of this worker had already handed over its state as of a later time (it reads only a source further on in event time than the others)",
                        true,
                    )
                } else {
                    ("the state is no more recent than the restored or committed one, or checkpoints are off", false)
                });
            }
            inner.final_time = Some(time);
            time
        };
        if let Some(time) = decided {
            self.request(time);
        }
        Some(decided)
    }

    /// Whether the job is stopping (some source of this worker was told to stop).
    pub fn is_stopping(&self) -> bool {
        self.0.borrow().stopping
    }

    /// At a stop, once decided: why this worker takes no final checkpoint, and whether the other workers may
    /// have taken theirs (a reason worth a warning).
    pub fn declined(&self) -> Option<(&'static str, bool)> {
        self.0.borrow().declined
    }

    /// Whether the request at `time` is settled: its part is complete (and taken by
    /// [`take_complete`](Self::take_complete)'s caller), or it could not be taken consistently.
    pub fn settled(&self, time: u64) -> bool {
        let inner = self.0.borrow();
        !inner.requested.contains(&time) && !inner.complete.iter().any(|(t, _)| *t == time)
    }

    /// The earliest request not released yet: the job keeps what a checkpoint at that time needs.
    pub fn oldest_open(&self) -> Option<u64> {
        self.0.borrow().open.first().copied()
    }

    /// Releases the requests up to `time` (the checkpoint at `time` is complete everywhere, or superseded).
    pub fn release(&self, time: u64) {
        let mut inner = self.0.borrow_mut();
        inner.open = inner.open.split_off(&(time + 1));
    }

    /// The operators that keep state they cannot checkpoint: while there are any, the job takes none.
    pub fn unsupported(&self) -> Vec<String> {
        self.0.borrow().unsupported.iter().cloned().collect()
    }

    /// The names of the participants.
    pub fn participants(&self) -> Vec<String> {
        self.0.borrow().participants.iter().cloned().collect()
    }

    /// No checkpoint at or before `time` is asked for (the commit a restart resumes from).
    pub fn set_min_time(&self, time: u64) {
        self.0.borrow_mut().min_time = Some(time);
    }

    /// The checkpoint time the dataflow was restored from.
    pub fn restored_time(&self) -> Option<u64> {
        self.0.borrow().restore.as_ref().map(|r| r.time)
    }

    /// Takes the parts completed since the last call, earliest first.
    pub fn take_complete(&self) -> Vec<Part> {
        std::mem::take(&mut self.0.borrow_mut().complete)
    }

    fn check(inner: &mut Inner, time: u64) {
        let done = !inner.building && inner.taken.get(&time).is_some_and(|parts| parts.len() == inner.participants.len());
        if !done {
            return;
        }
        inner.requested.remove(&time);
        let Some(parts) = inner.taken.remove(&time) else { return };
        // A poisoned part is dropped: the job sees no complete part for it and takes the next checkpoint.
        if inner.poisoned.remove(&time) {
            return;
        }
        inner.complete.push((time, parts));
        if let Some(wake) = &inner.wake {
            wake();
        }
    }
}

/// A stateful operator's membership in its worker's checkpoints.
pub struct Participant {
    name: String,
    registry: Checkpoints,
    /// Requests up to this time are taken (or were before this run).
    taken: Option<u64>,
    /// The latest time whose input was applied.
    applied: Option<u64>,
}

impl Participant {
    /// Joins the registry installed in this worker under `name`; `None` when the dataflow takes no checkpoints.
    ///
    /// # Panics
    /// If another operator of the dataflow joined under the same name: state is identified by name.
    pub fn join(name: &str) -> Option<Participant> {
        let registry = Checkpoints::current()?;
        let taken = {
            let mut inner = registry.0.borrow_mut();
            #[allow(clippy::panic, reason = "a programming error in the dataflow, found when it is built")]
            if !inner.participants.insert(name.to_owned()) {
                panic!("two stateful operators are named `{name}`: give each its own name (checkpoints identify state by name)");
            }
            inner.restore.as_ref().map(|r| r.time)
        };
        Some(Participant { name: name.to_owned(), registry, taken, applied: None })
    }

    /// What the earlier run's workers saved under this operator's name, and the checkpoint's time.
    pub fn restored(&self) -> Option<(u64, Vec<Vec<u8>>)> {
        let inner = self.registry.0.borrow();
        let restore = inner.restore.as_ref()?;
        Some((restore.time, restore.parts.get(&self.name).cloned().unwrap_or_default()))
    }

    /// The requested times before `now` not taken yet, earliest first: call before applying the input at `now`,
    /// and [`put`](Self::put) the state as of each.
    pub fn due_before(&mut self, now: u64) -> Vec<u64> {
        let due = self.pending(|t| t < now);
        self.applied = Some(self.applied.map_or(now, |a| a.max(now)));
        due
    }

    /// The requested times the frontier has passed, not taken yet: call once every time before the frontier is
    /// applied.
    pub fn due(&mut self, frontier: timely::progress::frontier::AntichainRef<'_, u64>) -> Vec<u64> {
        self.pending(|t| !frontier.less_equal(&t))
    }

    /// The requested times `passed` says every input has passed, not taken yet (for an operator with several
    /// inputs: a time has passed once no input can still send anything at or before it).
    pub fn due_where(&mut self, passed: impl Fn(u64) -> bool) -> Vec<u64> {
        self.pending(passed)
    }

    fn pending(&mut self, ready: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut inner = self.registry.0.borrow_mut();
        let taken = self.taken;
        let due: Vec<u64> = inner.requested.iter().copied().filter(|&t| taken.is_none_or(|k| t > k) && ready(t)).collect();
        // A request for a time this operator already processed past cannot be taken consistently.
        if let (Some(applied), Some(first)) = (self.applied, due.first())
            && *first < applied
        {
            for &t in due.iter().filter(|&&t| t < applied) {
                inner.poisoned.insert(t);
            }
        }
        due
    }

    /// Hands over the state as of `time`.
    pub fn put(&mut self, time: u64, state: Vec<u8>) {
        self.taken = Some(self.taken.map_or(time, |t| t.max(time)));
        let mut inner = self.registry.0.borrow_mut();
        inner.latest_put = Some(inner.latest_put.map_or(time, |t| t.max(time)));
        if let Some(parts) = inner.taken.get_mut(&time) {
            parts.insert(self.name.clone(), state);
        }
        Checkpoints::check(&mut inner, time);
    }
}

/// Declares that the operator `name` keeps state it cannot checkpoint: the job takes no checkpoints (and says so).
pub fn unsupported(name: &str) {
    if let Some(registry) = Checkpoints::current() {
        registry.0.borrow_mut().unsupported.insert(name.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_completes_once_every_participant_put_it() {
        let registry = Checkpoints::install(None);
        let mut a = Participant::join("a").unwrap();
        let mut b = Participant::join("b").unwrap();
        Checkpoints::uninstall();
        registry.request(5);
        assert_eq!(a.due_before(5), Vec::<u64>::new(), "5 itself is not after the checkpoint");
        assert_eq!(a.due_before(6), vec![5]);
        a.put(5, vec![1]);
        assert!(registry.take_complete().is_empty());
        b.put(5, vec![2]);
        let complete = registry.take_complete();
        assert_eq!(complete.len(), 1);
        assert_eq!(complete[0].1.len(), 2);
        assert!(a.due_before(100).is_empty(), "taken once");
        assert!(Participant::join("c").is_none());
    }

    /// A registry of a job with checkpoints (an hour apart: none on the interval) and one participant.
    fn stopping_job(restore: Option<Restored>) -> (Checkpoints, Participant) {
        let registry = Checkpoints::install(restore);
        registry.set_interval(std::time::Duration::from_secs(3600));
        let a = Participant::join("a").unwrap();
        Checkpoints::uninstall();
        (registry, a)
    }

    #[test]
    fn the_final_checkpoint_waits_for_every_source_and_is_before_the_earliest_stop() {
        let (registry, mut a) = stopping_job(None);
        let (orders, customers) = (registry.add_source(), registry.add_source());
        registry.publish(orders, Some(40));
        registry.publish(customers, Some(30));
        registry.stopping();
        assert_eq!(registry.open_gate(std::time::Instant::now()), None, "no checkpoint on the interval once stopping");
        assert_eq!(registry.stopped(orders, Some(40)), None, "the other source has not said where it stopped");
        assert_eq!(registry.stopped(customers, Some(30)), Some(Some(29)));
        assert_eq!(registry.stopped(orders, Some(40)), Some(Some(29)), "decided once");
        assert!(!registry.settled(29));
        for t in a.due_before(35) {
            a.put(t, vec![7]);
        }
        let complete = registry.take_complete();
        assert_eq!(complete.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![29]);
        assert!(registry.settled(29));
    }

    #[test]
    fn no_final_checkpoint_at_or_before_state_already_handed_over_or_restored() {
        // A participant handed over its state as of 50: a request at 49 could never complete.
        let (registry, mut a) = stopping_job(None);
        let source = registry.add_source();
        registry.request(50);
        for t in a.due_before(51) {
            a.put(t, vec![]);
        }
        registry.publish(source, Some(50));
        assert_eq!(registry.stopped(source, Some(50)), Some(None));
        assert!(registry.declined().is_some_and(|(_, warn)| warn), "other workers may have taken theirs: a warning");
        // Restored at 20, stopped at 21: the state is the restored one.
        let (registry, _a) = stopping_job(Some(Restored { time: 20, parts: BTreeMap::new() }));
        let source = registry.add_source();
        assert_eq!(registry.stopped(source, Some(21)), Some(None));
        assert!(registry.declined().is_some_and(|(_, warn)| !warn), "the same on every worker: no warning");
        // Without checkpoints on an interval (a registry that takes none), none at the stop either.
        let registry = Checkpoints::install(None);
        Checkpoints::uninstall();
        let source = registry.add_source();
        assert_eq!(registry.stopped(source, Some(100)), Some(None));
    }

    #[test]
    fn a_request_for_a_time_already_processed_past_never_completes() {
        let registry = Checkpoints::install(None);
        let mut a = Participant::join("a").unwrap();
        Checkpoints::uninstall();
        assert!(a.due_before(20).is_empty());
        registry.request(5);
        for t in a.due_before(21) {
            a.put(t, vec![]);
        }
        assert!(registry.take_complete().is_empty());
    }
}
