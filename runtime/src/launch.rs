//! `tributary launch`: run N processes of one program on this machine as a cluster.
//!
//! The launcher writes a host file with free loopback ports (unless given one), starts every process with
//! `--workers W --processes N --process I --hostfile F` appended to the program's own arguments, forwards each
//! process's stderr line by line behind a `[pI] ` prefix and leaves stdout untouched (so results can be piped),
//! and supervises: when one process fails, it stops the others (SIGTERM, then SIGKILL after a grace period) and
//! exits non-zero. SIGINT/SIGTERM sent to the launcher are forwarded once to every process.
//!
//! Children run in their own process group, so a Ctrl-C in a terminal reaches them once, through the launcher.
//!
//! With `--restart on-failure` a failure restarts the whole cluster instead: when any process fails (it crashed,
//! was killed, or could not form the cluster), the others are stopped as above, the launcher waits until every
//! one of them is gone, waits `--restart-delay` (doubling after each restart in a row, up to
//! `--max-restart-delay`; a cluster that ran for a minute starts again from the first delay) and starts all of
//! them again, with a fresh host file of free ports (or the given one), up to `--max-restarts` times. A job whose
//! output is exactly once (a commit log) resumes from its last commit, so the output stays exact across restarts.
//! SIGINT/SIGTERM to the launcher stop the cluster for good, also while it waits to restart.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::hostfile::HostFile;

/// The arguments of `tributary launch`.
#[derive(clap::Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Processes to start.
    #[arg(short = 'n', long = "processes", value_name = "N", default_value_t = 1)]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", value_name = "W", default_value_t = 1)]
    pub workers: usize,
    /// Use this host file instead of writing one with free loopback ports.
    #[arg(long = "hostfile", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// After one process fails (or on SIGINT/SIGTERM), how long the others get to stop before SIGKILL.
    #[arg(long = "stop-timeout", value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,
    /// Whether to restart the whole cluster when a process fails.
    #[arg(long = "restart", value_name = "POLICY", value_enum, default_value_t = Restart::Never)]
    pub restart: Restart,
    /// With `--restart on-failure`: how many restarts before giving up (the launcher then exits with the last
    /// failure's code).
    #[arg(long = "max-restarts", value_name = "N", default_value_t = 10)]
    pub max_restarts: u32,
    /// With `--restart on-failure`: the wait before the first restart, doubled after each restart in a row.
    #[arg(long = "restart-delay", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub restart_delay: Duration,
    /// With `--restart on-failure`: the longest wait between restarts.
    #[arg(long = "max-restart-delay", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_restart_delay: Duration,
    /// The program to run, then its own arguments (after `--`).
    #[arg(value_name = "PROGRAM", required = true)]
    pub program: PathBuf,
    /// Arguments for the program; the cluster flags are appended after them.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// What the launcher does when a process fails.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Restart {
    /// Stop the others and exit with the failure's code.
    #[default]
    Never,
    /// Stop the others, wait until all are gone, and start the whole cluster again.
    OnFailure,
}

/// A cluster that ran this long before failing restarts after the first delay again.
const STABLE_RUN: Duration = Duration::from_secs(60);

enum Event {
    Exited(usize, std::io::Result<ExitStatus>),
    Signal(i32),
}

/// How one run of the cluster ended.
enum Ended {
    /// Every process exited 0.
    Succeeded,
    /// A process failed with this code (the others were stopped).
    Failed(i32),
    /// The launcher was told to stop (SIGINT/SIGTERM); exit with this code.
    Stopped(i32),
}

/// Runs the cluster and returns the exit code the launcher should exit with: 0 when every process succeeded,
/// otherwise the code of the first process that failed (128 + signal number if a signal killed it).
pub fn launch(args: &LaunchArgs) -> Result<i32> {
    if args.processes == 0 || args.workers == 0 {
        return Err(Error::Launch("--processes and --workers must be at least 1".into()));
    }
    if args.stop_timeout > crate::cli::MAX_TIMEOUT {
        return Err(Error::Launch(format!("--stop-timeout must be at most {}", humantime::format_duration(crate::cli::MAX_TIMEOUT))));
    }
    let scratch = std::env::temp_dir().join(format!("tributary-launch-{}", std::process::id()));
    let (hostfile, _cleanup) = match &args.hostfile {
        Some(path) => {
            let hosts = HostFile::read(path)?;
            hosts.check_layout(args.processes, 0)?;
            (path.clone(), None)
        }
        None => {
            std::fs::create_dir_all(&scratch)
                .map_err(|source| Error::Io { what: format!("cannot create {}", scratch.display()), source })?;
            let path = scratch.join("hosts");
            HostFile::write(&path, &free_loopback_ports(args.processes)?)?;
            (path, Some(RemoveDir(scratch.clone())))
        }
    };

    for (flag, delay) in [("--restart-delay", args.restart_delay), ("--max-restart-delay", args.max_restart_delay)] {
        if delay > crate::cli::MAX_TIMEOUT {
            return Err(Error::Launch(format!("{flag} must be at most {}", humantime::format_duration(crate::cli::MAX_TIMEOUT))));
        }
    }

    let (events, receiver) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|source| Error::Io { what: "cannot install SIGINT/SIGTERM handlers".into(), source })?;
    let signals_handle = signals.handle();
    let signal_events = events.clone();
    std::thread::Builder::new()
        .name("launch-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| Error::Io { what: "cannot start the signal thread".into(), source })?;

    let mut restarts = 0u32;
    let mut delay = args.restart_delay;
    let code = loop {
        if restarts > 0 && args.hostfile.is_none() {
            // The old processes' ports may still be taken (TIME_WAIT): a fresh set for every run.
            HostFile::write(&hostfile, &free_loopback_ports(args.processes)?)?;
        }
        let started = Instant::now();
        let ended = match run_once(args, &hostfile, &events, &receiver) {
            Ok(ended) => ended,
            // The program started before: a failure to start it again (resources, a replaced binary being
            // written) is a failed run, which the restart policy retries with its backoff and limit.
            Err(error) if restarts > 0 => {
                tracing::error!("cannot start the cluster again: {error}");
                Ended::Failed(1)
            }
            Err(error) => return Err(error),
        };
        let code = match ended {
            Ended::Succeeded => break 0,
            Ended::Stopped(code) => break code,
            Ended::Failed(code) if args.restart == Restart::Never => break code,
            Ended::Failed(code) if restarts >= args.max_restarts => {
                tracing::error!(restarts, "the cluster failed again (code {code}); giving up after {restarts} restarts (--max-restarts)");
                break code;
            }
            Ended::Failed(code) => code,
        };
        if started.elapsed() >= STABLE_RUN {
            delay = args.restart_delay;
        }
        restarts += 1;
        tracing::warn!(
            restart = restarts,
            of = args.max_restarts,
            "every process is stopped after a failure (code {code}); restarting the cluster in {}",
            humantime::format_duration(delay)
        );
        // Waiting to restart, the launcher still answers SIGINT/SIGTERM: then nothing restarts.
        match receiver.recv_timeout(delay) {
            Ok(Event::Signal(signal)) => {
                tracing::info!(signal, "received a signal while waiting to restart; not restarting");
                break code;
            }
            Ok(Event::Exited(..)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break code,
        }
        delay = (delay * 2).min(args.max_restart_delay.max(args.restart_delay));
    };
    signals_handle.close();
    Ok(code)
}

/// Starts every process and supervises them until all have exited.
fn run_once(
    args: &LaunchArgs,
    hostfile: &std::path::Path,
    events: &mpsc::Sender<Event>,
    receiver: &mpsc::Receiver<Event>,
) -> Result<Ended> {
    let mut pids: Vec<Option<Pid>> = vec![None; args.processes];
    for index in 0..args.processes {
        match spawn(args, hostfile, index, events.clone()) {
            Ok(pid) => pids[index] = Some(pid),
            Err(error) => {
                signal_all(&pids, Signal::SIGKILL);
                // Reap what was started, so nothing of this run outlives the error.
                while pids.iter().any(Option::is_some) {
                    match receiver.recv_timeout(args.stop_timeout) {
                        Ok(Event::Exited(index, _)) => pids[index] = None,
                        Ok(Event::Signal(_)) => {}
                        Err(_) => break,
                    }
                }
                return Err(error);
            }
        }
    }
    tracing::info!(processes = args.processes, workers = args.workers, hostfile = %hostfile.display(), "launched");

    let mut failed: Option<i32> = None;
    let mut stopped: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    while pids.iter().any(Option::is_some) {
        let event = match kill_at {
            Some(at) => receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Exited(index, status)) => {
                pids[index] = None;
                let exit = match status {
                    Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    Err(e) => {
                        tracing::error!("cannot wait for process {index}: {e}");
                        1
                    }
                };
                if exit == 0 {
                    tracing::debug!("process {index} finished");
                    continue;
                }
                if stopped.is_some() {
                    // Stopping on a signal: the processes' own codes say how they stopped.
                    stopped = stopped.filter(|code| *code != 0).or(Some(exit));
                    continue;
                }
                if failed.is_none() {
                    failed = Some(exit);
                    if pids.iter().any(Option::is_some) {
                        tracing::error!("process {index} exited with code {exit}; stopping the others");
                        signal_all(&pids, Signal::SIGTERM);
                        kill_at.get_or_insert(Instant::now() + args.stop_timeout);
                    } else {
                        tracing::error!("process {index} exited with code {exit}");
                    }
                }
            }
            Ok(Event::Signal(signal)) => {
                let Ok(signal) = Signal::try_from(signal) else { continue };
                tracing::info!("received {signal}; forwarding it to every process");
                signal_all(&pids, signal);
                stopped.get_or_insert(failed.unwrap_or(0));
                kill_at.get_or_insert(Instant::now() + args.stop_timeout);
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("processes did not stop within {}; killing them", humantime::format_duration(args.stop_timeout));
                signal_all(&pids, Signal::SIGKILL);
                kill_at = None;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(match (stopped, failed) {
        (Some(code), _) => Ended::Stopped(code),
        (None, Some(code)) => Ended::Failed(code),
        (None, None) => Ended::Succeeded,
    })
}

fn spawn(args: &LaunchArgs, hostfile: &std::path::Path, index: usize, events: mpsc::Sender<Event>) -> Result<Pid> {
    let mut command = Command::new(&args.program);
    command
        .args(&args.args)
        .arg("--workers")
        .arg(args.workers.to_string())
        .arg("--processes")
        .arg(args.processes.to_string())
        .arg("--process")
        .arg(index.to_string())
        .arg("--hostfile")
        .arg(hostfile)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child: Child =
        command.spawn().map_err(|e| Error::Launch(format!("cannot start {} (process {index}): {e}", args.program.display())))?;
    let pid = Pid::from_raw(child.id() as i32);
    // The process runs from here on: if the threads that watch it cannot start, it must not outlive the error.
    let watch = |source: std::io::Error| {
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        Error::Io { what: format!("cannot start the threads that watch process {index}"), source }
    };
    let stderr = child.stderr.take().ok_or_else(|| watch(std::io::Error::other("its stderr is not piped")))?;
    let forwarder =
        std::thread::Builder::new().name(format!("p{index}-stderr")).spawn(move || forward_stderr(index, stderr)).map_err(watch)?;
    std::thread::Builder::new()
        .name(format!("p{index}-wait"))
        .spawn(move || {
            let status = child.wait();
            // Let the last lines through before reporting the exit.
            let _ = forwarder.join();
            let _ = events.send(Event::Exited(index, status));
        })
        .map_err(watch)?;
    Ok(pid)
}

fn forward_stderr(index: usize, stderr: std::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let prefix = format!("[p{index}] ");
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let mut out = std::io::stderr().lock();
                let _ = out.write_all(prefix.as_bytes()).and_then(|()| out.write_all(&line));
            }
        }
    }
}

fn signal_all(pids: &[Option<Pid>], signal: Signal) {
    for pid in pids.iter().flatten() {
        // The process may have exited since; ESRCH is fine.
        let _ = kill(*pid, signal);
    }
}

/// Picks `n` distinct free ports on 127.0.0.1. They are released before the processes bind them, so another
/// program could take one in between; the processes then fail at startup with a clear error.
fn free_loopback_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| Error::Io { what: "cannot find free loopback ports".into(), source })?;
    listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| Error::Io { what: "cannot read a loopback port".into(), source })
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
