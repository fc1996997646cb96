//! A progress line on stderr for long runs: records read and their rate, lag, the watermark and how far it is
//! behind the wall clock, dead letters.
//!
//! [`execute`](crate::execute) draws it (with indicatif) while the workers run, when stderr is a terminal and
//! `--quiet` was not given; a program whose stderr goes to a file or a pipe (a service, `tributary launch`'s
//! children, CI) never gets it: use the metrics endpoint there (docs/metrics.md). Log lines are printed above the
//! line, not through it.
//!
//! What the line shows comes from [`report`]ers: the connectors register one per source (its partitions'
//! counters). Without any, the line shows the time running.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What one reporter says at one moment; [`report`]ers' statuses are summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Records read so far.
    pub records: u64,
    /// Records not read yet where that is known (Kafka: end offset - position).
    pub lag: Option<u64>,
    /// The lowest event-time watermark (ms since the Unix epoch), if any partition has one.
    pub watermark: Option<u64>,
    /// Records sent to the dead letters so far.
    pub dead_letters: u64,
}

impl Status {
    /// The sum of two statuses: counts and lags add, the watermark is the lower one.
    fn add(self, other: Status) -> Status {
        Status {
            records: self.records.saturating_add(other.records),
            lag: match (self.lag, other.lag) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                (a, b) => a.or(b),
            },
            watermark: match (self.watermark, other.watermark) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            dead_letters: self.dead_letters.saturating_add(other.dead_letters),
        }
    }
}

type Reporter = Box<dyn Fn() -> Status + Send + Sync>;

fn reporters() -> &'static Mutex<Vec<Reporter>> {
    static REPORTERS: OnceLock<Mutex<Vec<Reporter>>> = OnceLock::new();
    REPORTERS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds `status` to what the progress line shows (called on every redraw, about once a second).
pub fn report(status: impl Fn() -> Status + Send + Sync + 'static) {
    reporters().lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(status));
}

/// The sum of every reporter's status now.
pub fn status() -> Status {
    reporters().lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r()).fold(Status::default(), Status::add)
}

/// The line being drawn, for the log writer to print above it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `write` with the progress line (if one is drawn) cleared and redrawn after it, so a log line is printed
/// above the line.
pub(crate) fn suspend<R>(write: impl FnOnce() -> R) -> R {
    let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// Draws the line until dropped.
pub(crate) struct Progress {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(bar) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// Starts the line if stderr is a terminal and `quiet` is not set.
pub(crate) fn start(quiet: bool) -> Option<Progress> {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tributary:progress".into())
        .spawn(move || {
            let mut rate = Rate::default();
            loop {
                let status = status();
                bar.set_message(line(&status, rate.update(status.records, Instant::now()), wall_ms()));
                bar.tick();
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
        })
        .ok();
    let Some(thread) = thread else {
        tracing::debug!("cannot start the progress thread; going on without the progress line");
        BAR.lock().unwrap_or_else(|e| e.into_inner()).take();
        return None;
    };
    Some(Progress { stop: Some(stop), thread: Some(thread) })
}

/// Records per second over the last few seconds.
#[derive(Default)]
struct Rate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Rate {
    fn update(&mut self, records: u64, now: Instant) -> Option<f64> {
        self.samples.push_back((now, records));
        while self.samples.len() > 5 {
            self.samples.pop_front();
        }
        let &(then, before) = self.samples.front()?;
        let seconds = now.saturating_duration_since(then).as_secs_f64();
        (seconds > 0.0).then(|| records.saturating_sub(before) as f64 / seconds)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The line's text: `records 1.2M (310K/s) · lag 5.0K · watermark 2026-12-02T10:00:00Z (1.2s behind) · dead letters 3`.
fn line(status: &Status, per_second: Option<f64>, now_ms: u64) -> String {
    let mut parts = vec![match per_second {
        Some(rate) => format!("records {} ({}/s)", count(status.records as f64), count(rate)),
        None => format!("records {}", count(status.records as f64)),
    }];
    if let Some(lag) = status.lag {
        parts.push(format!("lag {}", count(lag as f64)));
    }
    if let Some(watermark) = status.watermark.filter(|&w| w > 0) {
        // Event times that look like wall-clock times are shown as dates with their delay; others as numbers.
        let plausible = (946_684_800_000..=4_102_444_800_000).contains(&watermark);
        if plausible {
            let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(watermark));
            let behind = Duration::from_millis(now_ms.saturating_sub(watermark) / 100 * 100);
            parts.push(format!("watermark {date} ({} behind)", humantime::format_duration(behind)));
        } else {
            parts.push(format!("watermark {watermark}"));
        }
    }
    if status.dead_letters > 0 {
        parts.push(format!("dead letters {}", count(status.dead_letters as f64)));
    }
    parts.join(" · ")
}

/// `1234567.0` as `1.2M`.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_counts_rate_lag_watermark_and_dead_letters() {
        let status = Status { records: 1_234_567, lag: Some(5_000), watermark: Some(1_764_669_600_000), dead_letters: 3 };
        let now = 1_764_669_601_250;
        assert_eq!(
            line(&status, Some(310_000.0), now),
            "records 1.2M (310.0K/s) · lag 5.0K · watermark 2025-12-02T10:00:00Z (1s 200ms behind) · dead letters 3"
        );
        let small = Status { records: 12, lag: None, watermark: Some(9_000), dead_letters: 0 };
        assert_eq!(line(&small, None, now), "records 12 · watermark 9000");
    }

    #[test]
    fn statuses_add_up_with_the_lowest_watermark() {
        let a = Status { records: 2, lag: Some(1), watermark: Some(50), dead_letters: 1 };
        let b = Status { records: 3, lag: None, watermark: Some(40), dead_letters: 0 };
        assert_eq!(a.add(b), Status { records: 5, lag: Some(1), watermark: Some(40), dead_letters: 1 });
    }

    #[test]
    fn the_rate_is_over_the_samples_kept() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        assert_eq!(rate.update(0, t0), None);
        assert_eq!(rate.update(1000, t0 + Duration::from_secs(1)), Some(1000.0));
        assert_eq!(rate.update(3000, t0 + Duration::from_secs(2)), Some(1500.0));
    }
}
