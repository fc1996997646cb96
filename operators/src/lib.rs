//! Tributary's operators: event-time computations on timely streams and differential collections.
//!
//! Time is event time in milliseconds (`u64`); a frontier means "no record older than this will come".
//! - [`event_time`]: the time model every source shares (watermarks, lateness, idleness).
//! - [`aggregate`]: aggregators that accept retractions (count, sum, average, min, max, count-distinct, top-k,
//!   user folds), and per-key aggregation of whole collections as a changelog.
//! - [`window`], [`session`]: keyed tumbling, hopping and session windows with allowed lateness and state release.
//! - [`join`]: outer joins of collections; [`temporal_join`]: stream-table joins as of each record's time;
//!   [`window_join`], [`interval_join`]: stream-stream joins whose state is released as the watermark passes.
//! - [`upsert`]: tables from keyed streams (latest value per key, `None` deletes).
//! - [`late`]: records too late for an operator, and the origin (source, offset, bytes) they keep.
//! - [`timed`]: mapping, keying and filtering timed records without rebuilding their updates.
//!
//! The event-time operators process their input one time at a time once the frontier has passed it, so their
//! output, with its times, is the same for any number of workers and processes and on every replay.
//! This crate builds only on timely and differential; it never imports connectors or rdkafka.
#![deny(missing_docs)]
// No panic on a path a broker, the network, a peer or a user's input can reach: every remaining site says why it
// cannot fail (`#[allow(.., reason = ..)]`), and clippy (`-D warnings` in CI) refuses new ones.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented)
)]

pub mod aggregate;
pub mod checkpoint;
pub mod event_time;
pub mod interval_join;
pub mod join;
pub mod late;
mod ordered;
pub mod session;
pub mod state;
pub mod temporal_join;
pub mod timed;
mod timed_join;
pub mod upsert;
pub mod window;
pub mod window_join;

pub use aggregate::{Aggregate, Aggregator};
pub use event_time::{Arrival, PartitionClock, SourceClock, Timed, WatermarkPolicy};
pub use interval_join::{Interval, IntervalJoin};
pub use join::OuterJoin;
pub use late::{LateRecord, Origin};
pub use session::{SessionAggregate, Sessions};
pub use temporal_join::TemporalJoin;
pub use timed::TimedStream;
pub use upsert::Upsert;
pub use window::{Emit, WindowAggregate, WindowSpec, Windows};
pub use window_join::WindowJoin;
