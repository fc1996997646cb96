//! The few Admin and metadata calls the sinks and the commit log need: create a topic if it is missing, check its
//! partition count, read partition ends and a topic's record size limit.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
    /// The brokers refused the client's TLS handshake or SASL login: retrying will not help.
    #[error("cannot connect to the Kafka brokers at {brokers}: {reason}")]
    Security {
        /// The brokers.
        brokers: String,
        /// What failed, librdkafka's message, and what to check.
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

/// Routes librdkafka's logs into `tracing`, and keeps the latest TLS or SASL failure, so a request that cannot
/// be answered says why instead of timing out.
#[derive(Default)]
pub(crate) struct AdminContext {
    security: Mutex<Option<String>>,
}

impl AdminContext {
    /// The latest TLS or SASL failure, with what to check.
    pub(crate) fn security_failure(&self) -> Option<String> {
        self.security.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets what was recorded (before a new request, so an old failure does not end it).
    pub(crate) fn clear(&self) {
        *self.security.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        super::config::log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(check) = security_check(&error, reason) {
            *self.security.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{reason} ({check})"));
        }
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ConsumerContext for AdminContext {}

/// What to check when librdkafka reports `error` with `reason`, if it is a TLS or SASL failure. A broker that
/// refuses the client's certificate does so with a TLS alert after the handshake (TLS 1.3), which librdkafka
/// reports as a transport failure naming OpenSSL.
pub(crate) fn security_check(error: &KafkaError, reason: &str) -> Option<&'static str> {
    // Only a refusal, not a connection that merely ended (OpenSSL also names itself for an EOF without
    // close_notify, e.g. from a proxy whose backend is down, which is worth retrying).
    let tls_alert = reason.contains("SSL routines") && (reason.contains("alert") || reason.contains("certificate"));
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some("the brokers refused the login: check --kafka-sasl, --kafka-user and the password file")
        }
        RDKafkaErrorCode::BrokerTransportFailure if !tls_alert => None,
        RDKafkaErrorCode::SSL | RDKafkaErrorCode::BrokerTransportFailure => Some(
            "the TLS handshake failed: check that --kafka-ca holds the CA that signed the brokers' certificates and that they name the hosts in --brokers, and, if the brokers require a client certificate, --kafka-cert and --kafka-key",
        ),
        _ => None,
    }
}

/// A metadata and offsets client.
pub(crate) type Reader = BaseConsumer<AdminContext>;

/// The latest TLS or SASL failure `consumer` met. librdkafka hands errors to the context only when the
/// client is polled, so this polls it once (a client without an assignment receives no records).
pub(crate) fn security_failure(consumer: &Reader) -> Option<String> {
    let _ = consumer.poll(Duration::from_millis(100));
    consumer.context().security_failure()
}

/// A consumer for metadata and reads by assignment (no group, nothing committed).
pub(crate) fn reader(config: &KafkaConfig) -> Result<Reader, AdminError> {
    config
        .client_config(&[
            ("group.id", "tributary-sink"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            // Reads here go to a known end: do not let the broker hold a fetch waiting for more.
            ("fetch.wait.max.ms", "10"),
        ])
        .create_with_context(AdminContext::default())
        .map_err(|e| request(config, "creating a client", e))
}

/// The partition count of `topic`, or `None` if it does not exist. Asks in short attempts, so a TLS or SASL
/// failure ends the wait at once, with its reason.
pub(crate) fn partition_count(config: &KafkaConfig, consumer: &Reader, topic: &str) -> Result<Option<i32>, AdminError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    consumer.context().clear();
    let metadata = loop {
        let attempt = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        match consumer.fetch_metadata(Some(topic), attempt) {
            Ok(metadata) => break metadata,
            Err(e) => {
                if let Some(reason) = security_failure(consumer) {
                    return Err(AdminError::Security { brokers: config.brokers().to_owned(), reason });
                }
                if Instant::now() >= deadline {
                    return Err(request(config, format!("metadata of {topic}"), e));
                }
            }
        }
    };
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
pub(crate) fn partition_ends(config: &KafkaConfig, consumer: &Reader, topic: &str, partitions: i32) -> Result<Vec<i64>, AdminError> {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| request(config, format!("end of {topic}/{p}"), e))
        })
        .collect()
}
