//! The runtime end to end: real processes, real sockets, real signals.

mod common;

use common::OutputWithin;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, Scratch, example, free_addresses, launcher, write_hostfile};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

fn spawn(command: &mut Command) -> Running {
    Running::new(command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn"))
}

/// Writes a few text files with a skewed, deterministic vocabulary and returns them with their reference counts.
fn word_count_input(dir: &std::path::Path) -> (Vec<std::path::PathBuf>, String) {
    let vocabulary = ["river", "Stream", "delta", "tributary", "flow", "Basin", "rapids", "estuary", "x1", "ÉCLUSE"];
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = Vec::new();
    let mut state = 7u64;
    for f in 0..3 {
        let mut text = String::new();
        for line in 0..700 {
            let words = (line % 9) + 1;
            for w in 0..words {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let word = vocabulary[((state >> 33) as usize % vocabulary.len()).min(w + f + 2) % vocabulary.len()];
                text.push_str(word);
                text.push_str(if w % 3 == 0 { ", " } else { " " });
                *counts.entry(word.to_lowercase()).or_default() += 1;
            }
            text.push('\n');
        }
        let path = dir.join(format!("input-{f}.txt"));
        std::fs::write(&path, text).expect("write input");
        files.push(path);
    }
    let expected = counts.iter().map(|(w, c)| format!("{w} {c}\n")).collect();
    (files, expected)
}

#[test]
fn word_count_is_byte_identical_for_1x1_2x2_3x1() {
    let scratch = Scratch::new("word-count");
    let (files, expected) = word_count_input(&scratch.0);
    for (processes, workers) in [(1, 1), (2, 2), (3, 1)] {
        let output = Command::new(launcher())
            .args(["launch", "--processes", &processes.to_string(), "--workers", &workers.to_string(), "--"])
            .arg(example("word_count"))
            .arg("--input")
            .args(&files)
            .stdin(Stdio::null())
            .output_within(common::RUN_LIMIT)
            .expect("run launcher");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{processes}x{workers} failed: {stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "{processes}x{workers} output differs from the reference");
    }
}

#[test]
fn bad_host_files_fail_naming_file_and_line() {
    let scratch = Scratch::new("bad-hostfile");
    let cases = [
        ("# cluster\n127.0.0.1:4000\n\n127.0.0.1:notaport\n", 2, ":4: `127.0.0.1:notaport` is not a usable host:port address"),
        ("127.0.0.1:4000\n127.0.0.1:4000\n", 2, ":2: `127.0.0.1:4000` repeats the address of line 1"),
        ("127.0.0.1:4000\n127.0.0.1:4001\n", 3, "--processes is 3 but the file lists 2 host(s) (on lines 1, 2)"),
        ("127.0.0.1:4000\n", 1, "--process is 5"),
    ];
    for (text, processes, message) in cases {
        let path = scratch.0.join("hosts.txt");
        std::fs::write(&path, text).expect("write host file");
        let process = if message.contains("--process is 5") { "5" } else { "0" };
        let output = Command::new(example("word_count"))
            .args(["--input", "Cargo.toml", "--processes", &processes.to_string(), "--process", process, "--hostfile"])
            .arg(&path)
            .output_within(common::RUN_LIMIT)
            .expect("run word_count");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "a bad host file was accepted: {text:?}");
        assert!(stderr.contains(&path.display().to_string()), "error does not name the file: {stderr}");
        assert!(stderr.contains(message), "expected {message:?} in: {stderr}");
    }
}

#[test]
fn missing_peer_fails_within_the_deadline() {
    let scratch = Scratch::new("missing-peer");
    let addresses = free_addresses(3);
    let hosts = write_hostfile(&scratch.0, &addresses);
    // Process 1 both waits for process 2 to connect to it and tries to reach process 0: neither is running.
    let started = Instant::now();
    let output = Command::new(example("cluster_check"))
        .args(["--processes", "3", "--process", "1", "--connect-timeout", "2s", "--hostfile"])
        .arg(&hosts)
        .output_within(common::RUN_LIMIT)
        .expect("run cluster_check");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without its peers");
    let expected = format!("peers process 0 ({}), process 2 ({}) did not connect within 2s", addresses[0], addresses[2]);
    assert!(stderr.contains(&expected), "expected {expected:?} in: {stderr}");
    assert!(elapsed >= Duration::from_secs(2), "gave up before the deadline: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?} to give up after a 2 s deadline");
}

#[test]
fn sigterm_while_waiting_for_peers_stops_at_once() {
    let scratch = Scratch::new("sigterm-startup");
    let addresses = free_addresses(2);
    let hosts = write_hostfile(&scratch.0, &addresses);
    let waiting = spawn(
        Command::new(example("cluster_check"))
            .args(["--processes", "2", "--process", "0", "--connect-timeout", "60s", "--hostfile"])
            .arg(&hosts),
    );
    // The process listens before it waits: once the port accepts, it is in the wait.
    let address = addresses[0];
    let deadline = Instant::now() + LONG;
    while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "process 0 never listened");
    }
    let signalled = Instant::now();
    kill(Pid::from_raw(waiting.pid), Signal::SIGTERM).expect("signal");
    let (status, stderr) = waiting.wait(LONG);
    assert!(!status.success());
    assert!(stderr.contains("stopped by SIGTERM while connecting to the peer processes"), "{stderr}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "took {:?} to stop", signalled.elapsed());
}

#[test]
fn mismatched_flags_fail_the_handshake() {
    let scratch = Scratch::new("handshake");
    let hosts = write_hostfile(&scratch.0, &free_addresses(2));
    let start = |process: &str, workers: &str| {
        spawn(
            Command::new(example("cluster_check"))
                .args(["--rounds", "1", "--connect-timeout", "30s", "--processes", "2"])
                .args(["--process", process, "--workers", workers, "--hostfile"])
                .arg(&hosts),
        )
    };
    let p0 = start("0", "1");
    let p1 = start("1", "2");
    let (status1, stderr1) = p1.wait(LONG);
    let (status0, stderr0) = p0.wait(LONG);
    assert!(!status0.success() && !status1.success(), "mismatched clusters ran");
    let both = format!("{stderr0}{stderr1}");
    assert!(both.contains("handshake with process") && both.contains("--workers 2"), "{both}");
}

#[test]
fn killing_one_process_stops_the_others_promptly() {
    let scratch = Scratch::new("kill-one");
    let hosts = write_hostfile(&scratch.0, &free_addresses(3));
    let processes: Vec<Running> = (0..3)
        .map(|p| {
            spawn(
                Command::new(example("cluster_check"))
                    .args(["--interval", "50ms", "--workers", "2", "--processes", "3", "--process"])
                    .arg(p.to_string())
                    .arg("--hostfile")
                    .arg(&hosts),
            )
        })
        .collect();
    // Once round 2 is printed, every process is connected and exchanging data.
    processes[0].wait_for_line("round 2:", LONG);
    let mut processes = processes.into_iter();
    let (p0, p1, p2) = (processes.next().unwrap(), processes.next().unwrap(), processes.next().unwrap());
    kill(Pid::from_raw(p1.pid), Signal::SIGKILL).expect("kill process 1");
    let killed = Instant::now();
    for survivor in [p0, p2] {
        let (status, stderr) = survivor.wait(Duration::from_secs(20));
        assert!(!status.success(), "a survivor exited successfully");
        assert!(stderr.contains("lost its connection to process"), "no clear error line: {stderr}");
        assert!(!stderr.contains("MergeQueue poisoned"), "timely's panic leaked through: {stderr}");
    }
    let elapsed = killed.elapsed();
    assert!(elapsed < Duration::from_secs(10), "survivors took {elapsed:?} to stop");
    let _ = p1.wait(LONG);
}

#[test]
fn launcher_stops_the_rest_and_propagates_failure() {
    // Process 1 fails at once; the others would run for ten minutes unless stopped.
    let script = r#"if [ "$6" = 1 ]; then echo "process 1 failing" >&2; exit 3; fi; exec sleep 600"#;
    let started = Instant::now();
    let run = spawn(Command::new(launcher()).args(["launch", "--processes", "3", "--", "sh", "-c", script, "sh"]));
    let (status, stderr) = run.wait(LONG);
    assert_eq!(status.code(), Some(3), "launcher did not pass on the failing exit code: {stderr}");
    assert!(stderr.contains("[p1] process 1 failing"), "stderr not forwarded with a prefix: {stderr}");
    assert!(stderr.contains("process 1 exited with code 3; stopping the others"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "launcher took {:?}", started.elapsed());
}

#[test]
fn launcher_reports_a_program_that_cannot_start() {
    let output = Command::new(launcher())
        .args(["launch", "-n", "2", "--", "/nonexistent/program"])
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot start /nonexistent/program"));
}

#[test]
fn a_program_that_cannot_be_started_again_counts_as_a_failed_run_and_is_retried_up_to_the_limit() {
    // The program fails, and deletes itself first: every restart fails to start it.
    let scratch = Scratch::new("launch-vanishing");
    let program = scratch.0.join("vanishing.sh");
    std::fs::write(&program, "#!/bin/sh\nrm -f -- \"$0\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = Command::new(launcher())
        .args(["launch", "--restart", "on-failure", "--max-restarts", "2", "--restart-delay", "10ms", "--"])
        .arg(&program)
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("cannot start the cluster again").count(), 2, "both restarts were tried: {stderr}");
    assert!(stderr.contains("giving up after 2 restarts"), "{stderr}");
}

#[test]
fn only_processes_holding_the_cluster_secret_join_the_cluster() {
    let scratch = Scratch::new("cluster-secret");
    let (secret, wrong) = (scratch.0.join("secret"), scratch.0.join("wrong"));
    std::fs::write(&secret, "the right secret, 32 bytes long.\n").unwrap();
    std::fs::write(&wrong, "another secret, also long enough\n").unwrap();
    let addresses = free_addresses(2);
    let hostfile = write_hostfile(&scratch.0, &addresses);
    let process = |index: usize, secret: Option<&std::path::Path>, connect_timeout: &str| {
        let mut command = Command::new(example("cluster_check"));
        command.args(["--processes", "2", "--process", &index.to_string(), "--interval", "50ms", "--connect-timeout", connect_timeout]);
        command.arg("--hostfile").arg(&hostfile).env_remove("TRIBUTARY_CLUSTER_SECRET_FILE");
        if let Some(secret) = secret {
            command.arg("--cluster-secret-file").arg(secret);
        }
        command
    };
    let p0 = spawn(&mut process(0, Some(&secret), "120s"));

    // Process 1 with the wrong secret: each attempt is refused; it gives up at its own deadline.
    let impostor = process(1, Some(&wrong), "3s").output_within(common::RUN_LIMIT).expect("run");
    let said = String::from_utf8_lossy(&impostor.stderr);
    assert!(!impostor.status.success(), "a process with the wrong secret joined: {said}");
    assert!(said.contains("does not hold the cluster secret"), "{said}");
    // Process 1 without a secret: told at once what is missing.
    let stranger = process(1, None, "3s").output_within(common::RUN_LIMIT).expect("run");
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(!stranger.status.success(), "a process without the secret joined: {said}");
    assert!(said.contains("requires a cluster secret and this process has none"), "{said}");

    // A client that speaks the protocol but cannot prove anything (a garbage proof): process 0 closes it.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addresses[0]).expect("connect to process 0");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The greeting: magic, protocol 3, process 1 of 2, 1 worker, the data connection, with a secret.
        let mut hello = b"TRIBUTRY".to_vec();
        hello.extend(3u32.to_be_bytes());
        for field in [1u64, 2, 1, 0, 1] {
            hello.extend(field.to_be_bytes());
        }
        stream.write_all(&hello).unwrap();
        let mut reply = vec![0u8; hello.len()];
        stream.read_exact(&mut reply).expect("process 0's greeting");
        stream.write_all(&[7u8; 32]).unwrap();
        let mut challenge = [0u8; 64];
        stream.read_exact(&mut challenge).expect("process 0's nonce and proof");
        stream.write_all(&[0u8; 32]).unwrap();
        let mut rest = [0u8; 1];
        assert_eq!(stream.read(&mut rest).expect("closed, not kept"), 0, "process 0 kept a connection that proved nothing");
    }

    // The right one: the cluster forms and works.
    let p1 = spawn(&mut process(1, Some(&secret), "120s"));
    p0.wait_for_line("round 2:", LONG);
    for run in [&p0, &p1] {
        kill(Pid::from_raw(run.pid), Signal::SIGTERM).expect("signal");
    }
    let (status, stderr) = p0.wait(LONG);
    assert!(status.success(), "{stderr}");
    assert!(p1.wait(LONG).0.success());
    // Process 0 refused both, naming where they came from.
    assert!(stderr.contains("refusing a connection from 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("does not hold the cluster secret (wrong secret)"), "{stderr}");
    assert!(stderr.contains("it has no cluster secret"), "{stderr}");
    assert!(!stderr.contains("the right secret") && !stderr.contains("another secret"), "no secret in the logs: {stderr}");
}

#[test]
fn sigterm_to_the_launcher_stops_the_cluster_cleanly() {
    let run = spawn(
        Command::new(launcher())
            .args(["launch", "--processes", "2", "--workers", "2", "--"])
            .arg(example("cluster_check"))
            .args(["--interval", "50ms"]),
    );
    run.wait_for_line("round 2:", LONG);
    kill(Pid::from_raw(run.pid), Signal::SIGTERM).expect("signal launcher");
    let (status, stderr) = run.wait(LONG);
    assert!(status.success(), "cluster did not stop cleanly: {stderr}");
    for p in 0..2 {
        assert!(stderr.contains(&format!("[p{p}]")) && stderr.matches("stopped cleanly after SIGTERM").count() == 2, "{stderr}");
    }
}

#[test]
fn sigint_to_the_launcher_is_forwarded_to_every_process() {
    // Each process says when SIGINT reaches it and exits 0; `$6` is the `--process` index the launcher appends.
    let script = r#"trap 'echo "process $6 got SIGINT" >&2; exit 0' INT; echo "ready $6"; while :; do sleep 1; done"#;
    let run = spawn(Command::new(launcher()).args(["launch", "--processes", "2", "--stop-timeout", "60s", "--", "sh", "-c", script, "sh"]));
    for _ in 0..2 {
        run.wait_for_line("ready", LONG);
    }
    kill(Pid::from_raw(run.pid), Signal::SIGINT).expect("signal launcher");
    let (status, stderr) = run.wait(LONG);
    assert!(status.success(), "the processes exited 0 after SIGINT, so must the launcher: {stderr}");
    assert!(stderr.contains("received SIGINT; forwarding it to every process"), "{stderr}");
    for p in 0..2 {
        assert!(stderr.contains(&format!("[p{p}] process {p} got SIGINT")), "process {p} did not get SIGINT: {stderr}");
    }
    assert!(!stderr.contains("killing them"), "nothing had to be killed: {stderr}");
}

#[test]
fn processes_that_ignore_the_stop_signal_are_killed_after_the_stop_timeout() {
    // Ignored signals stay ignored across exec: `sleep` cannot be stopped but by SIGKILL.
    let script = r#"trap '' INT TERM; echo "ready $6"; exec sleep 600"#;
    let run = spawn(Command::new(launcher()).args(["launch", "--processes", "2", "--stop-timeout", "1s", "--", "sh", "-c", script, "sh"]));
    for _ in 0..2 {
        run.wait_for_line("ready", LONG);
    }
    let processes = common::children(run.pid);
    assert_eq!(processes.len(), 2, "the launcher runs two processes: {processes:?}");
    let signalled = Instant::now();
    kill(Pid::from_raw(run.pid), Signal::SIGINT).expect("signal launcher");
    let (status, stderr) = run.wait(LONG);
    let took = signalled.elapsed();
    assert!(stderr.contains("processes did not stop within 1s; killing them"), "{stderr}");
    assert!(!status.success(), "killed processes are not a clean stop: {stderr}");
    assert!(took >= Duration::from_secs(1), "killed after {took:?}, before the stop timeout");
    for pid in processes {
        // The launcher reaped them: no such process, not even a zombie.
        assert_eq!(kill(Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH), "process {pid} is still there");
    }
}

#[test]
fn a_stopped_peer_stops_the_cluster_within_the_peer_timeout_naming_it() {
    let scratch = Scratch::new("stopped-peer");
    let hosts = write_hostfile(&scratch.0, &free_addresses(2));
    let processes: Vec<Running> = (0..2)
        .map(|p| {
            spawn(
                Command::new(example("cluster_check"))
                    .args(["--interval", "50ms", "--peer-timeout", "2s", "--processes", "2", "--process"])
                    .arg(p.to_string())
                    .arg("--hostfile")
                    .arg(&hosts),
            )
        })
        .collect();
    processes[0].wait_for_line("round 2:", LONG);
    let mut processes = processes.into_iter();
    let (p0, p1) = (processes.next().unwrap(), processes.next().unwrap());
    // SIGSTOP keeps the process's sockets open: only its silence gives it away.
    kill(Pid::from_raw(p1.pid), Signal::SIGSTOP).expect("stop process 1");
    let stopped = Instant::now();
    let (status, stderr) = p0.wait(Duration::from_secs(30));
    let elapsed = stopped.elapsed();
    kill(Pid::from_raw(p1.pid), Signal::SIGKILL).expect("kill process 1");
    let _ = p1.wait(LONG);
    assert!(!status.success(), "process 0 exited successfully: {stderr}");
    assert!(stderr.contains("lost its connection to process 1") && stderr.contains("sent no heartbeat for 2s"), "{stderr}");
    assert!(stderr.contains(&hosts_line(&hosts, 1)), "the message names the peer's address: {stderr}");
    assert!(elapsed < Duration::from_secs(10), "process 0 took {elapsed:?} to stop");
}

/// Line `index` of a host file.
fn hosts_line(path: &std::path::Path, index: usize) -> String {
    std::fs::read_to_string(path).expect("host file").lines().filter(|l| !l.trim().is_empty()).nth(index).expect("a line").trim().to_owned()
}

/// The harness: a program that hangs (here a shell whose child keeps the pipes open) is killed with its
/// descendants at the deadline and fails the test, instead of hanging the suite.
#[test]
fn a_hung_program_fails_the_test_at_its_deadline_and_leaves_no_process_behind() {
    let started = Instant::now();
    let pid_file = std::env::temp_dir().join(format!("tributary-hung-{}", std::process::id()));
    let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
    let outcome = std::panic::catch_unwind(|| Command::new("sh").args(["-c", &script]).output_within(Duration::from_secs(2)));
    let message = outcome.expect_err("a hung program fails the test");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("did not finish within 2s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up after {:?}", started.elapsed());
    let grandchild: i32 = std::fs::read_to_string(&pid_file).expect("the shell wrote its child's pid").trim().parse().unwrap();
    let _ = std::fs::remove_file(&pid_file);
    // Killed with the shell (it may linger as a zombie of the shell's reaper for a moment, never running).
    let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
    let running = state.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z");
    assert!(!running, "the hung program's child {grandchild} still runs: {state}");
}

#[test]
fn an_encrypted_data_plane_gives_the_same_output_and_every_process_must_agree_on_it() {
    let scratch = Scratch::new("cluster-encrypt");
    let (files, expected) = word_count_input(&scratch.0);
    let secret = scratch.0.join("secret");
    std::fs::write(&secret, "the cluster secret of the encryption test\n").unwrap();
    let output = Command::new(launcher())
        .args(["launch", "--processes", "3", "--workers", "2", "--"])
        .arg(example("word_count"))
        .arg("--cluster-encrypt")
        .arg("--cluster-secret-file")
        .arg(&secret)
        .arg("--input")
        .args(&files)
        .env_remove("TRIBUTARY_CLUSTER_SECRET_FILE")
        .stdin(Stdio::null())
        .output_within(common::RUN_LIMIT)
        .expect("run launcher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "3x2 encrypted failed: {stderr}");
    assert_eq!(stderr.matches("the data connections to the peers are encrypted").count(), 3, "{stderr}");
    // Processes finish at different moments: a finished peer's half-close must not break the others' sending.
    assert!(!stderr.contains("peer connection failed") && !stderr.contains("panicked"), "an unclean end: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "the encrypted 3x2 output differs from the reference");

    // Without a secret there are no keys: refused before anything starts.
    let alone = Command::new(example("word_count"))
        .arg("--cluster-encrypt")
        .arg("--input")
        .args(&files)
        .env_remove("TRIBUTARY_CLUSTER_SECRET_FILE")
        .stdin(Stdio::null())
        .output_within(common::RUN_LIMIT)
        .expect("run");
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && said.contains("--cluster-encrypt needs --cluster-secret-file"), "{said}");

    // One process encrypts, the other does not: both stop, saying which flag differs.
    let hostfile = write_hostfile(&scratch.0, &free_addresses(2));
    let process = |index: usize, encrypt: bool| {
        let mut command = Command::new(example("cluster_check"));
        command.args(["--processes", "2", "--process", &index.to_string(), "--interval", "50ms", "--connect-timeout", "60s"]);
        command.arg("--hostfile").arg(&hostfile).arg("--cluster-secret-file").arg(&secret).env_remove("TRIBUTARY_CLUSTER_SECRET_FILE");
        if encrypt {
            command.arg("--cluster-encrypt");
        }
        spawn(&mut command)
    };
    let (p0, p1) = (process(0, true), process(1, false));
    for (run, flag) in
        [(p0, "this process does (--cluster-encrypt)"), (p1, "it encrypts the data plane (--cluster-encrypt) and this process does not")]
    {
        let (status, stderr) = run.wait(LONG);
        assert!(!status.success(), "a process with a different --cluster-encrypt ran: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}
