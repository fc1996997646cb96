//! Counts the words in text files and prints `word count` lines, sorted by word, once the input is done.
//!
//! A word is a maximal run of alphanumeric characters, lower-cased. Lines are shared among all workers of all
//! processes by line number, the counts are kept by differential's `count`, and worker 0 prints the result, so
//! the output is byte-identical however the job is laid out.
//!
//! One process, one worker:
//!
//! ```sh
//! cargo run --release --example word_count -- --input README.md
//! ```
//!
//! One process, four workers (`-w` works too):
//!
//! ```sh
//! cargo run --release --example word_count -- --workers 4 --input README.md
//! ```
//!
//! Two processes of two workers on this machine, through the launcher:
//!
//! ```sh
//! cargo build --release --example word_count --bin tributary
//! target/release/tributary launch --processes 2 --workers 2 -- target/release/examples/word_count --input README.md
//! ```
//!
//! Across machines: copy the binary, the input and a host file (one `host:port` per process) to every host and
//! start process `I` on its host with
//! `word_count --input README.md --workers 2 --processes 2 --process I --hostfile hosts.txt`.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context;
use clap::Parser;
use tributary::differential_dataflow::input::Input;
use tributary::timely::dataflow::operators::{Exchange, Inspect, Probe};

/// Counts words in text files.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cluster: tributary::ClusterArgs,
    /// Text files to read; give the flag once per file, or several files after it.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
}

/// Splits a line into lower-cased words.
fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Open every file before the cluster starts, so a bad path fails every process the same way, at once.
    for path in &args.input {
        std::fs::File::open(path).with_context(|| format!("cannot open input file {}", path.display()))?;
    }
    let inputs = args.input.clone();
    let results = tributary::execute(&args.cluster, move |worker, ctx| -> anyhow::Result<Vec<(String, isize)>> {
        let collected = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&collected);
        let (mut lines, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (handle, lines) = scope.new_collection::<String, isize>();
            let counts = lines.flat_map(|line| words(&line).collect::<Vec<_>>()).count();
            let (probe, _) = counts
                .inner
                .exchange(|_| 0)
                .inspect(move |((word, count), _time, diff)| sink.borrow_mut().push((word.clone(), *count, *diff)))
                .probe();
            (handle, probe)
        });
        let mut result = Ok(());
        let mut number = 0usize;
        for path in &inputs {
            result = for_each_line(path, |line| {
                if number % ctx.peers == ctx.index {
                    lines.insert(line.to_owned());
                }
                number += 1;
            });
            if result.is_err() {
                break;
            }
        }
        lines.close();
        worker.step_while(|| !probe.done());
        result?;
        // Consolidate the changelog into final counts.
        let mut counts: std::collections::BTreeMap<String, isize> = std::collections::BTreeMap::new();
        for (word, count, diff) in collected.borrow_mut().drain(..) {
            *counts.entry(word).or_default() += count * diff;
        }
        Ok(counts.into_iter().filter(|(_, c)| *c != 0).collect())
    })?;
    let mut out = std::io::stdout().lock();
    for result in results {
        for (word, count) in result? {
            writeln!(out, "{word} {count}")?;
        }
    }
    Ok(())
}

fn for_each_line(path: &Path, mut f: impl FnMut(&str)) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open input file {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        f(line.trim_end_matches(['\n', '\r']));
    }
}
