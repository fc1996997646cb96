//! `tributary launch`: run N processes of one program on this machine as a cluster.
//!
//! The launcher writes a host file with free loopback ports (unless given one), starts every process with
//! `--workers W --processes N --process I --hostfile F` appended to the program's own arguments, forwards each
//! process's stderr line by line behind a `[pI] ` prefix and leaves stdout untouched (so results can be piped),
//! and supervises: when one process fails, it stops the others (SIGTERM, then SIGKILL after a grace period) and
//! exits non-zero. SIGINT/SIGTERM sent to the launcher are forwarded once to every process.
//!
//! Children run in their own process group, so a Ctrl-C in a terminal reaches them once, through the launcher.
//! Supervision is one loop over process events (`Exited`, `Signal`); a restart policy slots in where a process
//! exit is handled.

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
    /// The program to run, then its own arguments (after `--`).
    #[arg(value_name = "PROGRAM", required = true)]
    pub program: PathBuf,
    /// Arguments for the program; the cluster flags are appended after them.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

enum Event {
    Exited(usize, std::io::Result<ExitStatus>),
    Signal(i32),
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

    let mut pids: Vec<Option<Pid>> = vec![None; args.processes];
    for index in 0..args.processes {
        match spawn(args, &hostfile, index, events.clone()) {
            Ok(pid) => pids[index] = Some(pid),
            Err(error) => {
                signal_all(&pids, Signal::SIGKILL);
                return Err(error);
            }
        }
    }
    drop(events);
    tracing::info!(processes = args.processes, workers = args.workers, hostfile = %hostfile.display(), "launched");

    let mut code: Option<i32> = None;
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
                if code.is_none() {
                    code = Some(exit);
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
    signals_handle.close();
    Ok(code.unwrap_or(0))
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
