#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

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
