//! Child processes under deadlines: finding a process's descendants, killing a whole tree, and
//! `Command::output` that cannot hang its caller.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The processes whose parent is `pid` (from /proc).
pub fn children(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
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

/// `pid`'s descendants: its children, theirs, and so on (not `pid` itself).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut tree: Vec<i32> = children(pid).into_iter().collect();
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i]));
        i += 1;
    }
    tree
}

/// SIGKILLs `pid` and every process it started, and theirs (a launcher's children run in process groups of
/// their own, so killing its group would miss them).
pub fn kill_tree(pid: i32) {
    // Stop the parent first, so it cannot start new children while its tree is being killed.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP);
    for pid in std::iter::once(pid).chain(descendants(pid)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// SIGKILLs every process this one started, and theirs: what a test binary does before it exits on a deadline
/// (an exit runs no destructors, so brokers and jobs would be left running).
pub fn kill_descendants() {
    for pid in descendants(std::process::id() as i32) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Why [`output_within`] has no output.
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// It (or something it started, holding its stdout or stderr) did not finish within the limit; it was
    /// killed with its descendants.
    TimedOut {
        /// The command.
        command: String,
        /// The limit.
        limit: Duration,
        /// Its stderr until it was killed.
        stderr: Vec<u8>,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot start the program: {e}"),
            RunError::TimedOut { command, limit, stderr } => write!(
                f,
                "{command} did not finish within {limit:?} (killed with its descendants); its stderr:\n{}",
                String::from_utf8_lossy(stderr)
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// `Command::output` with a deadline: runs `command` with stdin closed and its output captured, in a process
/// group of its own; a program that does not exit within `limit`, or leaves a descendant holding its stdout or
/// stderr, is killed with its process group and its descendants (which may have groups of their own) and
/// reported instead of hanging the caller.
pub fn output_within(command: &mut Command, limit: Duration) -> Result<Output, RunError> {
    use std::os::unix::process::CommandExt;
    let deadline = Instant::now() + limit;
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn().map_err(RunError::Spawn)?;
    let pid = child.id() as i32;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send(bytes);
        });
        rx
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
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
        Some((Ok(status), stdout, stderr)) => Ok(Output { status, stdout, stderr }),
        Some((Err(e), _, _)) => Err(RunError::Spawn(e)),
        None => {
            kill_tree(pid);
            // An orphan (its parent exited) is no longer in the tree, but still in the group.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let stderr = stderr.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
            Err(RunError::TimedOut { command: format!("{command:?}"), limit, stderr })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_outlives_its_limit_is_killed_and_reported() {
        let started = Instant::now();
        let error = output_within(Command::new("sh").args(["-c", "echo started >&2; exec sleep 600"]), Duration::from_millis(500))
            .expect_err("sleep 600 outlives half a second");
        assert!(started.elapsed() < Duration::from_secs(30), "returned at the limit, not when the program ended");
        let RunError::TimedOut { stderr, .. } = error else { panic!("not a timeout: {error}") };
        assert_eq!(String::from_utf8_lossy(&stderr), "started\n", "the stderr so far comes with the error");
    }

    #[test]
    fn a_descendant_holding_the_pipes_is_killed_too() {
        // The shell exits at once; its background child keeps stdout open, so reading it to the end would hang.
        let started = Instant::now();
        let error = output_within(Command::new("sh").args(["-c", "sleep 600.4711 & echo $!"]), Duration::from_millis(500))
            .expect_err("the pipe stays open while the background sleep runs");
        assert!(matches!(error, RunError::TimedOut { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // The orphaned sleep (no longer the shell's child) is gone as well.
        let running =
            || {
                std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
                    std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("600.4711"))
                })
            };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running() {
            assert!(Instant::now() < deadline, "the orphaned descendant still runs");
            // Polling /proc until the killed process is gone.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_quick_program_gives_its_output_and_status() {
        let output = output_within(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(60)).unwrap();
        assert_eq!((output.stdout.as_slice(), output.stderr.as_slice(), output.status.code()), (&b"out\n"[..], &b"err\n"[..], Some(3)));
    }
}
