//! Operator-facing logs: `tracing` to stderr, level from `RUST_LOG` (default `info`).
//!
//! Lines from worker threads carry a `worker{process=P worker=W}` span and lines from the supervising thread a
//! `process{process=P}` span, so interleaved logs of a cluster stay attributable.

/// Installs the default subscriber unless the program installed one already.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A closed stderr (e.g. `| head`) must not turn every log line into a panic: tracing-subscriber would
    // report its write errors with `eprintln!`, which panics then.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| AboveProgress)
        .log_internal_errors(false)
        .try_init();
}

/// Stderr, with the progress line (if one is drawn) cleared for each log line and redrawn below it.
struct AboveProgress;

impl std::io::Write for AboveProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspend(|| std::io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        crate::progress::suspend(|| std::io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
