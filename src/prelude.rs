//! What a Tributary program imports: `use tributary::prelude::*;`.
//!
//! The sources, sinks and job of the connectors, the event-time operators and aggregators, the extension
//! traits that add operators to timely streams and differential collections (`map`, `inspect`, `concat`,
//! `as_collection`, `window_aggregate`, `sink_kafka`, ...), and [`run`](crate::run) with
//! [`Collect`](crate::Collect). Everything lower level stays where it is, under [`crate::timely`] and
//! [`crate::differential_dataflow`].

pub use crate::run::{Collect, Collected, Outputs};
pub use crate::{ClusterArgs, run};

pub use tributary_connectors::file::FileSource;
pub use tributary_connectors::kafka::{
    CommitLog, Decoder, Delivery, EventTime, KafkaArgs, KafkaConfig, KafkaSink, KafkaSource, SinkDeadLetters, SinkFormat, SinkKafka,
    StartFrom, encode,
};
pub use tributary_connectors::{Backpressure, DeadLetter, Job, JobArgs, Reason, Source, SourceArgs, SourceOptions, SourceStreams};

pub use tributary_operators::aggregate::{Average, Count, CountDistinct, Fold, Max, Min, Over, Sum, TopK, over};
pub use tributary_operators::window::WindowError;
pub use tributary_operators::{
    Aggregate, Aggregator, Emit, Interval, IntervalJoin, LateRecord, Origin, OuterJoin, SessionAggregate, Sessions, TemporalJoin, Timed,
    TimedStream, Upsert, WatermarkPolicy, WindowAggregate, WindowJoin, WindowSpec, Windows,
};

pub use std::time::Duration;

pub use differential_dataflow::{AsCollection, VecCollection};
pub use timely::dataflow::operators::vec::{Filter, Map};
pub use timely::dataflow::operators::{Concat, Concatenate, Exchange, Inspect, Probe, ToStream};
pub use timely::dataflow::{ProbeHandle, Scope, Stream};
