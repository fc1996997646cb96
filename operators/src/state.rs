//! How much state each stateful operator holds, per worker: for the metrics endpoint
//! (`tributary_operator_state_entries`, docs/metrics.md) and for tests that check that state is released.
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

struct Registered {
    operator: String,
    worker: usize,
    kind: &'static str,
    entries: Weak<AtomicU64>,
}

static REGISTERED: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// The state sizes of every live operator of this process.
pub fn sizes() -> Vec<StateSize> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    registered.retain(|r| r.entries.strong_count() > 0);
    registered
        .iter()
        .filter_map(|r| {
            let entries = r.entries.upgrade()?.load(Ordering::Relaxed);
            Some(StateSize { operator: r.operator.clone(), worker: r.worker, kind: r.kind, entries })
        })
        .collect()
}

/// An operator's two counts; they leave [`sizes`] when it is dropped.
pub(crate) struct Gauges {
    held: Arc<AtomicU64>,
    buffered: Arc<AtomicU64>,
}

impl Gauges {
    /// Registers the counts of operator `operator` on `worker`.
    pub(crate) fn new(operator: &str, worker: usize) -> Gauges {
        let (held, buffered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        registered.retain(|r| r.entries.strong_count() > 0);
        for (kind, entries) in [("held", &held), ("buffered", &buffered)] {
            registered.push(Registered { operator: operator.to_owned(), worker, kind, entries: Arc::downgrade(entries) });
        }
        Gauges { held, buffered }
    }

    /// Sets both counts.
    pub(crate) fn set(&self, held: usize, buffered: usize) {
        self.held.store(held as u64, Ordering::Relaxed);
        self.buffered.store(buffered as u64, Ordering::Relaxed);
    }
}
