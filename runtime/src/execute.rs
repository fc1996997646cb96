//! Running a dataflow on the cluster a [`Layout`] describes: connect, start workers, supervise, stop.
//!
//! [`execute`] connects the peers (with a deadline), hands the sockets to timely, runs the user's closure on
//! every worker thread, and supervises: it returns the workers' results when they finish, an orderly
//! [`Error::PeerLost`] when a peer process dies, [`Error::WorkerPanicked`] when a worker panics, and handles
//! SIGINT/SIGTERM (see [`crate::shutdown`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, initialize_from};
use timely::worker::Worker;
use timely::{CommunicationConfig, WorkerConfig};

use crate::cli::{ClusterArgs, Layout};
use crate::connect::connect_peers;
use crate::error::{Error, Result};
use crate::failure::{payload_message, unwatch_peers, watch_peers};
use crate::liveness::Liveness;
use crate::shutdown::{Shutdown, signal_name};

/// How long to let local workers unwind after a peer is lost or a worker panicked, before returning anyway.
const UNWIND_GRACE: Duration = Duration::from_secs(2);

/// What a worker knows about its place in the cluster.
#[derive(Clone, Debug)]
pub struct WorkerContext {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This worker's global index (`process * workers_per_process + local index`), as `worker.index()`.
    pub index: usize,
    /// Workers in the whole cluster, as `worker.peers()`.
    pub peers: usize,
    /// Set when the process receives SIGINT or SIGTERM.
    pub shutdown: Shutdown,
}

enum Event<T> {
    Done(usize, std::result::Result<T, Failure>),
    PeerLost(usize, String),
    Signal(i32),
}

/// How a worker ended without a result.
enum Failure {
    /// It panicked, with this message.
    Panic(String),
    /// It stopped the job with a typed error ([`crate::fault::stop`]).
    Fault(crate::fault::BoxError),
}

impl Failure {
    fn from_payload(payload: Box<dyn std::any::Any + Send>) -> Self {
        match payload.downcast::<crate::fault::Fault>() {
            Ok(fault) => Failure::Fault(fault.0),
            Err(payload) => Failure::Panic(payload_message(payload.as_ref())),
        }
    }
}

/// Runs `func` on every worker of this process, as one process of the cluster that `args` describe.
///
/// Returns the results of this process's workers, in local index order. Sets up `tracing` logging from
/// `RUST_LOG` if the program has not installed a subscriber itself.
///
/// Each of the two workers below turns `0..4` into a stream and exchanges it by value, so worker 0
/// receives the even numbers from both workers and worker 1 the odd ones:
///
/// ```
/// use std::{cell::RefCell, rc::Rc};
/// use timely::dataflow::operators::{Exchange, Inspect, ToStream};
/// let results = tributary_runtime::execute(&tributary_runtime::ClusterArgs::single_process(2), |worker, ctx| {
///     let received = Rc::new(RefCell::new(Vec::new()));
///     let log = Rc::clone(&received);
///     worker.dataflow::<u64, _, _>(|scope| {
///         (0..4u64)
///             .to_stream(scope)
///             .container::<Vec<_>>()
///             .exchange(|x| *x)
///             .inspect(move |x| log.borrow_mut().push(*x));
///     });
///     while worker.step() {}
///     let mut received = received.take();
///     received.sort();
///     (ctx.index, received)
/// })?;
/// assert_eq!(results, vec![(0, vec![0, 0, 2, 2]), (1, vec![1, 1, 3, 3])]);
/// # Ok::<(), tributary_runtime::Error>(())
/// ```
pub fn execute<T, F>(args: &ClusterArgs, func: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(&mut Worker, &WorkerContext) -> T + Send + Sync + 'static,
{
    crate::logging::init();
    let layout = args.layout()?;
    let span = tracing::info_span!("process", process = layout.process);
    let _entered = span.enter();
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr)?;
        let mut registry = crate::metrics::registry().lock().unwrap_or_else(|e| e.into_inner());
        registry.register_collector(Box::new(crate::arrangements::Collector));
    }
    let _progress = crate::progress::start(args.quiet);
    run(&layout, args.metrics_addr.is_some(), func)
}

/// `arrangements`: log differential's arrangement sizes for the metrics endpoint.
fn run<T, F>(layout: &Layout, arrangements: bool, func: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(&mut Worker, &WorkerContext) -> T + Send + Sync + 'static,
{
    let (events, receiver) = mpsc::channel::<Event<T>>();

    // Signals first, so a SIGTERM while waiting for peers ends the wait.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|source| Error::Io { what: "cannot install SIGINT/SIGTERM handlers".into(), source })?;
    let signals_handle = signals.handle();
    let signal_events = events.clone();
    std::thread::Builder::new()
        .name("tributary:signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| Error::Io { what: "cannot start the signal thread".into(), source })?;
    let _close_signals = Guard(Some(move || signals_handle.close()));

    let mut liveness: Option<Liveness> = None;
    let (builders, comms): (Vec<AllocatorBuilder>, Option<Box<dyn std::any::Any + Send>>) = match &layout.hosts {
        Some(hosts) if layout.processes > 1 => {
            // Until the workers start, the only events are signals.
            let interrupted = || match receiver.try_recv() {
                Ok(Event::Signal(signal)) => Some(signal_name(signal)),
                _ => None,
            };
            let connected = connect_peers(layout, hosts, &interrupted)?;
            let sockets = connected.data;
            let peer_events = std::sync::Mutex::new(events.clone());
            watch_peers(Box::new(move |peer, cause| {
                let _ = peer_events.lock().unwrap_or_else(|e| e.into_inner()).send(Event::PeerLost(peer, cause));
            }));
            let beat_events = std::sync::Mutex::new(events.clone());
            let report = Arc::new(move |peer, cause| {
                let _ = beat_events.lock().unwrap_or_else(|e| e.into_inner()).send(Event::PeerLost(peer, cause));
            });
            let describe = |peer: usize| format!("process {peer} ({})", hosts.hosts()[peer].address);
            liveness = Some(Liveness::start(connected.liveness, layout.peer_timeout, &describe, report));
            let threads = layout.workers_per_process;
            let local = ProcessBuilder::new_typed_vector(threads, Hooks::default().refill, None);
            let network = |source| Error::Io { what: "cannot start timely's network threads".into(), source };
            if layout.encrypt {
                let mut relayed = Vec::with_capacity(sockets.len());
                for (peer, (socket, keys)) in sockets.into_iter().zip(connected.keys).enumerate() {
                    relayed.push(match (socket, keys) {
                        (Some(socket), Some(keys)) => Some(
                            crate::encrypt::relay(socket, &keys, describe(peer))
                                .map_err(|source| Error::Io { what: "cannot start the encryption relay".into(), source })?,
                        ),
                        (None, _) => None,
                        (Some(_), None) => {
                            return Err(Error::Options(format!("{} agreed on no encryption keys", describe(peer))));
                        }
                    });
                }
                tracing::info!("the data connections to the peers are encrypted");
                let (builders, guard) =
                    initialize_networking_from_sockets(local, relayed, layout.process, threads, Hooks::default()).map_err(network)?;
                (builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Some(Box::new(guard)))
            } else {
                let (builders, guard) =
                    initialize_networking_from_sockets(local, sockets, layout.process, threads, Hooks::default()).map_err(network)?;
                (builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Some(Box::new(guard)))
            }
        }
        _ => {
            let config = if layout.workers_per_process == 1 {
                CommunicationConfig::Thread
            } else {
                CommunicationConfig::Process(layout.workers_per_process)
            };
            let (builders, _nothing) = config.try_build().map_err(Error::Timely)?;
            (builders, None)
        }
    };

    let shutdown = Shutdown::default();
    let first_worker = layout.first_worker();
    let template = WorkerContext {
        process: layout.process,
        processes: layout.processes,
        index: first_worker,
        peers: layout.total_workers(),
        shutdown: shutdown.clone(),
    };
    let func = Arc::new(func);
    let worker_events = std::sync::Mutex::new(events.clone());
    let process = layout.process;
    let mut worker_config = WorkerConfig::default();
    worker_config.set(Shutdown::CONFIG_KEY.to_owned(), shutdown.clone());
    let guards = initialize_from(builders, Box::new(()), move |allocator| {
        let mut worker = Worker::new(worker_config.clone(), allocator, Some(Instant::now()));
        if arrangements {
            crate::arrangements::log(&mut worker);
        }
        let context = WorkerContext { index: worker.index(), ..template.clone() };
        let local = context.index - first_worker;
        let span = tracing::info_span!("worker", process, worker = context.index);
        let _entered = span.enter();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let result = func(&mut worker, &context);
            while worker.has_dataflows() {
                worker.step_or_park(None);
            }
            result
        }));
        let sender = worker_events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = sender.send(Event::Done(local, outcome.map_err(Failure::from_payload)));
    })
    .map_err(Error::Timely)?;
    // Dropping the guards joins the worker (and network) threads, which may never end once something failed;
    // so they are only ever joined on purpose, never by an unwinding or early return.
    let guards = std::mem::ManuallyDrop::new(guards);
    let comms = std::mem::ManuallyDrop::new(comms);
    drop(events);
    let worker_threads: Vec<std::thread::Thread> = guards.guards().iter().map(|g| g.thread().clone()).collect();

    let mut results: Vec<Option<T>> = (0..layout.workers_per_process).map(|_| None).collect();
    let mut finished = vec![false; layout.workers_per_process];
    let mut failure: Option<Error> = None;
    let mut failed_at: Option<Instant> = None;
    // A worker saw timely's "MergeQueue poisoned": a network thread failed, and its report names the peer.
    let mut poisoned = false;
    let mut stopping: Option<(&'static str, Instant)> = None;
    let outcome = loop {
        if finished.iter().all(|&f| f) && !(poisoned && failure.is_none()) {
            break failure.take().map_or(Ok(()), Err);
        }
        let wait = match (failed_at, stopping) {
            (Some(at), _) => (at + UNWIND_GRACE).saturating_duration_since(Instant::now()),
            (None, Some((_, at))) => (at + layout.shutdown_timeout).saturating_duration_since(Instant::now()),
            (None, None) => Duration::from_secs(3600),
        };
        match receiver.recv_timeout(wait) {
            Ok(Event::Done(local, Ok(value))) => {
                results[local] = Some(value);
                finished[local] = true;
            }
            Ok(Event::Done(local, Err(Failure::Fault(source)))) => {
                finished[local] = true;
                let worker = first_worker + local;
                if failure.is_none() {
                    tracing::error!(worker, "stopping the job: {source}");
                    failure = Some(Error::Fault { worker, source });
                    failed_at = Some(Instant::now());
                }
            }
            Ok(Event::Done(local, Err(Failure::Panic(message)))) => {
                finished[local] = true;
                // Remember the first panic, unless a lost peer already explains it.
                let worker = first_worker + local;
                if message.contains("MergeQueue poisoned") {
                    poisoned = true;
                    failed_at.get_or_insert_with(Instant::now);
                } else if failure.is_none() {
                    tracing::error!(worker, "worker panicked: {message}");
                    failure = Some(Error::WorkerPanicked { worker, message });
                    failed_at = Some(Instant::now());
                }
            }
            Ok(Event::PeerLost(peer, cause)) => {
                if !matches!(failure, Some(Error::PeerLost { .. })) {
                    tracing::error!(peer, "lost the connection to process {peer} ({cause}); stopping this process");
                    failure = Some(Error::PeerLost { process: layout.process, peer, cause });
                    failed_at.get_or_insert_with(Instant::now);
                }
            }
            Ok(Event::Signal(signal)) => {
                let name = signal_name(signal);
                if let Some((first, _)) = stopping {
                    tracing::warn!("received {name} while stopping after {first}; exiting now");
                    // A fault recorded meanwhile is why the job stopped, not the signal.
                    if let Some(error) = failure.take() {
                        break Err(error);
                    }
                    break Err(Error::SecondSignal { first, second: name });
                }
                tracing::info!(
                    "received {name}: asking sources to stop; waiting up to {} for the dataflow to drain",
                    humantime::format_duration(layout.shutdown_timeout)
                );
                shutdown.request();
                worker_threads.iter().for_each(std::thread::Thread::unpark);
                stopping = Some((name, Instant::now()));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(error) = failure.take() {
                    break Err(error);
                }
                if poisoned {
                    break Err(Error::Timely("a network thread failed without saying which peer; see the log above".into()));
                }
                if let Some((signal, _)) = stopping {
                    break Err(Error::ShutdownTimeout { signal, grace: layout.shutdown_timeout });
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(Error::Timely("worker threads ended without reporting a result".into()));
            }
        }
    };
    unwatch_peers();

    match outcome {
        Ok(()) => {
            if let Some(liveness) = &liveness {
                liveness.finish();
            }
            std::mem::ManuallyDrop::into_inner(guards).join();
            if let Some(comms) = std::mem::ManuallyDrop::into_inner(comms) {
                // Joins timely's network threads; they end once every process has finished the dataflow.
                if std::panic::catch_unwind(AssertUnwindSafe(|| drop(comms))).is_err() {
                    tracing::warn!("a peer connection failed while the cluster was shutting down; results are complete");
                }
            }
            if let Some((signal, _)) = stopping {
                tracing::info!("stopped cleanly after {signal}");
            }
            #[allow(clippy::expect_used, reason = "the loop above ends with Ok only once every worker sent Done(Ok)")]
            let results = results.into_iter().map(|r| r.expect("every worker reported")).collect();
            Ok(results)
        }
        // Workers or network threads may still be unwinding or blocked: the guards are not joined.
        Err(error) => Err(error),
    }
}

/// Runs a closure when dropped.
struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
