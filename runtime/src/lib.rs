//! The Tributary runtime: cluster layout, command-line flags, startup, supervision, shutdown, logging, and the
//! local launcher.
//!
//! A Tributary program is an ordinary binary that runs as one process or as many. Each process accepts the
//! cluster flags of [`ClusterArgs`] next to its own, validates them into a [`Layout`] (reading the host file),
//! and calls [`execute`], which connects the processes over TCP with a startup deadline, runs timely workers,
//! and turns the failure of a peer into an orderly [`Error::PeerLost`] instead of a cascade of panics.
//! [`launch`](launch::launch) starts N such processes on one machine.
//!
//! This crate knows nothing of operators or connectors.
#![deny(missing_docs)]
// No panic on a path a broker, the network, a peer or a user's input can reach: every remaining site says why it
// cannot fail (`#[allow(.., reason = ..)]`), and clippy (`-D warnings` in CI) refuses new ones.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::todo, clippy::unimplemented)
)]

mod arrangements;
pub mod checkpoint;
mod cli;
mod connect;
mod encrypt;
mod error;
mod execute;
mod failure;
pub mod fault;
mod hostfile;
pub mod launch;
mod liveness;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod shutdown;

pub use cli::{ClusterArgs, ClusterSecret, Layout};
pub use error::{Error, Result};
pub use execute::{WorkerContext, execute};
pub use hostfile::{Host, HostFile};
pub use shutdown::Shutdown;
