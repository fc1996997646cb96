//! How much state each stateful operator holds, and how many records it received and emitted, per worker: for
//! the metrics endpoint (`tributary_operator_state_entries`, `tributary_operator_records_total`,
//! docs/metrics.md) and for tests that check that state is released.
//!
//! Every windowed, session, join and table operator reports, after each of its activations, two counts:
//! - `held`: what it keeps for later: window × key states (windows), keys with sessions (sessions), records on
//!   both sides (interval and window joins), keys (upsert and temporal-join tables);
//! - `buffered`: records received and waiting for the frontier to pass their time.
//!
//! An event-time operator's `held` count goes back to 0 once the frontier has passed everything it holds
//! (a table's does not: a table is kept). [`sizes`] reads them; an operator's entries disappear with it.
//!
//! ```
//! use timely::dataflow::operators::{Input, Probe};
//! use tributary_operators::aggregate::Count;
//! use tributary_operators::state::{StateSize, sizes};
//! use tributary_operators::{Timed, WindowAggregate, Windows};
//!
//! timely::execute_directly(|worker| {
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, records) = scope.new_input::<Vec<(Timed<(String, ())>, u64, isize)>>();
//!         let window = Windows::tumbling(std::time::Duration::from_millis(10)).unwrap();
//!         let counts = records.window_aggregate("Counts", window, Count);
//!         (input, counts.results.probe().0)
//!     });
//!     let held = || sizes().into_iter().find(|s: &StateSize| s.operator == "Counts" && s.kind == "held").map(|s| s.entries);
//!     input.send((Timed::new(3, ("a".to_string(), ())), 3, 1));
//!     input.advance_to(5);
//!     worker.step_while(|| probe.less_than(&5));
//!     assert_eq!(held(), Some(1)); // the window [0, 10) of key "a"
//!     input.advance_to(11);
//!     worker.step_while(|| probe.less_than(&11));
//!     assert_eq!(held(), Some(0)); // the frontier has passed the window's end: its state is released
//! });
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One operator's count of one kind on one worker, as [`sizes`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateSize {
    /// The operator's name (the `name` argument of its constructor).
    pub operator: String,
    /// The worker (global index).
    pub worker: usize,
    /// `"held"` or `"buffered"` (see the module docs).
    pub kind: &'static str,
    /// The count.
    pub entries: u64,
}

/// Records into and out of one operator on one worker, as [`records`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordCounts {
    /// The operator's name.
    pub operator: String,
    /// The worker (global index).
    pub worker: usize,
    /// Updates received (on all inputs).
    pub received: u64,
    /// Updates emitted on the results output (late records are counted as dead letters where they end up).
    pub emitted: u64,
}

#[derive(Default)]
struct Counts {
    held: AtomicU64,
    buffered: AtomicU64,
    received: AtomicU64,
    emitted: AtomicU64,
}

struct Registered {
    operator: String,
    worker: usize,
    counts: Weak<Counts>,
}

static REGISTERED: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// The live operators of this process with their counts.
fn live() -> Vec<(String, usize, Arc<Counts>)> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    registered.retain(|r| r.counts.strong_count() > 0);
    registered.iter().filter_map(|r| Some((r.operator.clone(), r.worker, r.counts.upgrade()?))).collect()
}

/// The state sizes of every live operator of this process.
pub fn sizes() -> Vec<StateSize> {
    live()
        .into_iter()
        .flat_map(|(operator, worker, counts)| {
            [("held", &counts.held), ("buffered", &counts.buffered)].map(|(kind, entries)| StateSize {
                operator: operator.clone(),
                worker,
                kind,
                entries: entries.load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// The record counts of every live operator of this process.
pub fn records() -> Vec<RecordCounts> {
    live()
        .into_iter()
        .map(|(operator, worker, counts)| RecordCounts {
            operator,
            worker,
            received: counts.received.load(Ordering::Relaxed),
            emitted: counts.emitted.load(Ordering::Relaxed),
        })
        .collect()
}

/// An operator's counts; they leave [`sizes`] and [`records`] when it is dropped.
pub(crate) struct Gauges {
    counts: Arc<Counts>,
}

impl Gauges {
    /// Registers the counts of operator `operator` on `worker`.
    pub(crate) fn new(operator: &str, worker: usize) -> Gauges {
        let counts = Arc::new(Counts::default());
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        registered.retain(|r| r.counts.strong_count() > 0);
        registered.push(Registered { operator: operator.to_owned(), worker, counts: Arc::downgrade(&counts) });
        Gauges { counts }
    }

    /// Sets both state counts.
    pub(crate) fn set(&self, held: usize, buffered: usize) {
        self.counts.held.store(held as u64, Ordering::Relaxed);
        self.counts.buffered.store(buffered as u64, Ordering::Relaxed);
    }

    /// Adds an activation's records received and emitted.
    pub(crate) fn count(&self, received: usize, emitted: usize) {
        if received > 0 {
            self.counts.received.fetch_add(received as u64, Ordering::Relaxed);
        }
        if emitted > 0 {
            self.counts.emitted.fetch_add(emitted as u64, Ordering::Relaxed);
        }
    }
}
