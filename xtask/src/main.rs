//! `cargo xtask`: the project's set-up, test and demo commands.
//!
//! - `cargo xtask setup`: installs the pinned test broker (tansu) into a cache, once.
//! - `cargo xtask broker start|stop|status`: a tansu broker on a free loopback port, for development.
//! - `cargo xtask test`: setup, then `cargo fmt --check`, clippy with `-D warnings`, and every test.
//! - `cargo xtask demo`: the main job, on this machine, over a broker it starts on loopback.
//! - `cargo xtask bench`: Nexmark q0-q8 with the peers, in memory and through a broker.

mod bench;
mod broker;
mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tributary's set-up, test and demo commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned test broker (tansu) into the cache, unless it is there already.
    Setup,
    /// Start, stop or inspect a development broker on 127.0.0.1.
    Broker {
        #[command(subcommand)]
        action: BrokerAction,
    },
    /// Set up, then run formatting and lint checks and every test (unit, doc, integration).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run the main job on this machine: a broker on loopback, orders and customers, enrich_join as 2x2 processes.
    Demo {
        /// Run the debug binaries already built (as `cargo xtask test` does) instead of building release ones.
        #[arg(long)]
        debug: bool,
    },
    /// Nexmark q0-q8 in memory and through a broker, with the peers (see benches/peers for Bytewax and Flink).
    Bench {
        /// Events per run.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Events per run of the Python peers (they run at 80k-300k events/s here).
        #[arg(long, default_value_t = 1_000_000)]
        peer_events: u64,
        /// Queries to run through the broker too (each is bound by the broker's ~70k events/s here).
        #[arg(long, value_delimiter = ',', default_value = "q0,q1,q2")]
        broker_queries: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BrokerAction {
    /// Start a broker on a free loopback port (sqlite storage unless --memory) and print its address.
    Start {
        /// Use the memory storage engine: faster, but its partition ends are inexact, so `--until-end` and
        /// exactly-once output do not work against it, and it forgets everything when stopped.
        #[arg(long)]
        memory: bool,
    },
    /// Stop the broker started by `broker start`.
    Stop,
    /// Print the running broker's address, if any.
    Status,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Setup => {
            let tansu = broker::install()?;
            println!("tansu ready at {}", tansu.display());
        }
        Task::Broker { action } => match action {
            BrokerAction::Start { memory } => {
                if memory {
                    eprintln!("memory engine: inexact partition ends; --until-end and exactly-once output need sqlite (the default)");
                }
                let address = broker::start_dev(&root, !memory)?;
                println!("broker running at {address}; stop it with `cargo xtask broker stop`");
            }
            BrokerAction::Stop => broker::stop_dev(&root)?,
            BrokerAction::Status => match broker::dev_status(&root)? {
                Some(address) => println!("broker running at {address}"),
                None => println!("no broker running"),
            },
        },
        Task::Test { cargo_test_args } => test(&root, &cargo_test_args)?,
        Task::Demo { debug } => demo::run(&root, &cargo(), if debug { demo::Profile::Debug } else { demo::Profile::Release })?,
        Task::Bench { events, peer_events, broker_queries } => bench::run(&root, &cargo(), events, peer_events, &broker_queries)?,
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).context("xtask lives inside the workspace")
}

/// Runs a command in `dir`, failing with its name if it fails.
fn run(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test(root: &Path, extra: &[String]) -> anyhow::Result<()> {
    let tansu = broker::install()?;
    let tansu = tansu.to_str().context("the tansu path is not UTF-8")?;
    let cargo = cargo();
    run(root, &cargo, &["fmt", "--all", "--check"], &[])?;
    run(root, &cargo, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    // The integration tests spawn the example binaries; `cargo test --all-targets` builds examples only as test
    // harnesses, so build the real binaries first.
    run(root, &cargo, &["build", "--workspace", "--examples", "--bins"], &[])?;
    // The kill test runs a million records through a 3x2 cluster: with the release binary.
    run(root, &cargo, &["build", "--release", "--example", "enrich_join"], &[])?;
    let mut totals = Totals::default();
    // Tests that cannot run on this machine (e.g. without network namespaces) list themselves here.
    let skipped_file = root.join("target").join("xtask-skipped.txt");
    let _ = std::fs::remove_file(&skipped_file);
    let mut args = vec!["test", "--workspace", "--all-targets"];
    args.extend(extra.iter().map(String::as_str));
    let unit = run_tests(root, &cargo, &args, (tansu, &skipped_file), &mut totals);
    // `--all-targets` skips doctests; they run separately (the README is one of them).
    let mut args = vec!["test", "--workspace", "--doc"];
    args.extend(extra.iter().map(String::as_str));
    let doc = run_tests(root, &cargo, &args, (tansu, &skipped_file), &mut totals);
    let skipped: Vec<String> = std::fs::read_to_string(&skipped_file).unwrap_or_default().lines().map(str::to_owned).collect();
    for line in &skipped {
        println!("skipped (not passed): {line}");
    }
    totals.skip(skipped.len() as u64);
    println!(
        "tests: {} passed, {} failed, {} skipped, {} ignored, {} filtered out; {} doctests compiled only (no_run)",
        totals.passed, totals.failed, totals.skipped, totals.ignored, totals.filtered, totals.compiled
    );
    unit.and(doc)?;
    if !extra.is_empty() {
        return Ok(());
    }
    check_full_run(&totals, MIN_TESTS)?;
    // The demo's own checks (every order accounted for in the output, totals and dead-letter topics), on the
    // debug binaries just built.
    demo::run(root, &cargo, demo::Profile::Debug)?;
    println!("demo: every check passed");
    Ok(())
}

/// A whole run (no filter) must run at least every test the suite held when `minimum` was last raised, and
/// ignore or filter none: a test target that silently stops being built, or tests that stop being found, turn
/// the run red instead of green.
/// A test that cannot run on this machine says so (and is not counted as passed), but still counts as found.
fn check_full_run(totals: &Totals, minimum: u64) -> anyhow::Result<()> {
    let found = totals.passed + totals.skipped + totals.compiled;
    if found < minimum {
        bail!(
            "only {found} tests ran ({} skipped, {} compiled only), but the suite holds at least {minimum}: a test target or tests went missing",
            totals.skipped,
            totals.compiled
        );
    }
    if totals.ignored + totals.filtered > 0 {
        bail!("{} tests were ignored and {} filtered out in a full run", totals.ignored, totals.filtered);
    }
    Ok(())
}

/// How many tests a full `cargo xtask test` runs at least; raise it as tests are added.
const MIN_TESTS: u64 = 204;

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    /// Reported passed by libtest, but the test said it could not run here.
    skipped: u64,
    ignored: u64,
    filtered: u64,
    /// `no_run` doctests: compiled, not run (libtest reports them passed).
    compiled: u64,
    /// Compile-only doctests listed since the last `test result:` line.
    compiling: u64,
}

impl Totals {
    /// Adds what one line of `cargo test`'s output says: a `test result:` line's counts, or a `no_run`
    /// doctest, which libtest counts as passed though it was only compiled.
    fn tally(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            // The compile-only doctests of this result were counted as they were listed.
            self.passed += count(" passed").saturating_sub(std::mem::take(&mut self.compiling));
            self.failed += count(" failed");
            self.ignored += count(" ignored");
            self.filtered += count(" filtered out");
        } else if line.starts_with("test ") && line.ends_with(" - compile ... ok") {
            self.compiled += 1;
            self.compiling += 1;
        }
    }

    fn skip(&mut self, n: u64) {
        let n = n.min(self.passed);
        self.passed -= n;
        self.skipped += n;
    }
}

/// Runs `cargo test`, passing its output through and adding up its `test result:` lines.
fn run_tests(root: &Path, cargo: &str, args: &[&str], (tansu, skipped): (&str, &Path), totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::BufRead;
    eprintln!("xtask: {cargo} {}", args.join(" "));
    let mut child = Command::new(cargo)
        .args(args)
        .env("TRIBUTARY_TANSU", tansu)
        .env("TRIBUTARY_SKIPPED", skipped)
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        println!("{line}");
        totals.tally(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`{cargo} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_run_with_missing_or_skipped_tests_fails() {
        let run = |passed, ignored, filtered| Totals { passed, ignored, filtered, ..Totals::default() };
        assert!(check_full_run(&run(123, 0, 0), 123).is_ok());
        assert!(check_full_run(&run(122, 0, 0), 123).unwrap_err().to_string().contains("went missing"));
        assert!(check_full_run(&run(123, 1, 0), 123).is_err(), "an ignored test");
        assert!(check_full_run(&run(123, 0, 2), 123).is_err(), "filtered tests");
        // A test that cannot run here is reported, not passed, and not missing.
        let mut skipping = run(123, 0, 0);
        skipping.skip(1);
        assert_eq!((skipping.passed, skipping.skipped), (122, 1));
        assert!(check_full_run(&skipping, 123).is_ok());
    }

    #[test]
    fn no_run_doctests_are_counted_as_compiled_not_passed() {
        let mut totals = Totals::default();
        for line in [
            "test connectors/src/error.rs - (line 8) - compile ... ok",
            "test connectors/src/job/mod.rs - job::Job (line 40) ... ok",
            "test connectors/src/kafka/sink/mod.rs - kafka::sink::SinkKafka::sink_kafka (line 411) - compile ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 1.02s",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.5s",
        ] {
            totals.tally(line);
        }
        assert_eq!((totals.passed, totals.compiled, totals.ignored, totals.filtered), (5, 2, 1, 2));
        assert!(check_full_run(&Totals { ignored: 0, filtered: 0, ..totals }, 7).is_ok(), "compiled doctests are found tests");
    }
}
