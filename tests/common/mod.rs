//! Helpers for tests that spawn the real binaries: locating them, free ports, waiting with deadlines.
#![allow(dead_code)]

pub mod kafka;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
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
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
                let (_, stderr) = self.exit.recv().unwrap_or_else(|_| (ExitStatus::default(), String::new()));
                panic!("process {} did not exit within {timeout:?}; its stderr:\n{stderr}", self.pid);
            }
        }
    }
}
