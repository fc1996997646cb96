//! Tributary's connectors: where data enters and leaves a dataflow (Kafka through rdkafka, files).
#![deny(missing_docs)]
