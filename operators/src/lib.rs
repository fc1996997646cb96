//! Tributary's operators: event-time computations on timely streams and differential collections.
//!
//! Time is event time in milliseconds (`u64`); a frontier means "no record older than this will come".
//! [`event_time`] holds the time model every source shares (watermarks, lateness, idleness); [`window`] keyed
//! event-time windows with allowed lateness; [`join`] outer joins; [`upsert`] tables from keyed streams;
//! [`temporal_join`] stream-table joins as of each record's time.
//! This crate builds only on timely and differential; it never imports connectors or rdkafka.
#![deny(missing_docs)]

pub mod event_time;
pub mod join;
pub mod temporal_join;
pub mod upsert;
pub mod window;

pub use event_time::{Arrival, PartitionClock, SourceClock, Timed, WatermarkPolicy};
