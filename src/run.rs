//! Running one dataflow on every worker until its outputs are done, and collecting final results.
//!
//! [`run`] is [`execute`](crate::execute) with the stepping loop written once: it builds the dataflow the
//! closure describes on each worker, steps the worker until everything the closure returned is done (probes,
//! a job's last commit, [`Collected`] results), and returns what each output holds then, per worker of this
//! process. [`Collect::collect_final`] gathers a collection's (or a stream's) updates on worker 0 and hands
//! them back consolidated, so a bounded program can print its final result in one line.
//!
//! ```
//! use tributary::prelude::*;
//!
//! let args = tributary::ClusterArgs { workers: 2, ..Default::default() };
//! let results = tributary::run(&args, |scope, ctx| {
//!     // Worker 0 reads the input; the counts are the same whichever worker does.
//!     let input = if ctx.index == 0 { vec!["a", "b", "a"] } else { vec![] };
//!     let words = input.into_iter().map(String::from);
//!     words.to_stream(scope).map(|w| (w, 0u64, 1isize)).as_collection().count().collect_final()
//! })?;
//! // Worker 0 holds the result; the others hold nothing.
//! let counts: Vec<_> = results.into_iter().flatten().collect();
//! assert_eq!(counts, vec![(("a".to_string(), 2), 1), (("b".to_string(), 1), 1)]);
//! # Ok::<(), tributary::Error>(())
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use timely::ExchangeData;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::{ClusterArgs, Result, WorkerContext};

/// What a dataflow built by [`run`] hands back: whether it is done, and what it holds once it is.
///
/// Implemented for probes (done once the frontier is empty), [`Collected`] results, and `Option`s, `Vec`s and
/// tuples of them, so a closure returns everything it waits for in one value.
pub trait Outputs {
    /// What the worker returns once the outputs are done.
    type Output: Send + 'static;
    /// Whether every output is complete (the worker stops stepping once it is).
    fn done(&self) -> bool;
    /// The outputs' contents, once done.
    fn finish(self) -> Self::Output;
}

impl Outputs for ProbeHandle<u64> {
    type Output = ();
    fn done(&self) -> bool {
        ProbeHandle::done(self)
    }
    fn finish(self) {}
}

impl<A: Outputs> Outputs for Option<A> {
    type Output = Option<A::Output>;
    fn done(&self) -> bool {
        self.as_ref().is_none_or(Outputs::done)
    }
    fn finish(self) -> Self::Output {
        self.map(Outputs::finish)
    }
}

impl<A: Outputs> Outputs for Vec<A> {
    type Output = Vec<A::Output>;
    fn done(&self) -> bool {
        self.iter().all(Outputs::done)
    }
    fn finish(self) -> Self::Output {
        self.into_iter().map(Outputs::finish).collect()
    }
}

macro_rules! tuple_outputs {
    ($($name:ident),+) => {
        impl<$($name: Outputs),+> Outputs for ($($name,)+) {
            type Output = ($($name::Output,)+);
            #[allow(non_snake_case)]
            fn done(&self) -> bool {
                let ($($name,)+) = self;
                true $(&& $name.done())+
            }
            #[allow(non_snake_case)]
            fn finish(self) -> Self::Output {
                let ($($name,)+) = self;
                ($($name.finish(),)+)
            }
        }
    };
}
tuple_outputs!(A, B);
tuple_outputs!(A, B, C);
tuple_outputs!(A, B, C, D);

/// Runs the dataflow `build` describes on every worker of the cluster `args` describe, steps each worker until
/// the returned [`Outputs`] are done, and returns their contents, one entry per worker of this process.
///
/// A SIGINT or SIGTERM stops the sources (see [`crate::runtime::shutdown`]), so an unbounded job ends too.
pub fn run<R, F>(args: &ClusterArgs, build: F) -> Result<Vec<R::Output>>
where
    R: Outputs,
    F: for<'scope> Fn(Scope<'scope, u64>, &WorkerContext) -> R + Send + Sync + 'static,
{
    crate::execute(args, move |worker, ctx| {
        let outputs = worker.dataflow::<u64, _, _>(|scope| build(scope, ctx));
        worker.step_or_park_while(None, || !outputs.done());
        outputs.finish()
    })
}

/// A collection's final contents, gathered on worker 0 (see [`Collect::collect_final`]).
pub struct Collected<D> {
    updates: Rc<RefCell<Vec<(D, isize)>>>,
    probe: ProbeHandle<u64>,
}

impl<D: Ord + Send + 'static> Outputs for Collected<D> {
    type Output = Vec<(D, isize)>;
    fn done(&self) -> bool {
        self.probe.done()
    }
    /// Every record with its net multiplicity, sorted; records that add up to nothing left out. Empty on every
    /// worker but worker 0.
    fn finish(self) -> Vec<(D, isize)> {
        let mut updates = std::mem::take(&mut *self.updates.borrow_mut());
        consolidate(&mut updates);
        updates
    }
}

/// Gathers updates on worker 0 to be read once the dataflow is done: for bounded programs that print their
/// result.
pub trait Collect<D> {
    /// The updates, consolidated once the input is done (see [`Collected`]).
    fn collect_final(self) -> Collected<D>;
}

impl<'scope, D: ExchangeData + Clone> Collect<D> for Stream<'scope, u64, Vec<(D, u64, isize)>> {
    fn collect_final(self) -> Collected<D> {
        let updates: Rc<RefCell<Vec<(D, isize)>>> = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&updates);
        let (probe, _) =
            self.exchange(|_| 0).inspect(move |update: &(D, u64, isize)| sink.borrow_mut().push((update.0.clone(), update.2))).probe();
        Collected { updates, probe }
    }
}

impl<'scope, D: ExchangeData + Clone> Collect<D> for VecCollection<'scope, u64, D, isize> {
    fn collect_final(self) -> Collected<D> {
        self.inner.collect_final()
    }
}
