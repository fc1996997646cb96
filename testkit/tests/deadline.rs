//! A [`Deadline`] that expires ends the test binary with a message and kills the processes it started (an exit
//! runs no destructors, so a broker's `Drop` would not stop it). The test runs itself as the child that hangs.

use std::process::Command;
use std::time::{Duration, Instant};

use tributary_testkit::Deadline;
use tributary_testkit::process::{RunError, output_within};

const CHILD: &str = "TRIBUTARY_DEADLINE_CHILD";
const MARKER: &str = "600.5813";

fn running(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
}

#[test]
fn an_expired_deadline_exits_with_a_message_and_kills_what_the_binary_started() {
    if std::env::var_os(CHILD).is_some() {
        // The child: start a long-lived process (standing in for a broker), then hang past the deadline.
        #[allow(clippy::zombie_processes, reason = "the deadline kills it; this process exits without waiting")]
        let _sleeper = Command::new("sleep").arg(MARKER).spawn().expect("spawn sleep");
        let _deadline = Deadline::new("the hanging step", Duration::from_millis(300));
        loop {
            // Hanging on purpose: only the deadline ends this.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let exe = std::env::current_exe().expect("the test binary");
    let output = output_within(
        Command::new(exe)
            .args(["--exact", "an_expired_deadline_exits_with_a_message_and_kills_what_the_binary_started", "--nocapture"])
            .env(CHILD, "1"),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e: RunError| panic!("the child, or a process it started holding its output, outlived its deadline: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("FAILED: the hanging step did not finish within 300ms"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(MARKER) {
        assert!(Instant::now() < deadline, "the process the child started outlived it");
        // Polling /proc until the killed process is gone.
        std::thread::sleep(Duration::from_millis(20));
    }
}
