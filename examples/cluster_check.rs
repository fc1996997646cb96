//! Checks that every worker of a cluster reaches every other, round after round, until stopped.
//!
//! Each round every worker sends one message to every worker (itself included); the round is complete when
//! timely's progress tracking says every message of it has arrived everywhere. Worker 0 prints
//! `round R: W workers reachable, X ms` per round on stdout. Run it before a real job to check a host file and
//! the network between hosts; stop it with Ctrl-C (SIGINT) or SIGTERM, which it honours by finishing cleanly.
//!
//! On one machine, three processes of two workers:
//!
//! ```sh
//! cargo build --release --example cluster_check --bin tributary
//! target/release/tributary launch --processes 3 --workers 2 -- target/release/examples/cluster_check --rounds 5
//! ```
//!
//! One process only: `cargo run --release --example cluster_check -- --workers 2 --rounds 3`.
//!
//! Across machines: the same binary and host file on every host, process `I` started on its host with
//! `cluster_check --workers 2 --processes 3 --process I --hostfile hosts.txt`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use tributary::timely::dataflow::operators::{Exchange, Input, Inspect, Probe};

/// Checks cluster connectivity round by round.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
    /// Rounds to run; 0 runs until SIGINT/SIGTERM.
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// Time between the starts of two rounds.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (rounds, interval) = (args.rounds, args.interval);
    let results = tributary::execute(&args.cluster, move |worker, ctx| -> anyhow::Result<u64> {
        // Messages received per round (a worker already in the next round may send before this one has
        // checked its count).
        let received: Rc<RefCell<BTreeMap<u64, u64>>> = Rc::default();
        let counter = Rc::clone(&received);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, messages) = scope.new_input::<Vec<(usize, usize)>>();
            let counted = messages.exchange(|(target, _from)| *target as u64).inspect_core(move |event| {
                if let Ok((stamp, messages)) = event
                    && let Some(round) = stamp.least()
                {
                    *counter.borrow_mut().entry(*round).or_default() += messages.len() as u64;
                }
            });
            let (probe, _) = counted.probe();
            (input, probe)
        });
        let mut round = 0u64;
        while (rounds == 0 || round < rounds) && !ctx.shutdown.requested() {
            let started = Instant::now();
            for target in 0..ctx.peers {
                input.send((target, ctx.index));
            }
            input.advance_to(round + 1);
            worker.step_or_park_while(None, || probe.less_than(&(round + 1)));
            let expected = ctx.peers as u64;
            let got = received.borrow_mut().remove(&round).unwrap_or(0);
            anyhow::ensure!(got == expected, "round {round}: received {got} messages, expected {expected}");
            if ctx.index == 0 {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                writeln!(std::io::stdout(), "round {round}: {} workers reachable, {ms:.2} ms", ctx.peers)?;
            }
            round += 1;
            let next = started + interval;
            while Instant::now() < next && !ctx.shutdown.requested() && (rounds == 0 || round < rounds) {
                worker.step_or_park(Some(next.saturating_duration_since(Instant::now())));
            }
        }
        Ok(round)
    })?;
    for result in results {
        result?;
    }
    Ok(())
}
