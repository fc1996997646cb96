//! Helpers for tests that spawn the real binaries: locating them, free ports, waiting with deadlines.
#![allow(dead_code)]

pub mod kafka;
pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

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

/// `Command::output` with a deadline ([`tributary_testkit::process::output_within`]): a program that hangs is
/// killed, with its process group and descendants, and fails the test (with its stderr so far) instead of
/// hanging the suite.
pub trait OutputWithin {
    /// Runs the command with stdin closed and its output captured, for at most `timeout`.
    fn output_within(&mut self, timeout: Duration) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self, timeout: Duration) -> std::io::Result<Output> {
        match tributary_testkit::process::output_within(self, timeout) {
            Ok(output) => Ok(output),
            Err(tributary_testkit::process::RunError::Spawn(e)) => Err(e),
            Err(e) => panic!("{e}"),
        }
    }
}

#[allow(unused_imports, reason = "each test binary uses its own part of the helpers")]
pub use tributary_testkit::process::{children, kill_tree};
