//! The connectors' one error type.
//!
//! Opening a source, a sink or a commit log returns the error of that part ([`SourceError`], [`SinkError`],
//! [`CommitLogError`], ...); each converts into [`Error`], so a program handles them with one `?`. A fault that
//! stops a running job (the broker refuses a write for good, a commit cannot be written, a position the job reads
//! from is gone) reaches the program as [`tributary_runtime::Error::Fault`] whose source is an [`Error`]:
//!
//! ```no_run
//! use tributary_connectors::Error as ConnectorError;
//! use tributary_connectors::kafka::SinkError;
//!
//! fn explain(error: &tributary_runtime::Error) -> &'static str {
//!     let tributary_runtime::Error::Fault { source, .. } = error else { return "not a connector fault" };
//!     match source.downcast_ref::<ConnectorError>() {
//!         Some(ConnectorError::Sink(SinkError::NotDelivered { .. })) => "the brokers were away too long: restart",
//!         Some(_) => "another connector fault",
//!         None => "a fault of the program's own",
//!     }
//! }
//! ```

use crate::file::FileSourceError;
use crate::job::JobError;
use crate::kafka::{AdminError, CommitLogError, ConfigError, SinkError, SourceError};

/// What can go wrong in a connector, when it is opened or while the job runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A topic could not be created, checked or read.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A Kafka source could not open or read its partitions.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A Kafka sink could not open its topic or write to it.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The job's commit log could not be opened.
    #[error(transparent)]
    CommitLog(#[from] CommitLogError),
    /// The job's commits could not be written, or its processes disagree.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A file source could not open its files.
    #[error(transparent)]
    File(#[from] FileSourceError),
}

/// A `Result` whose error is the connectors' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stops the running job with `error` (see [`tributary_runtime::fault`]).
pub(crate) fn stop(error: impl Into<Error>) -> ! {
    tributary_runtime::fault::stop(error.into())
}
