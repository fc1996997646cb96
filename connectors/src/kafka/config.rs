//! Typed Kafka client configuration with a pass-through map for librdkafka settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
    /// A secret was given on the command line, where every user of the host can read it (`ps`).
    #[error("--kafka-option {key}=…: a secret does not go on the command line; {instead}")]
    SecretOnCommandLine {
        /// The refused key.
        key: String,
        /// Where to give it instead.
        instead: &'static str,
    },
    /// The SASL options are incomplete.
    #[error("--kafka-sasl {mechanism} needs {missing}")]
    SaslIncomplete {
        /// The mechanism asked for.
        mechanism: SaslMechanism,
        /// What is missing, with the flag or variable that gives it.
        missing: &'static str,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs both --kafka-cert and --kafka-key")]
    ClientCertificateIncomplete,
    /// A file named for TLS or SASL cannot be read.
    #[error("cannot read {what} from {path}: {reason}")]
    Unreadable {
        /// What the file holds (a password, a CA certificate, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

/// A secret (a password): its `Debug` and `Display` never show it.
///
/// ```
/// use tributary_connectors::kafka::Secret;
/// let password = Secret::new("hunter2");
/// assert_eq!(format!("{password:?} {password}"), "<redacted> <redacted>");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret held in memory.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The contents of `path`, without a final newline.
    pub fn from_file(path: &Path, what: &'static str) -> Result<Secret, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable { what, path: path.to_owned(), reason: e.to_string() })?;
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        Ok(Secret(text.to_owned()))
    }

    /// The secret itself, for the client that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// TLS to the brokers: the brokers' certificates are verified (against `ca`, or the system's trust store), and
/// their names checked against the address connected to unless `verify_hostname` is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// PEM file of the CA certificate(s) that signed the brokers' certificates; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// PEM files of a client certificate and its private key, for brokers that require one (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The password of the client key, if it is encrypted.
    pub key_password: Option<Secret>,
    /// Check that a broker's certificate names the host connected to (default on).
    pub verify_hostname: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls { ca: None, client: None, key_password: None, verify_hostname: true }
    }
}

/// A SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// The password in the clear (over TLS only, in practice).
    #[value(name = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256: the password never crosses the network.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name for it (`sasl.mechanisms`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SASL authentication to the brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// librdkafka keys for secrets, refused in `--kafka-option` (the command line), with where to give them.
const SECRET_OPTIONS: &[(&str, &str)] = &[
    ("sasl.password", "use --kafka-password-file or TRIBUTARY_KAFKA_PASSWORD_FILE"),
    ("ssl.key.password", "use --kafka-key-password-file"),
    ("ssl.key.pem", "put the key in a file and use --kafka-key"),
    ("sasl.jaas.config", "use --kafka-sasl with --kafka-user and --kafka-password-file"),
    ("sasl.oauthbearer.client.secret", "use KafkaConfig::set from the program, reading the secret from a file"),
    ("ssl.keystore.password", "use KafkaConfig::set from the program, reading the password from a file"),
];

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
    /// Connect to the brokers over TLS, verifying their certificates against the system's trust store (or
    /// `--kafka-ca`).
    #[arg(long = "kafka-tls")]
    pub kafka_tls: bool,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates (implies `--kafka-tls`).
    #[arg(long = "kafka-ca", value_name = "FILE", env = "TRIBUTARY_KAFKA_CA")]
    pub kafka_ca: Option<PathBuf>,
    /// PEM file of a client certificate, for brokers that require one (with `--kafka-key`; implies
    /// `--kafka-tls`).
    #[arg(long = "kafka-cert", value_name = "FILE", env = "TRIBUTARY_KAFKA_CERT")]
    pub kafka_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long = "kafka-key", value_name = "FILE", env = "TRIBUTARY_KAFKA_KEY")]
    pub kafka_key: Option<PathBuf>,
    /// A file holding the password of an encrypted `--kafka-key`.
    #[arg(long = "kafka-key-password-file", value_name = "FILE", env = "TRIBUTARY_KAFKA_KEY_PASSWORD_FILE")]
    pub kafka_key_password_file: Option<PathBuf>,
    /// Do not check that a broker's certificate names the host connected to (certificates are still verified).
    #[arg(long = "kafka-no-hostname-check")]
    pub kafka_no_hostname_check: bool,
    /// Authenticate with SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with `--kafka-user` and a password).
    #[arg(long = "kafka-sasl", value_name = "MECHANISM", env = "TRIBUTARY_KAFKA_SASL")]
    pub kafka_sasl: Option<SaslMechanism>,
    /// The SASL user name.
    #[arg(long = "kafka-user", value_name = "NAME", env = "TRIBUTARY_KAFKA_USER")]
    pub kafka_user: Option<String>,
    /// A file holding the SASL password (or set `TRIBUTARY_KAFKA_PASSWORD`; never on the command line).
    #[arg(long = "kafka-password-file", value_name = "FILE", env = "TRIBUTARY_KAFKA_PASSWORD_FILE")]
    pub kafka_password_file: Option<PathBuf>,
}

impl KafkaArgs {
    /// The configuration the flags describe.
    ///
    /// Fails with [`ConfigError::NoBrokers`] without `--brokers`.
    pub fn config(&self) -> Result<KafkaConfig, ConfigError> {
        let mut config = KafkaConfig::new(self.brokers.clone().unwrap_or_default())?;
        for option in &self.kafka_options {
            let shown = || if secret(option) { "<redacted>".to_owned() } else { option.clone() };
            let (key, value) = option.split_once('=').ok_or_else(|| ConfigError::NotKeyValue { given: shown() })?;
            let key = key.trim();
            if let Some((_, instead)) = SECRET_OPTIONS.iter().find(|(secret, _)| secret.eq_ignore_ascii_case(key)) {
                return Err(ConfigError::SecretOnCommandLine { key: key.to_owned(), instead });
            }
            config = config.set(key, value.trim())?;
        }
        let client = match (&self.kafka_cert, &self.kafka_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(ConfigError::ClientCertificateIncomplete),
        };
        if self.kafka_tls || self.kafka_ca.is_some() || client.is_some() {
            let key_password =
                self.kafka_key_password_file.as_deref().map(|path| Secret::from_file(path, "the client key's password")).transpose()?;
            let files = self
                .kafka_ca
                .iter()
                .map(|p| ("the CA certificate", p))
                .chain(client.iter().flat_map(|(c, k)| [("the client certificate", c), ("the client key", k)]));
            for (what, path) in files {
                std::fs::File::open(path).map_err(|e| ConfigError::Unreadable { what, path: path.clone(), reason: e.to_string() })?;
            }
            config = config.tls(Tls { ca: self.kafka_ca.clone(), client, key_password, verify_hostname: !self.kafka_no_hostname_check });
        }
        if let Some(mechanism) = self.kafka_sasl {
            let username =
                self.kafka_user.clone().ok_or(ConfigError::SaslIncomplete { mechanism, missing: "a user: --kafka-user NAME" })?;
            let password = match (&self.kafka_password_file, std::env::var("TRIBUTARY_KAFKA_PASSWORD")) {
                (Some(path), _) => Secret::from_file(path, "the SASL password")?,
                (None, Ok(password)) => Secret::new(password),
                (None, Err(_)) => {
                    return Err(ConfigError::SaslIncomplete {
                        mechanism,
                        missing: "a password: --kafka-password-file FILE, TRIBUTARY_KAFKA_PASSWORD_FILE or TRIBUTARY_KAFKA_PASSWORD",
                    });
                }
            };
            config = config.sasl(Sasl { mechanism, username, password });
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
    tls: Option<Tls>,
    sasl: Option<Sasl>,
}

impl KafkaConfig {
    /// Brokers as `host:port[,host:port...]`.
    pub fn new(brokers: impl Into<String>) -> Result<Self, ConfigError> {
        let brokers = brokers.into();
        if brokers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        Ok(KafkaConfig { brokers, settings: BTreeMap::new(), tls: None, sasl: None })
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

    /// Connects over TLS (`security.protocol` `SSL`, or `SASL_SSL` with [`KafkaConfig::sasl`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates with SASL (`security.protocol` `SASL_PLAINTEXT`, or `SASL_SSL` with [`KafkaConfig::tls`]).
    pub fn sasl(mut self, sasl: Sasl) -> Self {
        self.sasl = Some(sasl);
        self
    }

    /// The TLS options, if TLS is on.
    pub fn tls_options(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The SASL options, if SASL is on.
    pub fn sasl_options(&self) -> Option<&Sasl> {
        self.sasl.as_ref()
    }

    /// The settings TLS and SASL stand for, applied over the pass-through ones.
    fn security_settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => return out,
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        out.push(("security.protocol", protocol.to_owned()));
        if let Some(tls) = &self.tls {
            out.push(("enable.ssl.certificate.verification", "true".to_owned()));
            out.push(("ssl.endpoint.identification.algorithm", if tls.verify_hostname { "https" } else { "none" }.to_owned()));
            if let Some(ca) = &tls.ca {
                out.push(("ssl.ca.location", ca.display().to_string()));
            }
            if let Some((cert, key)) = &tls.client {
                out.push(("ssl.certificate.location", cert.display().to_string()));
                out.push(("ssl.key.location", key.display().to_string()));
            }
            if let Some(password) = &tls.key_password {
                out.push(("ssl.key.password", password.expose().to_owned()));
            }
        }
        if let Some(sasl) = &self.sasl {
            out.push(("sasl.mechanisms", sasl.mechanism.name().to_owned()));
            out.push(("sasl.username", sasl.username.clone()));
            out.push(("sasl.password", sasl.password.expose().to_owned()));
        }
        out
    }

    /// The rdkafka configuration for a client, with the runtime's own settings applied last.
    pub(crate) fn client_config(&self, owned: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        for (key, value) in self.security_settings() {
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
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("settings", &settings)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .finish()
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
mod security_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<KafkaConfig, ConfigError> {
        Args::parse_from(["prog", "--brokers", "b:1"].iter().chain(args)).kafka.config()
    }

    fn settings(config: &KafkaConfig) -> BTreeMap<String, String> {
        let client = config.client_config(&[]);
        [
            "security.protocol",
            "sasl.mechanisms",
            "sasl.username",
            "sasl.password",
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "ssl.endpoint.identification.algorithm",
        ]
        .iter()
        .filter_map(|k| client.get(k).map(|v| (k.to_string(), v.to_owned())))
        .collect()
    }

    #[test]
    fn tls_and_sasl_flags_become_librdkafka_settings_with_the_password_from_a_file() {
        let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, password) = (dir.join("ca.pem"), dir.join("password"));
        std::fs::write(&ca, "not parsed here").unwrap();
        std::fs::write(&password, "s3cret-value\n").unwrap();
        let (ca_s, password_s) = (ca.display().to_string(), password.display().to_string());
        let config =
            parse(&["--kafka-ca", &ca_s, "--kafka-sasl", "SCRAM-SHA-512", "--kafka-user", "alice", "--kafka-password-file", &password_s])
                .unwrap();
        let s = settings(&config);
        assert_eq!(s["security.protocol"], "SASL_SSL");
        assert_eq!(s["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(
            (s["sasl.username"].as_str(), s["sasl.password"].as_str()),
            ("alice", "s3cret-value"),
            "the final newline is not the password's"
        );
        assert_eq!(s["ssl.ca.location"], ca_s);
        assert_eq!(s["ssl.endpoint.identification.algorithm"], "https");
        assert!(!format!("{config:?}").contains("s3cret-value"), "Debug shows the password: {config:?}");
        // TLS alone, SASL alone, neither.
        assert_eq!(
            settings(&parse(&["--kafka-tls", "--kafka-no-hostname-check"]).unwrap())["ssl.endpoint.identification.algorithm"],
            "none"
        );
        assert_eq!(settings(&parse(&["--kafka-tls"]).unwrap())["security.protocol"], "SSL");
        let plain = parse(&["--kafka-sasl", "PLAIN", "--kafka-user", "bob", "--kafka-password-file", &password_s]).unwrap();
        assert_eq!(settings(&plain)["security.protocol"], "SASL_PLAINTEXT");
        assert!(settings(&parse(&[]).unwrap()).is_empty(), "no security settings without the flags");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn incomplete_or_unsafe_security_options_are_refused_with_what_to_do() {
        let err = parse(&["--kafka-sasl", "SCRAM-SHA-256"]).unwrap_err().to_string();
        assert!(err.contains("--kafka-user"), "{err}");
        let err = parse(&["--kafka-sasl", "SCRAM-SHA-256", "--kafka-user", "alice"]).unwrap_err().to_string();
        assert!(err.contains("--kafka-password-file"), "{err}");
        let err = parse(&["--kafka-option", "sasl.password=hunter2"]).unwrap_err().to_string();
        assert!(err.contains("does not go on the command line") && !err.contains("hunter2"), "{err}");
        let err = parse(&["--kafka-option", "sasl.password:hunter2"]).unwrap_err().to_string();
        assert!(err.contains("expected KEY=VALUE") && !err.contains("hunter2"), "{err}");
        let err = parse(&["--kafka-cert", "/c.pem"]).unwrap_err();
        assert_eq!(err, ConfigError::ClientCertificateIncomplete);
        let err = parse(&["--kafka-ca", "/nonexistent/ca.pem"]).unwrap_err().to_string();
        assert!(err.contains("cannot read the CA certificate from /nonexistent/ca.pem"), "{err}");
        let err =
            parse(&["--kafka-sasl", "PLAIN", "--kafka-user", "a", "--kafka-password-file", "/nonexistent/p"]).unwrap_err().to_string();
        assert!(err.contains("cannot read the SASL password"), "{err}");
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
