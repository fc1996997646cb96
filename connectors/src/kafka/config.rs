//! Typed Kafka client configuration with a pass-through map for librdkafka settings.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;

/// librdkafka keys the source manages itself, with the reason; setting them is refused.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "give the brokers to KafkaConfig::new"),
    ("group.id", "partition assignment is Tributary's own (assign, not group subscription)"),
    ("enable.auto.commit", "positions are stored by Tributary, never auto-committed"),
    ("enable.auto.offset.store", "positions are stored by Tributary"),
    ("auto.offset.reset", "the start position is set with StartFrom"),
    ("enable.partition.eof", "bounded reads use the end offsets seen at start"),
];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key is one Tributary sets itself.
    #[error("the librdkafka setting `{key}` cannot be set: {why}")]
    Owned {
        /// The refused key.
        key: String,
        /// Why Tributary owns it.
        why: &'static str,
    },
    /// No brokers were given.
    #[error("no brokers given; pass host:port[,host:port...] (e.g. --brokers 127.0.0.1:9092)")]
    NoBrokers,
    /// A `--kafka-option` was not `KEY=VALUE`.
    #[error("--kafka-option {given:?}: expected KEY=VALUE, e.g. message.timeout.ms=60000")]
    NotKeyValue {
        /// What was given.
        given: String,
    },
}

/// The Kafka flags a program takes, to `#[command(flatten)]` into its clap arguments: `--brokers` and any
/// number of `--kafka-option KEY=VALUE` librdkafka settings for every client.
///
/// ```
/// use clap::Parser;
/// use tributary_connectors::kafka::KafkaArgs;
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     kafka: KafkaArgs,
/// }
/// let args = Args::parse_from(["prog", "--brokers", "127.0.0.1:9092", "--kafka-option", "linger.ms=5"]);
/// let config = args.kafka.config()?;
/// assert_eq!(config.setting("linger.ms"), Some("5"));
/// let bad = Args::parse_from(["prog", "--brokers", "127.0.0.1:9092", "--kafka-option", "linger.ms"]);
/// assert!(bad.kafka.config().is_err());
/// // Without --brokers (a run on files), asking for the config says what is missing.
/// let files = Args::parse_from(["prog"]);
/// assert!(files.kafka.config().unwrap_err().to_string().contains("--brokers"));
/// # Ok::<(), tributary_connectors::kafka::ConfigError>(())
/// ```
#[derive(clap::Args, Clone, Debug)]
// Without this a program with no doc comment of its own would show these docs as its `--help` text.
#[command(about = None, long_about = None)]
pub struct KafkaArgs {
    /// Kafka brokers (host:port[,host:port]). Optional, so a program can also run on files: [`KafkaArgs::config`]
    /// says when it needs them.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// A librdkafka setting for every client, as `KEY=VALUE` (repeat for several), e.g.
    /// `message.timeout.ms=60000`.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

impl KafkaArgs {
    /// The configuration the flags describe.
    ///
    /// Fails with [`ConfigError::NoBrokers`] without `--brokers`.
    pub fn config(&self) -> Result<KafkaConfig, ConfigError> {
        let mut config = KafkaConfig::new(self.brokers.clone().unwrap_or_default())?;
        for option in &self.kafka_options {
            let (key, value) = option.split_once('=').ok_or_else(|| ConfigError::NotKeyValue { given: option.clone() })?;
            config = config.set(key.trim(), value.trim())?;
        }
        Ok(config)
    }
}

/// How to reach the brokers, plus librdkafka settings passed through unchanged.
///
/// Secrets never appear in `Debug` output:
///
/// ```
/// use tributary_connectors::kafka::KafkaConfig;
/// let config = KafkaConfig::new("127.0.0.1:9092")?
///     .set("security.protocol", "SASL_SSL")?
///     .set("sasl.password", "hunter2")?;
/// assert!(!format!("{config:?}").contains("hunter2"));
/// assert!(KafkaConfig::new("127.0.0.1:9092")?.set("enable.auto.commit", "true").is_err());
/// # Ok::<(), tributary_connectors::kafka::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    brokers: String,
    settings: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Brokers as `host:port[,host:port...]`.
    pub fn new(brokers: impl Into<String>) -> Result<Self, ConfigError> {
        let brokers = brokers.into();
        if brokers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        Ok(KafkaConfig { brokers, settings: BTreeMap::new() })
    }

    /// Passes a librdkafka setting through (e.g. `security.protocol`, `fetch.max.bytes`).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Self, ConfigError> {
        let key = key.into();
        if let Some((_, why)) = OWNED.iter().find(|(owned, _)| *owned == key) {
            return Err(ConfigError::Owned { key, why });
        }
        self.settings.insert(key, value.into());
        Ok(self)
    }

    /// A librdkafka setting passed through, if set.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// The brokers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The rdkafka configuration for a client, with the runtime's own settings applied last.
    pub(crate) fn client_config(&self, owned: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        for (key, value) in owned {
            config.set(*key, *value);
        }
        config
    }
}

/// Routes a librdkafka log line into `tracing` (target `librdkafka`).
pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        // The sink sets `enable.gapless.guarantee` on purpose; librdkafka warns that it is experimental on every
        // producer it creates.
        RDKafkaLogLevel::Warning if facility == "CONFWARN" && message.contains("enable.gapless.guarantee") => {
            tracing::debug!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Whether a setting's value must not be shown.
fn secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.contains("sasl.jaas") || key.ends_with(".key.pem") || key.contains("token")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: BTreeMap<&str, &str> =
            self.settings.iter().map(|(k, v)| (k.as_str(), if secret(k) { "<redacted>" } else { v.as_str() })).collect();
        f.debug_struct("KafkaConfig").field("brokers", &self.brokers).field("settings", &settings).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_keys_are_refused_with_a_reason() {
        let err = KafkaConfig::new("b:1").unwrap().set("group.id", "g").unwrap_err();
        assert!(err.to_string().contains("`group.id` cannot be set: partition assignment is Tributary's own"));
        // Every reserved key, written as librdkafka takes it (its keys are case-sensitive, dots only).
        for key in
            ["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset", "enable.partition.eof"]
        {
            let err = KafkaConfig::new("b:1").unwrap().set(key, "x").unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}` cannot be set: ")), "{key}: {err}");
        }
        assert!(KafkaConfig::new("b:1").unwrap().set("fetch.min.bytes", "1").is_ok(), "other keys pass through");
        assert_eq!(KafkaConfig::new(" ").unwrap_err(), ConfigError::NoBrokers);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = KafkaConfig::new("b:1").unwrap().set("ssl.key.password", "p").unwrap().set("sasl.oauthbearer.client.secret", "s").unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("<redacted>") && !shown.contains("\"p\"") && !shown.contains("\"s\""), "{shown}");
        // Every pattern: passwords, secrets, tokens, JAAS configurations, private keys in PEM; not other keys.
        let secrets = [
            ("sasl.password", "hunter2-value"),
            ("sasl.oauthbearer.client.secret", "secret-value"),
            ("sasl.oauthbearer.token.endpoint.url", "token-value"),
            ("sasl.jaas.config", "jaas-value"),
            ("ssl.key.pem", "pem-value"),
            ("SSL.KEY.PASSWORD", "upper-value"),
        ];
        let mut config = KafkaConfig::new("b:1").unwrap().set("client.id", "visible-value").unwrap();
        for (key, value) in secrets {
            config = config.set(key, value).unwrap();
        }
        let shown = format!("{config:?}");
        for (key, value) in secrets {
            assert!(!shown.contains(value), "{key} is shown: {shown}");
        }
        assert!(shown.contains("visible-value"), "other settings are shown: {shown}");
    }
}

#[cfg(test)]
mod help_tests {
    use clap::{CommandFactory, Parser};

    // A program without a doc comment of its own.
    #[derive(Parser)]
    struct Bare {
        #[command(flatten)]
        kafka: super::KafkaArgs,
        #[command(flatten)]
        source: crate::SourceArgs,
        #[command(flatten)]
        job: crate::JobArgs,
        #[command(flatten)]
        cluster: tributary_runtime::ClusterArgs,
    }

    #[test]
    fn flattened_flags_do_not_lend_their_docs_to_the_program() {
        let command = Bare::command();
        assert_eq!(command.get_about().map(ToString::to_string), None);
        assert_eq!(command.get_long_about().map(ToString::to_string), None);
    }
}
