//! Tributary's connectors: where data enters and leaves a dataflow.
//!
//! Every source is built on [`source::partitioned_source`], which applies the event-time model of
//! [`tributary_operators::event_time`] and routes malformed and too-late records to a [`DeadLetter`] output.
//! [`file`] reads JSON-lines and CSV files. [`job`] ties sources and sinks into exactly-once commits.
#![deny(missing_docs)]
// No panic on a path a broker, the network, a peer or a user's input can reach: every remaining site says why it
// cannot fail (`#[allow(.., reason = ..)]`), and clippy (`-D warnings` in CI) refuses new ones.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented)
)]

pub mod dead_letter;
mod error;
pub mod file;
pub mod job;
pub mod kafka;
mod metrics;
pub mod source;

pub use dead_letter::{DeadLetter, Reason};
pub use error::{Error, Result};
pub use job::Job;
pub use job::JobArgs;
pub use source::{Backpressure, CommitAfter, PartitionMetrics, Source, SourceArgs, SourceMetrics, SourceOptions, SourceStreams, Timed};
