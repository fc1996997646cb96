//! Helpers for tests that spawn the real binaries: locating them, free ports, waiting with deadlines.
#![allow(dead_code)]

pub mod kafka;
pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The `tributary` launcher binary.
pub fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tributary"))
}

/// An example binary. Plain `cargo test` builds the package's examples first; with `--all-targets` or a single
/// `--test`, run `cargo build --examples` before (as `cargo xtask test` does).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "example binary {} is missing: run `cargo build --examples` first (`cargo xtask test` does)", path.display());
    path
}

/// An example binary built with `--release`, for the tests that run a million records through a cluster
/// (`cargo xtask test` builds it; by hand: `cargo build --release --example NAME`).
pub fn release_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target dir");
    let path = target.join("release").join("examples").join(name);
    assert!(
        path.exists(),
        "release example binary {} is missing: run `cargo build --release --example {name}` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// `n` distinct free loopback addresses (released before use; a collision makes the test fail loudly).
pub fn free_addresses(n: usize) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    while addresses.len() < n {
        let port = tributary_testkit::free_port().expect("a free port");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

/// Writes a host file for `addresses` into `dir`, as the launcher does.
pub fn write_hostfile(dir: &Path, addresses: &[SocketAddr]) -> PathBuf {
    let path = dir.join("hosts.txt");
    tributary::runtime::HostFile::write(&path, addresses).expect("write host file");
    path
}

/// Records that `test` cannot run on this machine, and why: printed, and listed by `cargo xtask test` as
/// skipped (set `TRIBUTARY_SKIPPED` to a file to collect them), not counted as passed.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(path) = std::env::var("TRIBUTARY_SKIPPED")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{test}: {why}");
    }
}

/// A fresh scratch directory under the target dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let exe = std::env::current_exe().expect("test binary path");
        let dir =
            exe.parent().and_then(Path::parent).expect("target dir").join("test-scratch").join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spawned process whose stdout lines arrive on a channel and whose stderr is collected.
pub struct Running {
    pub pid: i32,
    pub stdout: Receiver<String>,
    exit: Receiver<(ExitStatus, String)>,
}

impl Running {
    /// Takes over a child spawned with piped stdout and stderr.
    pub fn new(mut child: Child) -> Running {
        let pid = child.id() as i32;
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (line_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = line_tx.send(line);
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            let status = child.wait().expect("wait");
            let _ = reader.join();
            let _ = exit_tx.send((status, err));
        });
        Running { pid, stdout: lines, exit }
    }

    /// Waits for a stdout line containing `needle`, failing the test after `timeout`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no stdout line containing {needle:?} within {timeout:?} ({e})"),
            }
        }
    }

    /// As [`Running::wait`], also returning every stdout line not taken yet.
    pub fn wait_with_stdout(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let stdout = std::mem::replace(&mut self.stdout, mpsc::channel().1);
        let (status, stderr) = self.wait(timeout);
        // The stdout reader has finished before the exit is reported: every line is in the channel.
        let out = stdout.try_iter().map(|line| line + "\n").collect();
        (status, out, stderr)
    }

    /// Waits for the process to exit; kills it and fails the test after `timeout`.
    pub fn wait(self, timeout: Duration) -> (ExitStatus, String) {
        match self.exit.recv_timeout(timeout) {
            Ok(done) => done,
            Err(_) => {
                kill_tree(self.pid);
                // Killed with every descendant, nothing holds its pipes open: the reader threads end.
                let stderr = self.exit.recv_timeout(Duration::from_secs(10)).map(|(_, e)| e).unwrap_or_default();
                panic!("process {} did not exit within {timeout:?}; its stderr:\n{stderr}", self.pid);
            }
        }
    }
}

/// How long a test lets a program it runs to completion take before killing it and failing.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// `Command::output` with a deadline: a program that hangs is killed, with its descendants, and fails the test
/// (with its stderr so far) instead of hanging the suite.
pub trait OutputWithin {
    /// Runs the command with stdin closed and its output captured, for at most `timeout`.
    fn output_within(&mut self, timeout: Duration) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self, timeout: Duration) -> std::io::Result<Output> {
        let deadline = Instant::now() + timeout;
        let mut child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let pid = child.id() as i32;
        let read = |mut pipe: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = tx.send(bytes);
            });
            rx
        };
        let stdout = read(Box::new(child.stdout.take().expect("stdout piped")));
        let stderr = read(Box::new(child.stderr.take().expect("stderr piped")));
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });
        let left = || deadline.saturating_duration_since(Instant::now());
        // The pipes close when the program and everything it started have exited: wait for them too.
        let done = exit.recv_timeout(left()).ok().and_then(|status| {
            let out = stdout.recv_timeout(left()).ok()?;
            let err = stderr.recv_timeout(left()).ok()?;
            Some((status, out, err))
        });
        match done {
            Some((status, stdout, stderr)) => Ok(Output { status: status?, stdout, stderr }),
            None => {
                kill_tree(pid);
                let err = stderr.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
                panic!(
                    "{self:?} did not finish within {timeout:?} (killed with its descendants); its stderr:\n{}",
                    String::from_utf8_lossy(&err)
                );
            }
        }
    }
}

/// The processes whose parent is `pid` (from /proc).
pub fn children(pid: i32) -> std::collections::BTreeSet<i32> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: the command may hold spaces and parentheses, so read after the last `)`.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.insert(child);
        }
    }
    out
}

/// SIGKILLs `pid` and every process it started, and theirs (the launcher's children run in process groups of
/// their own, so killing its group would miss them).
pub fn kill_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i]));
        i += 1;
    }
    for pid in tree {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}
