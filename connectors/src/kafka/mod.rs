//! Kafka: topics as event-time sources (and, later, sinks), through rdkafka.
//!
//! See [`KafkaSource`] for assignment, start positions and bounded mode, [`KafkaConfig`] for settings, and
//! [`Decoder`]/[`EventTime`] for turning records into values with event times.

mod config;
mod record;
mod source;

pub use config::{ConfigError, KafkaConfig};
pub use record::{Decoder, EventTime, KafkaRecord, Message};
pub use source::{KafkaSource, Position, SourceError, StartFrom, owner};
