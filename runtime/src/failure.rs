//! Turning timely's panics on a broken peer connection into one orderly error.
//!
//! When a peer process dies, timely's receive (or send) thread for that peer panics with
//! "timely communication error: ...", and every worker then panics with "MergeQueue poisoned". The panic hook
//! installed here recognises the first by its thread name (`timely:recv-N` / `timely:send-N`, N the peer),
//! reports it to the running cluster's supervisor, and keeps both kinds of panic out of stderr; the supervisor
//! logs one line and returns [`Error::PeerLost`](crate::Error::PeerLost). Other panics go to the previous hook
//! unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

/// How the hook reports a lost peer: `(peer, cause)`. One cluster runs per process at a time.
type Report = Box<dyn Fn(usize, String) + Send>;
static REPORT_TO: Mutex<Option<Report>> = Mutex::new(None);
static PEER_LOST: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the hook (once per process) and directs its reports to `report`.
///
/// `report` runs on the failing network thread before it unwinds, so anything it sends is ordered before the
/// workers' "MergeQueue poisoned" panics that the unwinding causes.
pub(crate) fn watch_peers(report: Report) {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = payload_message(info.payload());
            let thread = std::thread::current();
            let peer = thread.name().and_then(comm_thread_peer);
            if let (Some(peer), true) = (peer, message.starts_with("timely communication error")) {
                PEER_LOST.store(true, Ordering::SeqCst);
                if let Some(report) = REPORT_TO.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    report(peer, message);
                }
                return;
            }
            if PEER_LOST.load(Ordering::SeqCst) && message.contains("MergeQueue poisoned") {
                return;
            }
            previous(info);
        }));
    });
    *REPORT_TO.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
}

/// Stops reporting to the current cluster's supervisor.
pub(crate) fn unwatch_peers() {
    *REPORT_TO.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The peer index of a timely communication thread (`timely:recv-3` -> 3).
fn comm_thread_peer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("timely:recv-").or_else(|| name.strip_prefix("timely:send-"))?;
    rest.parse().ok()
}

/// The text of a panic payload.
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names() {
        assert_eq!(comm_thread_peer("timely:recv-3"), Some(3));
        assert_eq!(comm_thread_peer("timely:send-0"), Some(0));
        assert_eq!(comm_thread_peer("timely:work-0"), None);
    }
}
