//! Keyed session windows: a key's records closer than a gap in event time form one session.
//!
//! [`SessionAggregate::session_aggregate`] takes `(Timed<(K, V)>, time, diff)` updates, as sources emit them, and
//! produces a changelog of `((K, Session), output)` updates. A session runs from its first record's event time to
//! its last one's plus the gap, so a record at `t` alone is the session `[t, t + gap)`, and a record that falls
//! within the gap of two sessions merges them.
//! - A session's result is emitted once, when the frontier passes its end.
//! - A record whose own session `[t, t + gap)` ended but `t + gap + allowed_lateness` is still ahead of its
//!   dataflow time is applied: it may extend, merge or (as a retraction) split sessions already emitted, and the
//!   output retracts what no longer holds and adds the new sessions. An emitted session that a still-open session
//!   has absorbed stays until that session closes, so readers see one correction, not a gap.
//! - A record with `t + gap + allowed_lateness <= its dataflow time` goes to the late output with the reason.
//!   The rule looks at the record alone, not at the sessions around it, so it is the same on every replay.
//! - A session's state is released once the frontier passes `end + gap + allowed_lateness`: from then on no record
//!   that is not late can reach it. Releasing emits nothing; a closed session's result stays.
//!
//! Records are exchanged by key and applied one time at a time once the frontier has passed it, so the results,
//! with their times, are the same for any number of workers and processes.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;

use differential_dataflow::Hashable;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::aggregate::Aggregator;
use crate::checkpoint::Participant;
use crate::event_time::Timed;
use crate::late::LateRecord;
use crate::ordered::ByTime;
use crate::window::WindowError;

/// A session of one key: `[start, end)` in event time (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The event time of its first record.
    pub start: u64,
    /// The event time of its last record plus the gap.
    pub end: u64,
}

/// Session parameters: the gap that ends a session and the allowed lateness; what
/// [`SessionAggregate::session_aggregate`] takes.
///
/// ```
/// use std::time::Duration;
/// use tributary_operators::session::Sessions;
/// let sessions = Sessions::gap(Duration::from_secs(30))?.allowed_lateness(Duration::from_secs(5));
/// assert_eq!((sessions.gap_ms, sessions.allowed_lateness_ms), (30_000, 5_000));
/// assert!(Sessions::gap(Duration::ZERO).is_err());
/// # Ok::<(), tributary_operators::window::WindowError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sessions {
    /// Records of a key closer than this in event time are in one session (ms, at least 1).
    pub gap_ms: u64,
    /// How long after a session's end a late record still updates it (ms).
    pub allowed_lateness_ms: u64,
}

impl Sessions {
    /// Sessions ended by `gap` without records; a gap under 1 ms is refused.
    pub fn gap(gap: std::time::Duration) -> Result<Sessions, WindowError> {
        let gap_ms = crate::event_time::ms(gap);
        if gap_ms == 0 {
            return Err(WindowError::EmptyWindow(gap));
        }
        Ok(Sessions { gap_ms, allowed_lateness_ms: 0 })
    }

    /// A late record within `lateness` after its session's end still updates it.
    pub fn allowed_lateness(mut self, lateness: std::time::Duration) -> Self {
        self.allowed_lateness_ms = crate::event_time::ms(lateness);
        self
    }
}

/// A session result update: `(((key, session), output), time, diff)`.
pub type SessionUpdate<K, O> = (((K, Session), O), u64, isize);

/// Session results as changelog updates, and the records too late for any session.
pub struct SessionStreams<'scope, K, O, V> {
    /// `((key, session), output)` updates.
    pub results: Stream<'scope, u64, Vec<SessionUpdate<K, O>>>,
    /// Records later than the allowed lateness; `window_end` is the end of the record's own session.
    pub late: Stream<'scope, u64, Vec<LateRecord<(K, V)>>>,
}

/// Keyed session-window aggregation on a stream of `(Timed<(K, V)>, time, diff)` updates.
pub trait SessionAggregate<'scope, K, V> {
    /// Aggregates each key's values per session with `aggregator`; see the module docs for the semantics.
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Extract};
    /// use tributary_operators::aggregate::Count;
    /// use tributary_operators::event_time::Timed;
    /// use std::time::Duration;
    /// use tributary_operators::session::{Session, SessionAggregate, Sessions};
    ///
    /// let results = timely::example(|scope| {
    ///     let clicks = vec![
    ///         (Timed::new(1, ('u', ())), 1u64, 1isize),
    ///         (Timed::new(4, ('u', ())), 4, 1),
    ///         // More than the 5 ms gap after the last click: a new session.
    ///         (Timed::new(20, ('u', ())), 20, 1),
    ///     ];
    ///     clicks.to_stream(scope).container::<Vec<_>>().session_aggregate("Visits", Sessions::gap(Duration::from_millis(5)).unwrap(), Count).results.capture()
    /// });
    /// let mut results: Vec<_> = results.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// results.sort();
    /// assert_eq!(results, vec![
    ///     ((('u', Session { start: 1, end: 9 }), 2), 8, 1),
    ///     ((('u', Session { start: 20, end: 25 }), 1), 24, 1),
    /// ]);
    /// ```
    ///
    /// In a job with checkpoints the operator's sessions (each key's records, what was emitted, what is due and
    /// when state is released) are saved under `name` as of each checkpoint's time, and restored on a restart,
    /// each key going to the worker it now routes to (any number of workers).
    fn session_aggregate<A>(self, name: &str, sessions: Sessions, aggregator: A) -> SessionStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>,
        A::Output: Serialize + DeserializeOwned;
}

/// A session operator's checkpointed state: per key its records by event time, what was emitted and when an
/// evaluation is scheduled; the evaluations due after the checkpoint's time; and the release times of closed
/// sessions.
type SessionSnapshot<K, V, O> =
    (Vec<(K, BTreeMap<u64, (isize, Vec<(V, isize)>)>, BTreeMap<u64, (u64, O)>, Option<u64>)>, Vec<(u64, K)>, Vec<(u64, K)>);

/// One key's sessions on a worker.
struct KeySessions<V, O> {
    /// Records by event time: the multiplicities' sum, and the values with theirs. A time whose sum is zero is gone.
    events: BTreeMap<u64, (isize, Vec<(V, isize)>)>,
    /// What was emitted and still holds, by session start: `(end, output)`.
    emitted: BTreeMap<u64, (u64, O)>,
    /// The earliest time an evaluation is scheduled at.
    scheduled: Option<u64>,
}

impl<V, O> Default for KeySessions<V, O> {
    fn default() -> Self {
        KeySessions { events: BTreeMap::new(), emitted: BTreeMap::new(), scheduled: None }
    }
}

impl<V, O: Clone + PartialEq> KeySessions<V, O> {
    /// The current sessions with their results, in order.
    fn sessions<A: Aggregator<V, Output = O>>(&self, gap: u64, aggregator: &A) -> Vec<(Session, Option<O>)> {
        let mut sessions = Vec::new();
        let mut current: Option<(u64, u64, A::State)> = None;
        for (&event_time, (_, values)) in &self.events {
            match &mut current {
                Some((_, last, _)) if event_time - *last < gap => *last = event_time,
                _ => {
                    if let Some((start, last, state)) = current.take() {
                        sessions.push((Session { start, end: last + gap }, aggregator.output(&state)));
                    }
                    current = Some((event_time, event_time, A::State::default()));
                }
            }
            #[allow(clippy::expect_used, reason = "every arm of the match above leaves `current` set")]
            let (_, _, state) = current.as_mut().expect("set above");
            for (value, diff) in values {
                aggregator.update(state, value, *diff);
            }
        }
        if let Some((start, last, state)) = current {
            sessions.push((Session { start, end: last + gap }, aggregator.output(&state)));
        }
        sessions
    }
}

impl<'scope, K, V> SessionAggregate<'scope, K, V> for Stream<'scope, u64, Vec<(Timed<(K, V)>, u64, isize)>>
where
    K: ExchangeData + Hash + Eq + Clone + Ord,
    V: ExchangeData + Clone,
{
    fn session_aggregate<A>(self, name: &str, sessions: Sessions, aggregator: A) -> SessionStreams<'scope, K, A::Output, V>
    where
        A: Aggregator<V>,
        A::Output: Serialize + DeserializeOwned,
    {
        let Sessions { gap_ms, allowed_lateness_ms } = sessions;
        let gap = gap_ms.max(1);
        let (index, peers) = (self.scope().index(), self.scope().peers());
        let mut participant = Participant::join(name);
        let op_name = name.to_owned();
        let gauges = crate::state::Gauges::new(name, self.scope().index());
        let mut builder = OperatorBuilder::new(name.to_owned(), self.scope());
        let exchange = Exchange::new(|(record, _time, _diff): &(Timed<(K, V)>, u64, isize)| record.value.0.hashed());
        let mut input = builder.new_input(self, exchange);
        let (results_output, results) = builder.new_output::<Vec<SessionUpdate<K, A::Output>>>();
        let (late_output, late) = builder.new_output::<Vec<LateRecord<(K, V)>>>();
        let mut results_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(results_output);
        let mut late_output = OutputBuilder::<_, timely::container::CapacityContainerBuilder<_>>::from(late_output);

        builder.build(move |capabilities| {
            let mut keys: HashMap<K, KeySessions<V, A::Output>> = HashMap::default();
            let mut stash: ByTime<(Timed<(K, V)>, isize)> = ByTime::default();
            // Keys to evaluate once the frontier passes the time.
            let mut pending: ByTime<K> = ByTime::default();
            // Keys with a closed session, by the time after which it can be released.
            let mut releases: BTreeMap<u64, Vec<K>> = BTreeMap::new();
            if let Some((_, parts)) = participant.as_ref().and_then(Participant::restored) {
                let mine = |key: &K| (key.hashed() % peers as u64) as usize == index;
                for part in parts {
                    #[allow(clippy::panic, reason = "the store verified the part's checksum: only a changed program reads it wrongly")]
                    let (saved, due, released): SessionSnapshot<K, V, A::Output> = bincode::deserialize(&part).unwrap_or_else(|e| {
                        panic!("the checkpoint of session operator `{op_name}` cannot be read ({e}): was the program changed? Restart with a new commit log, or without --checkpoint-dir")
                    });
                    for (key, events, emitted, scheduled) in saved.into_iter().filter(|s| mine(&s.0)) {
                        keys.insert(key, KeySessions { events, emitted, scheduled });
                    }
                    for (time, key) in due.into_iter().filter(|d| mine(&d.1)) {
                        pending.push(time, |t| capabilities[0].delayed(t), key);
                    }
                    for (time, key) in released.into_iter().filter(|r| mine(&r.1)) {
                        releases.entry(time).or_default().push(key);
                    }
                }
            }
            drop(capabilities);
            let snapshot = |keys: &HashMap<K, KeySessions<V, A::Output>>, pending: &ByTime<K>, releases: &BTreeMap<u64, Vec<K>>| {
                let saved: Vec<_> = keys.iter().map(|(key, s)| (key, &s.events, &s.emitted, &s.scheduled)).collect();
                let due: Vec<_> = pending.iter().flat_map(|(time, items)| items.iter().map(move |key| (time, key))).collect();
                let released: Vec<_> = releases.iter().flat_map(|(time, items)| items.iter().map(move |key| (time, key))).collect();
                #[allow(clippy::expect_used, reason = "serializing into memory fails only for types serde cannot represent")]
                bincode::serialize(&(saved, due, released)).expect("session state serializes")
            };
            move |frontiers| {
                let (mut received, mut emitted) = (0, 0);
                let mut late_handle = late_output.activate();
                input.for_each(|cap, data| {
                    received += data.len();
                    for (record, time, diff) in data.drain(..) {
                        let window_end = record.event_time + gap;
                        if window_end + allowed_lateness_ms > time {
                            stash.push(time, |t| cap.delayed(t, 0), (record, diff));
                            continue;
                        }
                        late_handle.session(&cap.delayed(&time, 1)).give(LateRecord {
                            record: record.value,
                            event_time: record.event_time,
                            arrived_at: time,
                            diff,
                            window_end,
                            allowed_lateness_ms,
                            origin: record.origin,
                        });
                    }
                });
                drop(late_handle);

                let frontier = &frontiers[0];
                let mut results_handle = results_output.activate();
                while let Some(now) = stash.earliest(&pending).filter(|t| !frontier.less_equal(t)) {
                    if let Some(participant) = participant.as_mut() {
                        for time in participant.due_before(now) {
                            participant.put(time, snapshot(&keys, &pending, &releases));
                        }
                    }
                    if let Some((cap, records)) = stash.take(now) {
                        for (record, diff) in records {
                            let event_time = record.event_time;
                            let (key, value) = record.value;
                            let sessions = keys.entry(key.clone()).or_default();
                            let slot = sessions.events.entry(event_time).or_insert_with(|| (0, Vec::new()));
                            slot.0 += diff;
                            slot.1.push((value, diff));
                            if slot.0 == 0 {
                                sessions.events.remove(&event_time);
                            }
                            // A retraction may split or remove an emitted session now; an addition matters no
                            // earlier than the end of its own session (the evaluation then looks further).
                            let due = if diff < 0 { now } else { now.max(event_time + gap - 1) };
                            if sessions.scheduled.is_none_or(|s| due < s) {
                                sessions.scheduled = Some(due);
                                pending.push(due, |d| cap.delayed(d), key);
                            }
                        }
                    }
                    let Some((cap, mut due)) = pending.take(now) else { continue };
                    due.sort();
                    due.dedup();
                    let mut session = results_handle.session(&cap);
                    for key in due {
                        let Some(state) = keys.get_mut(&key) else { continue };
                        if state.scheduled.is_some_and(|s| s <= now) {
                            state.scheduled = None;
                        }
                        let sessions = state.sessions(gap, &aggregator);
                        let (closed, open): (Vec<_>, Vec<_>) = sessions.into_iter().partition(|(s, _)| s.end - 1 <= now);
                        let absorbed = |start: u64, end: u64| open.iter().any(|(o, _)| o.start < end && start < o.end);
                        let holds = |start: u64, end: u64, output: &A::Output| {
                            closed.iter().any(|(s, o)| s.start == start && s.end == end && o.as_ref() == Some(output))
                        };
                        let stale: Vec<u64> = state
                            .emitted
                            .iter()
                            .filter(|&(&start, (end, output))| !holds(start, *end, output) && !absorbed(start, *end))
                            .map(|(&start, _)| start)
                            .collect();
                        for start in stale {
                            let Some((end, old)) = state.emitted.remove(&start) else { continue };
                            session.give((((key.clone(), Session { start, end }), old), now, -1));
                            emitted += 1;
                        }
                        for (s, output) in closed {
                            let Some(output) = output else { continue };
                            if state.emitted.get(&s.start).is_some_and(|(end, o)| *end == s.end && *o == output) {
                                continue;
                            }
                            if let Some((end, old)) = state.emitted.insert(s.start, (s.end, output.clone())) {
                                session.give((((key.clone(), Session { start: s.start, end }), old), now, -1));
                                emitted += 1;
                            }
                            session.give((((key.clone(), s), output), now, 1));
                            emitted += 1;
                            releases.entry(s.end + gap + allowed_lateness_ms).or_default().push(key.clone());
                        }
                        if let Some(next) = open.iter().map(|(s, _)| s.end - 1).min()
                            && state.scheduled.is_none_or(|s| next < s)
                        {
                            state.scheduled = Some(next);
                            pending.push(next, |d| cap.delayed(d), key.clone());
                        }
                    }
                }
                drop(results_handle);
                if let Some(participant) = participant.as_mut() {
                    for time in participant.due(frontier.frontier()) {
                        participant.put(time, snapshot(&keys, &pending, &releases));
                    }
                }

                // Release sessions no record that is not late can reach any more. Sessions are disjoint and in
                // order, so the released ones are a prefix: cut the key's state at the last one's end.
                let horizon = frontier.frontier().iter().next().copied().unwrap_or(u64::MAX);
                while let Some(entry) = releases.first_entry() {
                    if *entry.key() >= horizon {
                        break;
                    }
                    for key in entry.remove() {
                        let Some(state) = keys.get_mut(&key) else { continue };
                        let cut = state
                            .sessions(gap, &aggregator)
                            .iter()
                            .take_while(|(s, _)| s.end + gap + allowed_lateness_ms < horizon)
                            .last()
                            .map(|(s, _)| s.end);
                        if let Some(cut) = cut {
                            state.events = state.events.split_off(&cut);
                            state.emitted = state.emitted.split_off(&cut);
                        }
                        if state.events.is_empty() && state.emitted.is_empty() && state.scheduled.is_none() {
                            keys.remove(&key);
                        }
                    }
                }
                gauges.set(keys.len(), stash.len());
                gauges.count(received, emitted);
            }
        });
        SessionStreams { results, late }
    }
}
