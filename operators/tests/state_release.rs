//! State release, checked by the state sizes the operators report ([`tributary_operators::state`]), not by RSS:
//! windows, sessions and joins hold what is still open while the frontier is behind it, and nothing once the
//! frontier has passed it (plus its allowed lateness). Each count is checked exactly where the arithmetic is
//! simple, so an operator that frees too little or too early fails.

use std::time::Duration;

use timely::dataflow::operators::{Input, Probe};
use tributary_operators::aggregate::Count;
use tributary_operators::state::{self, sizes};
use tributary_operators::{Interval, IntervalJoin, SessionAggregate, Sessions, Timed, WindowAggregate, WindowJoin, Windows};

/// How long a test's dataflow may run before the test binary fails (a hang would hang the suite).
const DATAFLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

type Records = Vec<(Timed<(u8, u8)>, u64, isize)>;

/// `(held, buffered)` of operator `name`, summed over workers.
fn state_of(name: &str) -> (u64, u64) {
    let sizes = sizes();
    let sum = |kind: &str| sizes.iter().filter(|s| s.operator == name && s.kind == kind).map(|s| s.entries).sum();
    assert!(sizes.iter().any(|s| s.operator == name), "operator {name} reports no state sizes: {sizes:?}");
    (sum("held"), sum("buffered"))
}

/// Sends `(key, event time)` records at their event times, in order, on `input`.
fn send(input: &mut timely::dataflow::InputHandle<u64, timely::container::CapacityContainerBuilder<Records>>, records: &[(u8, u64)]) {
    for &(key, event_time) in records {
        input.advance_to(event_time);
        input.send((Timed::new(event_time, (key, 0)), event_time, 1));
    }
}

#[test]
fn a_window_holds_its_keys_until_the_frontier_passes_its_end_plus_the_lateness() {
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute_directly(|worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_input::<Records>();
            let spec = Windows::tumbling(Duration::from_millis(10)).unwrap().allowed_lateness(Duration::from_millis(5));
            let counts = records.window_aggregate("ReleaseWindows", spec, Count);
            (input, counts.results.probe().0)
        });
        // Three keys, one record each per ms: windows [0, 10), [10, 20), ... of each key.
        let records = |from: u64, to: u64| -> Vec<(u8, u64)> { (from..to).flat_map(|t| (0..3).map(move |k| (k, t))).collect() };
        send(&mut input, &records(0, 44));
        input.advance_to(44);
        worker.step_while(|| probe.less_than(&44));
        // Released: windows with start + 10 + 5 < 44, so [0, 10) .. [20, 30); held: [30, 40) and [40, 50), 3 keys.
        assert_eq!(state_of("ReleaseWindows"), (2 * 3, 0));
        input.advance_to(46);
        worker.step_while(|| probe.less_than(&46));
        assert_eq!(state_of("ReleaseWindows"), (3, 0));
        send(&mut input, &records(46, 100));
        input.advance_to(104);
        worker.step_while(|| probe.less_than(&104));
        // [90, 100) goes once the frontier passes 105.
        assert_eq!(state_of("ReleaseWindows").0, 3);
        input.advance_to(106);
        worker.step_while(|| probe.less_than(&106));
        assert_eq!(state_of("ReleaseWindows"), (0, 0));
        // Every record in (times 0..44 and 46..100), one result per window and key out (nothing was late).
        let counts = state::records().into_iter().find(|c| c.operator == "ReleaseWindows").expect("the window's record counts");
        assert_eq!((counts.received, counts.emitted), (3 * (44 + 54), 3 * 10));
    });
}

#[test]
fn a_session_is_held_until_the_frontier_passes_its_end_plus_gap_and_lateness() {
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute_directly(|worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_input::<Records>();
            let sessions = Sessions::gap(Duration::from_millis(10)).unwrap().allowed_lateness(Duration::from_millis(5));
            let results = records.session_aggregate("ReleaseSessions", sessions, Count);
            (input, results.results.probe().0)
        });
        // Key 1: a session [0, 13) (records at 0 and 3); key 2: [20, 32) (records at 20, 22).
        send(&mut input, &[(1, 0), (1, 3), (2, 20), (2, 22)]);
        input.advance_to(30);
        worker.step_while(|| probe.less_than(&30));
        // Key 1's session ended at 13: released once the frontier passes 13 + 10 + 5 = 28.
        assert_eq!(state_of("ReleaseSessions"), (1, 0));
        input.advance_to(47);
        worker.step_while(|| probe.less_than(&47));
        // Key 2's ends at 32: held while the frontier is at most 47.
        assert_eq!(state_of("ReleaseSessions").0, 1);
        input.advance_to(48);
        worker.step_while(|| probe.less_than(&48));
        assert_eq!(state_of("ReleaseSessions"), (0, 0));
    });
}

#[test]
fn joins_release_their_records_once_no_match_is_possible() {
    let _deadline = tributary_testkit::Deadline::new("the dataflow", DATAFLOW_LIMIT);
    timely::execute_directly(|worker| {
        let (mut left, mut right, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (left, lefts) = scope.new_input::<Records>();
            let (right, rights) = scope.new_input::<Records>();
            let windows = Windows::tumbling(Duration::from_millis(10)).unwrap();
            let windowed = lefts.clone().window_join("ReleaseWindowJoin", rights.clone(), windows, Duration::from_millis(5));
            let interval = Interval::between(Duration::from_millis(3), Duration::from_millis(4));
            let intervals = lefts.interval_join("ReleaseIntervalJoin", rights, interval, Duration::from_millis(0));
            let (probe, _) = windowed.results.probe();
            intervals.results.probe_with(&probe);
            (left, right, probe)
        });
        let records: Vec<(u8, u64)> = (0..30).map(|t| (t as u8 % 2, t)).collect();
        send(&mut left, &records);
        send(&mut right, &records);
        left.advance_to(30);
        right.advance_to(30);
        worker.step_while(|| probe.less_than(&30));
        let (window_held, _) = state_of("ReleaseWindowJoin");
        let (interval_held, _) = state_of("ReleaseIntervalJoin");
        assert!(window_held > 0 && interval_held > 0, "records that can still match are held: {window_held}, {interval_held}");
        // Everything before the frontier minus the longest reach (window + lateness, or the interval) is gone.
        assert!(window_held <= 2 * 20, "the window join holds more than the open windows' records: {window_held}");
        assert!(interval_held <= 2 * 8, "the interval join holds more than the interval's reach: {interval_held}");
        left.advance_to(1_000);
        right.advance_to(1_000);
        worker.step_while(|| probe.less_than(&1_000));
        assert_eq!(state_of("ReleaseWindowJoin"), (0, 0));
        assert_eq!(state_of("ReleaseIntervalJoin"), (0, 0));
    });
}
