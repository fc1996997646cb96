//! Shared by the operator property tests: the sources' time model, feeding inputs as a source would, and
//! consolidating what comes out.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;

use proptest::prelude::*;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use tributary_operators::event_time::Timed;
use tributary_operators::window::Windows;

/// One update as a source emits it: key, value, event time, dataflow time, diff.
pub type Update = (u8, u8, u64, u64, isize);

/// A stream of keyed timed records, as sources emit them.
pub type Records = Vec<(Timed<(u8, u8)>, u64, isize)>;

/// An input for [`Records`].
pub type Handle = InputHandle<u64, CapacityContainerBuilder<Records>>;

/// Applies the source time model to arrivals `(partition, key, value, event time, retract?)`: a record's time is
/// the larger of its event time and its partition's watermark, which trails the partition's greatest event time by
/// `ooo`. A retraction withdraws the partition's last record, arriving now.
pub fn arrivals_to_updates(arrivals: &[(usize, u8, u8, u64, bool)], ooo: u64) -> Vec<Update> {
    let partitions = arrivals.iter().map(|a| a.0 + 1).max().unwrap_or(0);
    let mut watermarks = vec![0u64; partitions];
    let mut sent: Vec<Vec<(u8, u8, u64)>> = vec![Vec::new(); partitions];
    let mut updates = Vec::new();
    for &(partition, key, value, event_time, retract) in arrivals {
        let watermark = &mut watermarks[partition];
        if retract {
            if let Some((key, value, et)) = sent[partition].pop() {
                updates.push((key, value, et, et.max(*watermark), -1));
            }
            continue;
        }
        let time = event_time.max(*watermark);
        *watermark = (*watermark).max(event_time.saturating_sub(ooo));
        sent[partition].push((key, value, event_time));
        updates.push((key, value, event_time, time, 1));
    }
    updates
}

/// Feeds each input its updates, interleaved, holding each input at the least time still to come on it (what a
/// source's capability would be), and calls `step` after each round.
pub fn feed(inputs: &mut [(&mut Handle, &[Update])], mut step: impl FnMut()) {
    let rounds = inputs.iter().map(|(_, updates)| updates.len()).max().unwrap_or(0);
    for i in 0..rounds {
        for (input, updates) in inputs.iter_mut() {
            let Some(&(key, value, event_time, time, diff)) = updates.get(i) else { continue };
            let floor = updates[i..].iter().map(|u| u.3).min().unwrap_or(time);
            if floor > *input.time() {
                input.advance_to(floor);
            }
            input.send((Timed::new(event_time, (key, value)), time, diff));
        }
        step();
    }
}

/// Feeds `(key, value, time, diff)` changes, in time order, into a differential input: the input advances to
/// each new time, flushes and calls `step` first.
pub fn feed_changes(
    input: &mut differential_dataflow::input::InputSession<u64, (u8, u8), isize>,
    changes: &[(u8, u8, u64, isize)],
    mut step: impl FnMut(),
) {
    for &(key, value, time, diff) in changes {
        if time > *input.time() {
            input.advance_to(time);
            input.flush();
            step();
        }
        input.update((key, value), diff);
    }
}

/// Sums the diffs per item and drops the zeros.
pub fn consolidate<T: Ord>(updates: impl IntoIterator<Item = (T, isize)>) -> BTreeMap<T, isize> {
    let mut out = BTreeMap::new();
    for (item, diff) in updates {
        *out.entry(item).or_default() += diff;
    }
    out.retain(|_, d| *d != 0);
    out
}

/// The values of a multiset as a sorted list of `(value, multiplicity)`: the aggregate that checks everything.
pub fn listing(values: &BTreeMap<u8, isize>) -> Option<Vec<(u8, isize)>> {
    let listed: Vec<(u8, isize)> = values.iter().filter(|(_, n)| **n != 0).map(|(v, n)| (*v, *n)).collect();
    (!listed.is_empty()).then_some(listed)
}

/// Windows of `size` ms starting every `slide` ms from 0 (`slide == size`: tumbling), as the model sees them:
/// its own arithmetic, not the operator's.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Window length (ms).
    pub size: u64,
    /// Distance between window starts (ms).
    pub slide: u64,
}

impl Shape {
    /// The windows of the operator's API with this shape.
    pub fn windows(self) -> Windows {
        let ms = std::time::Duration::from_millis;
        if self.slide == self.size { Windows::tumbling(ms(self.size)) } else { Windows::hopping(ms(self.size), ms(self.slide)) }
            .expect("a valid shape")
    }

    /// Every window start `k * slide` whose window `[start, start + size)` holds `event_time`.
    pub fn starts(self, event_time: u64) -> Vec<u64> {
        (0..=event_time / self.slide).map(|k| k * self.slide).filter(|start| event_time < start + self.size).collect()
    }
}

/// Tumbling windows, and hopping ones of any size with any slide up to it (not only multiples).
pub fn arb_windows() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (1u64..40).prop_map(|size| Shape { size, slide: size }),
        (1u64..40).prop_flat_map(|size| (1..=size).prop_map(move |slide| Shape { size, slide })),
    ]
}
