//! Heartbeats between processes, so a peer that is stopped (SIGSTOP), hung, or cut off by the network stops the
//! cluster within a bounded time instead of hanging it.
//!
//! timely's connections have no keepalive or timeout: a process that stops reading leaves its peers waiting
//! forever, with nothing in the log. Each pair of processes therefore has a second connection
//! ([`crate::connect`]) on which both send a byte every `timeout / 10` (at most every second) from a thread of
//! their own, independent of how busy the workers are. A peer whose byte has not come for `timeout` is reported
//! lost, naming it, and the supervisor stops this process. A process whose workers have all finished says
//! goodbye first, so a peer that finishes earlier is not mistaken for a lost one.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BEAT: u8 = b'H';
const BYE: u8 = b'B';

/// How a lost peer is reported: `(peer, cause)`.
pub(crate) type Report = Arc<dyn Fn(usize, String) + Send + Sync>;

/// The heartbeat threads of one cluster; dropping it (or [`Liveness::finish`]) ends them.
pub(crate) struct Liveness {
    done: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    writers: Vec<std::thread::Thread>,
}

impl Liveness {
    /// Starts sending heartbeats on `streams` (one per peer; `None` for this process) and watching theirs.
    /// `describe(peer)` names a peer in messages.
    pub(crate) fn start(
        streams: Vec<Option<TcpStream>>,
        timeout: Duration,
        describe: &dyn Fn(usize) -> String,
        report: Report,
    ) -> Liveness {
        let done = Arc::new(AtomicBool::new(false));
        let quit = Arc::new(AtomicBool::new(false));
        let interval = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut writers = Vec::new();
        for (peer, stream) in streams.into_iter().enumerate() {
            let Some(stream) = stream else { continue };
            let name = describe(peer);
            let reader = match stream.try_clone().and_then(|r| r.set_read_timeout(Some(timeout)).map(|()| r)) {
                Ok(reader) => reader,
                Err(e) => {
                    report(peer, format!("cannot watch {name}: {e}"));
                    continue;
                }
            };
            let (done_w, quit_w, report_w, name_w) = (Arc::clone(&done), Arc::clone(&quit), Arc::clone(&report), name.clone());
            let writer = std::thread::Builder::new()
                .name(format!("tributary:beat-{peer}"))
                .spawn(move || send(stream, interval, (&done_w, &quit_w), peer, &name_w, &report_w));
            let (done_r, report_r) = (Arc::clone(&done), Arc::clone(&report));
            let watcher = std::thread::Builder::new()
                .name(format!("tributary:watch-{peer}"))
                .spawn(move || watch(reader, timeout, &done_r, peer, &name, &report_r));
            match (writer, watcher) {
                (Ok(writer), Ok(_)) => writers.push(writer.thread().clone()),
                (Err(e), _) | (_, Err(e)) => report(peer, format!("cannot start the heartbeat threads: {e}")),
            }
        }
        Liveness { done, quit, writers }
    }

    /// This process's workers are done: say goodbye to every peer and stop watching them.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.writers.iter().for_each(std::thread::Thread::unpark);
    }
}

impl Drop for Liveness {
    /// Stops the heartbeats without a goodbye (this process failed): peers notice it is gone.
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        self.writers.iter().for_each(std::thread::Thread::unpark);
    }
}

fn send(mut stream: TcpStream, interval: Duration, (done, quit): (&AtomicBool, &AtomicBool), peer: usize, name: &str, report: &Report) {
    loop {
        if quit.load(Ordering::SeqCst) {
            return;
        }
        if done.load(Ordering::SeqCst) {
            let _ = stream.write_all(&[BYE]);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return;
        }
        if let Err(e) = stream.write_all(&[BEAT]) {
            if !done.load(Ordering::SeqCst) && !quit.load(Ordering::SeqCst) {
                report(peer, format!("cannot send heartbeats to {name}: {e}"));
            }
            return;
        }
        // Pacing between heartbeats; `finish` unparks it to say goodbye at once.
        std::thread::park_timeout(interval);
    }
}

fn watch(mut stream: TcpStream, timeout: Duration, done: &AtomicBool, peer: usize, name: &str, report: &Report) {
    let mut byte = [0u8; 1];
    loop {
        let outcome = stream.read(&mut byte);
        if done.load(Ordering::SeqCst) {
            return;
        }
        match outcome {
            Ok(1) if byte[0] == BYE => return,
            Ok(1) => continue,
            Ok(_) => {
                report(peer, format!("{name} closed its connection without finishing: it exited or crashed"));
                return;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                report(
                    peer,
                    format!(
                        "{name} sent no heartbeat for {}: it is stopped (SIGSTOP), hung, or the network to it is cut",
                        humantime::format_duration(timeout)
                    ),
                );
                return;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                report(peer, format!("the connection to {name} failed: {e}"));
                return;
            }
        }
    }
}
