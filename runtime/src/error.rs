//! The runtime's error type.

use std::path::PathBuf;
use std::time::Duration;

/// A `Result` whose error is the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while laying out, starting, running or stopping a Tributary cluster.
///
/// Every message says what was wrong and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host file could not be read at all.
    #[error("cannot read host file {path}: {source}")]
    HostFileRead {
        /// The host file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A line of the host file is not a usable `host:port` address, or repeats one.
    #[error("{path}:{line}: {message}")]
    HostFileLine {
        /// The host file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// The host file and the cluster flags disagree (line count, process index).
    #[error("{path}: {message}")]
    HostFileLayout {
        /// The host file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// The cluster flags are inconsistent on their own.
    #[error("invalid cluster options: {0}")]
    Options(String),
    /// This process could not listen on its own address from the host file.
    #[error(
        "process {process} cannot listen on {address}: {source}; is another program using that port, or is the address not local to this host?"
    )]
    Listen {
        /// This process's index.
        process: usize,
        /// The address it tried to bind.
        address: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Not every peer connected before the startup deadline.
    #[error("process {process}: peers {missing} did not connect within {}; start every process of the cluster with the same host file, or raise --connect-timeout", humantime::format_duration(*.timeout))]
    PeersMissing {
        /// This process's index.
        process: usize,
        /// The peers that were not connected, as `process N (addr)` items.
        missing: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// A peer answered but runs with a different layout, or is not a Tributary process.
    #[error("process {process}: handshake with {peer} failed: {message}")]
    Handshake {
        /// This process's index.
        process: usize,
        /// Which peer, as `process N (addr)`.
        peer: String,
        /// What did not match.
        message: String,
    },
    /// A connection to a peer process broke while the dataflow ran.
    #[error(
        "process {process} lost its connection to process {peer}: {cause}; the peer has most likely exited or crashed, so this process stops too (restart the whole cluster)"
    )]
    PeerLost {
        /// This process's index.
        process: usize,
        /// The peer whose connection broke.
        peer: usize,
        /// timely's description of the failure.
        cause: String,
    },
    /// A worker stopped the job with a typed error ([`fault::stop`](crate::fault::stop)): a connector met a fault it
    /// cannot go on past. `source` is the error; downcast it (e.g. to `tributary_connectors::Error`) to tell
    /// faults apart. Its message says what to do.
    #[error("worker {worker} stopped the job")]
    Fault {
        /// The global worker index.
        worker: usize,
        /// What stopped it.
        #[source]
        source: crate::fault::BoxError,
    },
    /// A worker thread panicked.
    #[error("worker {worker} panicked: {message}")]
    WorkerPanicked {
        /// The global worker index.
        worker: usize,
        /// The panic message.
        message: String,
    },
    /// The process was asked to stop and the dataflow did not finish in time.
    #[error("stopping after {signal}: the dataflow did not finish within {} (--shutdown-timeout); exiting without waiting further (a restart resumes from the last commit)", humantime::format_duration(*.grace))]
    ShutdownTimeout {
        /// The signal's name, e.g. `SIGTERM`.
        signal: &'static str,
        /// How long the runtime waited.
        grace: Duration,
    },
    /// A second SIGINT/SIGTERM came while the process was stopping after the first.
    #[error(
        "stopping after {first}: {second} came before the dataflow finished; exiting without waiting further (a restart resumes from the last commit)"
    )]
    SecondSignal {
        /// The first signal's name.
        first: &'static str,
        /// The second signal's name.
        second: &'static str,
    },
    /// SIGINT/SIGTERM arrived before the cluster had started.
    #[error("stopped by {signal} while connecting to the peer processes")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
    },
    /// An operating-system call the runtime needs failed (threads, signals).
    #[error("{what}: {source}")]
    Io {
        /// What the runtime was doing.
        what: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// timely refused to build the communication layer.
    #[error("cannot start timely communication: {0}")]
    Timely(String),
    /// Launching a program failed.
    #[error("launch: {0}")]
    Launch(String),
}
