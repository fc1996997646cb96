//! The few Admin and metadata calls the sinks and the commit log need: create a topic if it is missing, check its
//! partition count, read partition ends and a topic's record size limit.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::config::KafkaConfig;

/// How long one metadata or admin request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a topic could not be prepared or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The client could not be created or a request failed.
    #[error("Kafka request to {brokers} failed ({what}): {reason}; check that the brokers are reachable")]
    Request {
        /// The brokers.
        brokers: String,
        /// What was being done.
        what: String,
        /// The client's message.
        reason: String,
    },
    /// The topic exists with another partition count.
    #[error("topic `{topic}` has {actual} partition(s) but {expected} are configured for it; configure {actual}, or use another topic")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Its partition count.
        actual: i32,
        /// The configured count.
        expected: i32,
    },
}

fn request(config: &KafkaConfig, what: impl Into<String>, reason: impl ToString) -> AdminError {
    AdminError::Request { brokers: config.brokers().to_owned(), what: what.into(), reason: reason.to_string() }
}

/// A consumer for metadata and reads by assignment (no group, nothing committed).
pub(crate) fn reader(config: &KafkaConfig) -> Result<BaseConsumer, AdminError> {
    config
        .client_config(&[
            ("group.id", "tributary-sink"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            // Reads here go to a known end: do not let the broker hold a fetch waiting for more.
            ("fetch.wait.max.ms", "10"),
        ])
        .create()
        .map_err(|e| request(config, "creating a client", e))
}

/// The partition count of `topic`, or `None` if it does not exist.
pub(crate) fn partition_count(config: &KafkaConfig, consumer: &BaseConsumer, topic: &str) -> Result<Option<i32>, AdminError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(|e| request(config, format!("metadata of {topic}"), e))?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len() as i32).filter(|n| *n > 0))
}

/// Creates `topic` with `partitions` if it is missing, and checks the partition count either way.
pub(crate) fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
    settings: &[(&str, &str)],
) -> Result<(), AdminError> {
    let consumer = reader(config)?;
    if partition_count(config, &consumer, topic)?.is_none() {
        let admin: AdminClient<DefaultClientContext> =
            config.client_config(&[]).create().map_err(|e| request(config, "creating an admin client", e))?;
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        for (key, value) in settings {
            new = new.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = futures_executor::block_on(admin.create_topics([&new], &options))
            .map_err(|e| request(config, format!("creating topic {topic}"), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(request(config, format!("creating topic {topic}"), code)),
            }
        }
        tracing::info!(topic, partitions, "created topic");
    }
    // Metadata can lag a creation for a moment; wait for the topic to show, with a deadline.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        match partition_count(config, &consumer, topic)? {
            Some(actual) if actual == partitions => return Ok(()),
            Some(actual) => return Err(AdminError::PartitionMismatch { topic: topic.to_owned(), actual, expected: partitions }),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => return Err(request(config, format!("waiting for topic {topic} to appear"), "not in the metadata")),
        }
    }
}

/// Creates `topic` with `partitions` (replication 1) if it does not exist; an existing topic with another
/// partition count is an error. For loaders and tests; sinks create their own topics.
pub fn create_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<(), AdminError> {
    ensure_topic(config, topic, partitions, 1, &[])
}

/// The topic's `max.message.bytes`, if the brokers say (DescribeConfigs).
pub(crate) fn max_message_bytes(config: &KafkaConfig, topic: &str) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = config.client_config(&[]).create().ok()?;
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = futures_executor::block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options)).ok()?;
    let resource = results.into_iter().next()?.ok()?;
    resource.get("max.message.bytes")?.value.as_deref()?.parse().ok()
}

/// The end (high watermark) of each partition of `topic`.
pub(crate) fn partition_ends(config: &KafkaConfig, consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<i64>, AdminError> {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| request(config, format!("end of {topic}/{p}"), e))
        })
        .collect()
}
