//! Everything the user sees: logs (text or JSON), progress bars, sizes.
//!
//! Logs go to stderr in every format (text, or JSON lines for CronJobs), so
//! stdout carries only the command's result: text, or with `--json` (and
//! with JSON logs) one JSON line.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat, verbosity: u8, quiet: bool) {
    // JSON logs are the CronJob's record, so they carry info events by
    // default; on a terminal the command's own summary is enough.
    let default = match (quiet, verbosity, format) {
        (true, _, _) => "error",
        (false, 0, LogFormat::Json) => "info",
        (false, 0, LogFormat::Text) => "warn",
        (false, 1, _) => "info",
        (false, _, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| default.into());
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .init(),
    }
}

/// Whether to draw progress bars: a terminal, text logs, not quiet.
pub fn progress_enabled(format: LogFormat, quiet: bool, no_progress: bool) -> bool {
    format == LogFormat::Text && !quiet && !no_progress && std::io::stderr().is_terminal()
}

/// Human-readable byte count (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", UNITS[u]) }
}

/// A progress bar refreshed from a closure until dropped.
pub struct Ticker {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Ticker {
    /// A bar showing whatever the running job's adapter counts.
    pub fn job(enabled: bool, label: &'static str, progress: Arc<cairn_source::Progress>) -> Ticker {
        Ticker::start(enabled, label, move || match progress.read() {
            Some(r) => (r.bytes_done, r.bytes_total, r.detail),
            None => (0, 0, String::new()),
        })
    }

    /// `poll` returns (done, total); total 0 means unknown (spinner).
    pub fn start(
        enabled: bool,
        label: &'static str,
        poll: impl Fn() -> (u64, u64, String) + Send + 'static,
    ) -> Ticker {
        let bar = if enabled { ProgressBar::new(0) } else { ProgressBar::hidden() };
        let stop = Arc::new(AtomicBool::new(false));
        let handle = enabled.then(|| {
            let bar = bar.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let known = ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("template");
                let unknown = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec} {msg}")
                    .expect("template");
                bar.set_prefix(label);
                while !stop.load(Ordering::Relaxed) {
                    let (done, total, msg) = poll();
                    if total > 0 {
                        bar.set_style(known.clone());
                        bar.set_length(total);
                    } else {
                        bar.set_style(unknown.clone());
                    }
                    bar.set_position(done);
                    bar.set_message(msg);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Ticker { bar, stop, handle }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.abort();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_formatting() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.50 KiB");
        assert_eq!(super::bytes(3 << 30), "3.00 GiB");
    }
}
