//! Items kept by timestamp with a capability for it, handed out in time order.
//!
//! The windowed operators stash their input here and process it one time at a time once the frontier has passed
//! that time, so what they emit at a time depends only on the input at times up to it — never on the order in
//! which messages from other workers happened to arrive. That is what makes their timed output the same for any
//! number of workers, and replayable.

use std::collections::BTreeMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::late::LateRecord;

/// Items grouped by time, each group with a capability for its time.
pub(crate) struct ByTime<D> {
    groups: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
    /// Items held, over all times.
    len: usize,
}

impl<D> Default for ByTime<D> {
    fn default() -> Self {
        ByTime { groups: BTreeMap::new(), len: 0 }
    }
}

impl<D> ByTime<D> {
    /// Adds `item` at `time`; `capability` makes the group's capability if the time is new.
    pub(crate) fn push(&mut self, time: u64, capability: impl FnOnce(&u64) -> Capability<u64>, item: D) {
        self.groups.entry(time).or_insert_with(|| (capability(&time), Vec::new())).1.push(item);
        self.len += 1;
    }

    /// Items held, over all times.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The earliest time held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.groups.keys().next().copied()
    }

    /// Removes the group at `time`.
    pub(crate) fn take(&mut self, time: u64) -> Option<(Capability<u64>, Vec<D>)> {
        let group = self.groups.remove(&time);
        if let Some((_, items)) = &group {
            self.len -= items.len();
        }
        group
    }

    /// Every group's time and items, earliest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &[D])> {
        self.groups.iter().map(|(time, (_, items))| (*time, items.as_slice()))
    }

    /// The earliest time held by either.
    pub(crate) fn earliest<E>(&self, other: &ByTime<E>) -> Option<u64> {
        match (self.first(), other.first()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Splits a stream of `(record, time, diff)` updates with `route`: each update becomes any number of updates on
/// the first output, or a late record on the second. Late records leave at their own dataflow time (`arrived_at`),
/// not at the time of the message that carried them, so the late stream is the same on every replay.
pub(crate) fn split_late<'scope, D, O, L>(
    stream: Stream<'scope, u64, Vec<D>>,
    name: &str,
    mut route: impl FnMut(D, &mut Vec<O>) -> Option<LateRecord<L>> + 'static,
) -> (Stream<'scope, u64, Vec<O>>, Stream<'scope, u64, Vec<LateRecord<L>>>)
where
    D: 'static,
    O: Clone + 'static,
    L: Clone + 'static,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), stream.scope());
    let mut input = builder.new_input(stream, Pipeline);
    let (ok_output, ok) = builder.new_output::<Vec<O>>();
    let (late_output, late) = builder.new_output::<Vec<LateRecord<L>>>();
    let mut ok_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(ok_output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(late_output);
    builder.build(move |_capabilities| {
        let mut routed = Vec::new();
        move |_frontiers| {
            let mut ok_handle = ok_output.activate();
            let mut late_handle = late_output.activate();
            input.for_each(|cap, data| {
                let Some(&least) = cap.least() else { return };
                let ok_cap = cap.delayed(&least, 0);
                let mut session = ok_handle.session(&ok_cap);
                for item in data.drain(..) {
                    if let Some(late) = route(item, &mut routed) {
                        late_handle.session(&cap.delayed(&late.arrived_at.max(least), 1)).give(late);
                    }
                    session.give_iterator(routed.drain(..));
                }
            });
        }
    });
    (ok, late)
}
