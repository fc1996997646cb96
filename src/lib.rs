#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// No panic on a path a broker, the network, a peer or a user's input can reach: every remaining site says why it
// cannot fail (`#[allow(.., reason = ..)]`), and clippy (`-D warnings` in CI) refuses new ones.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented)
)]

pub use tributary_connectors as connectors;
pub use tributary_operators as operators;
pub use tributary_runtime as runtime;

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub mod prelude;
mod run;

pub use run::{Collect, Collected, Outputs, run};
pub use tributary_runtime::{ClusterArgs, Error, Result, Shutdown, WorkerContext, execute};

/// timely-dataflow, at the exact version Tributary is built and tested with.
pub use timely;

/// differential-dataflow, at the exact version Tributary is built and tested with.
pub use differential_dataflow;
