//! Kafka: topics as event-time sources and as sinks of changelogs, through rdkafka.
//!
//! See [`KafkaSource`] for assignment, start positions and bounded mode, [`KafkaConfig`] for settings, and
//! [`Decoder`]/[`EventTime`] for turning records into values with event times, and [`KafkaSink`] /
//! [`SinkKafka`] for writing collections back, exactly once, as part of a job whose [`CommitLog`] holds its
//! commits.

mod admin;
mod commit_log;
mod config;
mod partitioner;
mod record;
mod sink;
mod source;

pub use admin::{AdminError, create_topic};
pub(crate) use commit_log::CommitWriter;
pub use commit_log::{CommitLog, CommitLogError};
pub use config::{ConfigError, KafkaArgs, KafkaConfig, Sasl, SaslMechanism, Secret, Tls};
pub use partitioner::partition_for;
pub use record::{Decoder, EventTime, KafkaRecord, Message};
pub use sink::{Delivery, KafkaSink, KafkaSinkBuilder, SinkDeadLetters, SinkError, SinkFormat, SinkKafka, Written, encode};
pub use source::{KafkaSource, Position, SourceError, StartFrom, owner};
