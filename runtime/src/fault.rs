//! Stopping a job with a typed error from inside the dataflow.
//!
//! A connector or operator that meets a fault it cannot go on past (the broker refuses a write for good, a
//! commit cannot be written, a position the job reads from is gone) calls [`stop`] with its typed error. The
//! worker unwinds out of the dataflow without a panic message (timely has no other way out of a step), and
//! [`execute`](crate::execute) returns [`Error::Fault`](crate::Error::Fault) with the error as its source, so a
//! program can tell one fault from another:
//!
//! ```
//! use tributary_runtime::{ClusterArgs, Error, execute, fault};
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the input is gone")]
//! struct InputGone;
//!
//! let result = execute(&ClusterArgs::default(), |_worker, _ctx| -> () { fault::stop(InputGone) });
//! match result {
//!     Err(Error::Fault { source, .. }) => assert!(source.downcast_ref::<InputGone>().is_some()),
//!     other => panic!("expected the fault, got {other:?}"),
//! }
//! ```
//!
//! The other processes of a cluster see the process stop and return
//! [`Error::PeerLost`](crate::Error::PeerLost), as for any process that ends; the faulting process's log line
//! and exit error say what happened and what to do.

/// Any error a job can stop with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The payload a worker unwinds with when it stops the job.
pub(crate) struct Fault(pub(crate) BoxError);

/// Stops this worker's job with `error`: the worker unwinds out of the dataflow, and `execute` returns
/// [`Error::Fault`](crate::Error::Fault) holding it. For faults a connector cannot go on past; what a program
/// can handle (a malformed record) goes to the dead letters instead.
pub fn stop(error: impl Into<BoxError>) -> ! {
    std::panic::resume_unwind(Box::new(Fault(error.into())))
}
