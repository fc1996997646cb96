//! Orderly shutdown on SIGINT/SIGTERM.
//!
//! The first signal sets the cluster's [`Shutdown`] flag and wakes every worker, so sources can stop reading and
//! let the dataflow drain; the runtime then waits up to `--shutdown-timeout`. The timeout ends the wait with
//! [`Error::ShutdownTimeout`](crate::Error::ShutdownTimeout), a second signal with
//! [`Error::SecondSignal`](crate::Error::SecondSignal).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A flag that tells a worker its process has been asked to stop.
///
/// Sources check it and close when it is set; a worker loop that steps the dataflow itself checks it too.
///
/// ```
/// let shutdown = tributary_runtime::Shutdown::default();
/// assert!(!shutdown.requested());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// The key under which the runtime stores each worker's `Shutdown` in timely's worker configuration, so
    /// operators find it with [`Shutdown::of`] without being handed it.
    pub const CONFIG_KEY: &'static str = "tributary.shutdown";

    /// The shutdown flag of the process a worker runs in, if the worker was started by [`execute`](crate::execute).
    pub fn of(worker: &timely::worker::Worker) -> Option<Shutdown> {
        worker.config().get::<Shutdown>(Self::CONFIG_KEY).cloned()
    }

    /// Whether SIGINT or SIGTERM has arrived.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Asks the sources to stop, as SIGINT/SIGTERM do (for programs that stop themselves, and tests).
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// The name of a signal number we handle.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
