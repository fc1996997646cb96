//! Kafka over TLS and SASL on the real broker: tansu requires a SCRAM login (`--authentication`), and a TLS
//! proxy in front of it serves a certificate from a throw-away CA the test makes (tansu 0.6.0 cannot serve TLS
//! itself; see docs/security.md) and requires a client certificate the CA signed. `kafka_word_count` runs end to end over `SASL_SSL` with SCRAM-SHA-256 (the
//! password from a file) and SCRAM-SHA-512 (from the environment), and its output is exact; a wrong password
//! a CA that did not sign the broker's certificate and a missing client certificate fail at start, quickly, with a message that says what
//! to check. No secret (the passwords, the cluster secret of the two-process run) appears in any line any run
//! logs, at debug level.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Scratch;
use common::kafka::{Job, lines_of, produce, table, word_counts};
use tributary_testkit::tls::Pki;
use tributary_testkit::{Broker, Storage};

const LONG: Duration = Duration::from_secs(120);
const PASSWORD: &str = "correct-horse-battery-staple-7f3a";
const WRONG: &str = "not-the-password-at-all-91c2";
const CLUSTER_SECRET: &str = "the-cluster-secret-of-this-test-5d0e";

fn storage() -> Storage {
    Storage::Sqlite("broker.db".into())
}

fn args(bootstrap: &str, output: &str, ca: &Path, mechanism: &str) -> Vec<String> {
    let mut args = args_without_client_cert(bootstrap, output, ca, mechanism);
    // The client certificate the TLS proxy requires (mutual TLS).
    args.extend(["--kafka-cert".to_owned(), ca.with_file_name(client_file(ca, "client.pem")).display().to_string()]);
    args.extend(["--kafka-key".to_owned(), ca.with_file_name(client_file(ca, "client.key")).display().to_string()]);
    args
}

/// The client certificate's file next to `ca` (`ca.pem` -> `client.pem`, `other-ca.pem` -> `other-client.pem`).
fn client_file(ca: &Path, name: &str) -> String {
    let prefix = ca.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix("ca.pem")).unwrap_or_default();
    format!("{prefix}{name}")
}

fn args_without_client_cert(bootstrap: &str, output: &str, ca: &Path, mechanism: &str) -> Vec<String> {
    let mut args: Vec<String> =
        ["--brokers", bootstrap, "--topic", "lines", "--output-topic", output, "--until-end"].map(String::from).to_vec();
    args.extend(["--kafka-ca".to_owned(), ca.display().to_string()]);
    args.extend(["--kafka-sasl", mechanism, "--kafka-user", "alice"].map(String::from));
    args
}

/// Fails if a secret shows in `log`.
fn assert_no_secret(what: &str, log: &str) {
    for secret in [PASSWORD, WRONG, CLUSTER_SECRET] {
        assert!(!log.contains(secret), "{what}: a secret appears in the log:\n{log}");
    }
}

#[test]
fn a_job_runs_over_tls_and_scram_and_a_wrong_password_or_ca_fails_clearly() {
    let scratch = Scratch::new("kafka-security");
    let dir = scratch.0.join("broker");
    // Users and input first, on the same storage without authentication: tansu lets an unauthenticated
    // client do nothing but log in, and `tansu user create` cannot log in.
    let lines = lines_of(&["river", "delta", "flow", "bank"], 0, 1_000, 10, 500, 7);
    {
        let mut plain = Broker::start(storage(), &dir).unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
        plain.create_topic("lines", 1, &[]).unwrap();
        produce(&plain.bootstrap(), "lines", &lines);
        plain.create_scram_user("alice", PASSWORD).unwrap();
        plain.stop();
    }
    let pki = Pki::create(&scratch.0, "", "tributary test CA").unwrap();
    let stranger = Pki::create(&scratch.0, "other-", "some other CA").unwrap();
    let (mut broker, proxy) =
        Broker::start_secured(storage(), &dir, &pki, true).unwrap_or_else(|e| panic!("cannot start the secured broker: {e:#}"));
    let bootstrap = proxy.address().to_string();
    let password = scratch.0.join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let wrong = scratch.0.join("wrong-password");
    std::fs::write(&wrong, WRONG).unwrap();
    let debug = ("RUST_LOG", "debug");

    // SCRAM-SHA-256, the password from a file named by the environment; two processes with a cluster secret.
    let password_file = password.display().to_string();
    let cluster_secret = scratch.0.join("cluster-secret");
    std::fs::write(&cluster_secret, CLUSTER_SECRET).unwrap();
    let cluster_secret = cluster_secret.display().to_string();
    let stderr = Job::start(
        &scratch.0,
        "kafka_word_count",
        (2, 1),
        &args(&bootstrap, "counts", &pki.ca, "SCRAM-SHA-256"),
        &[debug, ("TRIBUTARY_KAFKA_PASSWORD_FILE", &password_file), ("TRIBUTARY_CLUSTER_SECRET_FILE", &cluster_secret)],
    )
    .succeed("the job over SASL_SSL with SCRAM-SHA-256", LONG);
    assert_no_secret("SCRAM-SHA-256", &stderr);
    // SCRAM-SHA-512, the password itself in the environment.
    let stderr = Job::start(
        &scratch.0,
        "kafka_word_count",
        (1, 1),
        &args(&bootstrap, "counts512", &pki.ca, "SCRAM-SHA-512"),
        &[debug, ("TRIBUTARY_KAFKA_PASSWORD", PASSWORD)],
    )
    .succeed("the job over SASL_SSL with SCRAM-SHA-512", LONG);
    assert_no_secret("SCRAM-SHA-512", &stderr);

    // A wrong password: refused at start, saying so.
    let mut wrong_args = args(&bootstrap, "counts", &pki.ca, "SCRAM-SHA-256");
    wrong_args.extend(["--kafka-password-file".to_owned(), wrong.display().to_string()]);
    let started = Instant::now();
    let (statuses, stderr) = Job::start(&scratch.0, "kafka_word_count", (1, 1), &wrong_args, &[debug]).wait(LONG);
    assert!(!statuses[0].success(), "a wrong password must fail the job:\n{stderr}");
    assert!(
        stderr.contains("cannot connect to the Kafka brokers") && stderr.contains("refused the login"),
        "the failure must say the login was refused:\n{stderr}"
    );
    assert_no_secret("the wrong password", &stderr);
    let said = stderr.lines().find(|l| l.contains("cannot connect")).unwrap_or_default();
    eprintln!("a wrong password failed the job after {:?}: {said}", started.elapsed());
    // Not a speed figure: without the failure recognised the source waits out its 10 s metadata deadline.
    assert!(started.elapsed() < Duration::from_secs(8), "the refused login was not recognised at once");

    // A CA that did not sign the broker's certificate: the TLS handshake fails, saying what to check.
    let mut untrusted = args(&bootstrap, "counts", &stranger.ca, "SCRAM-SHA-256");
    untrusted.extend(["--kafka-password-file".to_owned(), password_file.clone()]);
    let started = Instant::now();
    let (statuses, stderr) = Job::start(&scratch.0, "kafka_word_count", (1, 1), &untrusted, &[debug]).wait(LONG);
    assert!(!statuses[0].success(), "an untrusted certificate must fail the job:\n{stderr}");
    assert!(
        stderr.contains("cannot connect to the Kafka brokers") && stderr.contains("TLS handshake failed") && stderr.contains("--kafka-ca"),
        "the failure must name the TLS handshake and --kafka-ca:\n{stderr}"
    );
    assert_no_secret("the untrusted CA", &stderr);
    let said = stderr.lines().find(|l| l.contains("cannot connect")).unwrap_or_default();
    eprintln!("an untrusted CA failed the job after {:?}: {said}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(8), "the refused certificate was not recognised at once");

    // Without the client certificate the proxy requires: the TLS handshake fails, saying what to check.
    let mut anonymous = args_without_client_cert(&bootstrap, "counts", &pki.ca, "SCRAM-SHA-256");
    anonymous.extend(["--kafka-password-file".to_owned(), password_file.clone()]);
    let (statuses, stderr) = Job::start(&scratch.0, "kafka_word_count", (1, 1), &anonymous, &[debug]).wait(LONG);
    assert!(!statuses[0].success(), "a client without the required certificate must fail:\n{stderr}");
    assert!(
        stderr.contains("cannot connect to the Kafka brokers") && stderr.contains("--kafka-cert"),
        "the failure must name the client certificate:\n{stderr}"
    );
    assert_no_secret("no client certificate", &stderr);
    let said = stderr.lines().find(|l| l.contains("cannot connect")).unwrap_or_default();
    eprintln!("no client certificate: {said}");

    // The output, read back without authentication.
    broker.stop();
    drop(proxy);
    let plain = Broker::start(storage(), &dir).unwrap_or_else(|e| panic!("cannot restart the test broker: {e:#}"));
    let expected: std::collections::BTreeMap<String, String> = word_counts(&lines).into_iter().map(|(w, n)| (w, n.to_string())).collect();
    assert_eq!(table(&plain.bootstrap(), "counts"), expected, "the counts written over SASL_SSL");
    assert_eq!(table(&plain.bootstrap(), "counts512"), expected, "the counts written with SCRAM-SHA-512");
}
