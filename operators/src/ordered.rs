//! Items kept by timestamp with a capability for it, handed out in time order.
//!
//! The windowed operators stash their input here and process it one time at a time once the frontier has passed
//! that time, so what they emit at a time depends only on the input at times up to it — never on the order in
//! which messages from other workers happened to arrive. That is what makes their timed output the same for any
//! number of workers, and replayable.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;

/// Items grouped by time, each group with a capability for its time.
pub(crate) struct ByTime<D> {
    groups: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
}

impl<D> Default for ByTime<D> {
    fn default() -> Self {
        ByTime { groups: BTreeMap::new() }
    }
}

impl<D> ByTime<D> {
    /// Adds `item` at `time`; `capability` makes the group's capability if the time is new.
    pub(crate) fn push(&mut self, time: u64, capability: impl FnOnce(&u64) -> Capability<u64>, item: D) {
        self.groups.entry(time).or_insert_with(|| (capability(&time), Vec::new())).1.push(item);
    }

    /// The earliest time held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.groups.keys().next().copied()
    }

    /// Removes the group at `time`.
    pub(crate) fn take(&mut self, time: u64) -> Option<(Capability<u64>, Vec<D>)> {
        self.groups.remove(&time)
    }

    /// The earliest time held by either.
    pub(crate) fn earliest<E>(&self, other: &ByTime<E>) -> Option<u64> {
        match (self.first(), other.first()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
