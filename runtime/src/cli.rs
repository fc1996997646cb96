//! The cluster flags every Tributary program accepts next to its own: `--workers/-w`, `--processes/-n`,
//! `--process/-p`, `--hostfile`, plus the startup, shutdown and peer-heartbeat deadlines.
//!
//! They keep timely's meanings: `-w` worker threads per process, `-n` processes, `-p` this process's index.
//! [`ClusterArgs::layout`] validates them, reading the host file, before anything connects.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hostfile::HostFile;

/// Cluster flags, to `#[command(flatten)]` into a program's own clap arguments.
///
/// ```
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     cluster: tributary_runtime::ClusterArgs,
///     /// The program's own flag.
///     #[arg(long)]
///     input: Option<String>,
/// }
/// let args = Args::parse_from(["prog", "-w", "2", "--input", "x.txt"]);
/// let layout = args.cluster.layout()?;
/// assert_eq!(layout.workers_per_process, 2);
/// assert_eq!(layout.total_workers(), 2);
/// # Ok::<(), tributary_runtime::Error>(())
/// ```
#[derive(clap::Args, Clone, Debug)]
// Without this a program with no doc comment of its own would show these docs as its `--help` text.
#[command(about = None, long_about = None)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(short = 'w', long = "workers", value_name = "N", default_value_t = 1)]
    pub workers: usize,
    /// Processes in the cluster (each with the same --workers and --hostfile).
    #[arg(short = 'n', long = "processes", value_name = "N", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0-based: the host file's line for it.
    #[arg(short = 'p', long = "process", value_name = "I", default_value_t = 0)]
    pub process: usize,
    /// Host file: one `host:port` per process, in process order (`#` comments allowed). Needed when --processes > 1.
    #[arg(long = "hostfile", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// How long to wait for every peer process to connect before giving up.
    #[arg(long = "connect-timeout", value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// After SIGINT/SIGTERM, how long to let the dataflow drain before exiting anyway.
    #[arg(long = "shutdown-timeout", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// A peer process that sends no heartbeat for this long (stopped, hung, cut off) stops the cluster.
    #[arg(long = "peer-timeout", value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub peer_timeout: Duration,
    /// Serve this process's metrics at http://HOST:PORT/metrics (Prometheus text format; docs/metrics.md).
    #[arg(long = "metrics-addr", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// No progress line on stderr (it is drawn only when stderr is a terminal anyway).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// A file holding the cluster's shared secret (at least 16 bytes): peers prove they hold it when they connect,
    /// and a process without it is refused. Give every process the same file (docs/security.md)
    #[arg(long = "cluster-secret-file", value_name = "FILE", env = "TRIBUTARY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Encrypt the data connections between processes (ChaCha20-Poly1305 with keys derived from the cluster
    /// secret for each connection; needs --cluster-secret-file). Every process must be given the same flag.
    #[arg(long = "cluster-encrypt")]
    pub cluster_encrypt: bool,
}

/// The longest timeout a flag takes (a year): longer ones are mistakes, and would overflow the clock.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl Default for ClusterArgs {
    fn default() -> Self {
        ClusterArgs {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            connect_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(20),
            metrics_addr: None,
            quiet: false,
            cluster_secret_file: None,
            cluster_encrypt: false,
        }
    }
}

impl ClusterArgs {
    /// Flags for `workers` threads in one process (handy in tests and examples).
    pub fn single_process(workers: usize) -> Self {
        ClusterArgs { workers, ..ClusterArgs::default() }
    }

    /// Validates the flags and reads the host file into a [`Layout`].
    pub fn layout(&self) -> Result<Layout> {
        if self.workers == 0 {
            return Err(Error::Options("--workers must be at least 1".into()));
        }
        if self.processes == 0 {
            return Err(Error::Options("--processes must be at least 1".into()));
        }
        if self.peer_timeout < Duration::from_millis(100) {
            return Err(Error::Options("--peer-timeout must be at least 100ms".into()));
        }
        for (flag, timeout) in [
            ("--connect-timeout", self.connect_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--peer-timeout", self.peer_timeout),
        ] {
            if timeout > MAX_TIMEOUT {
                return Err(Error::Options(format!("{flag} must be at most {}", humantime::format_duration(MAX_TIMEOUT))));
            }
        }
        let hosts = match &self.hostfile {
            Some(path) => {
                let hosts = HostFile::read(path)?;
                hosts.check_layout(self.processes, self.process)?;
                Some(hosts)
            }
            None if self.processes > 1 => {
                return Err(Error::Options(format!(
                    "--processes is {} but no --hostfile was given; write one `host:port` per process to a file, \
                     or start the program with `tributary launch`",
                    self.processes
                )));
            }
            None => {
                if self.process != 0 {
                    return Err(Error::Options(format!("--process is {} but --processes is 1", self.process)));
                }
                None
            }
        };
        let secret = match &self.cluster_secret_file {
            Some(path) => Some(ClusterSecret::read(path)?),
            None => None,
        };
        if self.cluster_encrypt && secret.is_none() {
            return Err(Error::Options(
                "--cluster-encrypt needs --cluster-secret-file (or TRIBUTARY_CLUSTER_SECRET_FILE): the keys come from the secret".into(),
            ));
        }
        Ok(Layout {
            encrypt: self.cluster_encrypt,
            secret,
            workers_per_process: self.workers,
            processes: self.processes,
            process: self.process,
            hosts,
            connect_timeout: self.connect_timeout,
            shutdown_timeout: self.shutdown_timeout,
            peer_timeout: self.peer_timeout,
        })
    }
}

/// The cluster's shared secret, read from `--cluster-secret-file`. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes, redacted>)", self.0.len())
    }
}

impl ClusterSecret {
    /// The shortest secret accepted.
    pub const MIN_LEN: usize = 16;

    /// Reads the secret from `path` (trailing whitespace, such as a final newline, is not part of it).
    pub fn read(path: &std::path::Path) -> Result<ClusterSecret> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Options(format!("--cluster-secret-file {}: cannot read it ({e}); give a readable file", path.display())))?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        ClusterSecret::new(bytes[..end].to_vec())
            .map_err(|message| Error::Options(format!("--cluster-secret-file {}: {message}", path.display())))
    }

    /// A secret from its bytes.
    pub fn new(bytes: Vec<u8>) -> std::result::Result<ClusterSecret, String> {
        if bytes.len() < Self::MIN_LEN {
            return Err(format!(
                "the secret has {} bytes, fewer than {}; make one with `head -c 32 /dev/urandom | base64 > FILE`",
                bytes.len(),
                Self::MIN_LEN
            ));
        }
        Ok(ClusterSecret(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A validated cluster layout: who this process is and where its peers are.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The shared secret peers prove they hold, if any.
    pub secret: Option<ClusterSecret>,
    /// Whether the data connections are encrypted (`--cluster-encrypt`).
    pub encrypt: bool,
    /// Worker threads per process.
    pub workers_per_process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// The host file; `None` only for a single process without one.
    pub hosts: Option<HostFile>,
    /// Startup deadline for peer connections.
    pub connect_timeout: Duration,
    /// How long a signalled shutdown may take.
    pub shutdown_timeout: Duration,
    /// How long a peer may send no heartbeat before it counts as lost.
    pub peer_timeout: Duration,
}

impl Layout {
    /// Workers in the whole cluster.
    pub fn total_workers(&self) -> usize {
        self.workers_per_process * self.processes
    }

    /// The global index of this process's first worker.
    pub fn first_worker(&self) -> usize {
        self.workers_per_process * self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_secrets_are_long_enough_trimmed_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("tributary-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789abcdef-and-more\n").unwrap();
        let secret = ClusterSecret::read(&file).unwrap();
        assert_eq!(secret.bytes(), b"0123456789abcdef-and-more", "the final newline is not part of it");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("0123") && shown.contains("25 bytes"), "{shown}");
        std::fs::write(&file, "short\n").unwrap();
        let error = ClusterSecret::read(&file).unwrap_err().to_string();
        assert!(error.contains("5 bytes, fewer than 16") && !error.contains("short"), "{error}");
        let missing = ClusterSecret::read(&dir.join("none")).unwrap_err().to_string();
        assert!(missing.contains("cannot read it"), "{missing}");
        let args = ClusterArgs { cluster_secret_file: Some(dir.join("none")), ..ClusterArgs::default() };
        assert!(args.layout().is_err(), "a secret file that cannot be read stops the program before it connects");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
