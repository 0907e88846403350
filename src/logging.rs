//! Log output: human-readable text or one JSON object per line, filtered by RUST_LOG, written
//! to stdout through [`crate::log_writer`] so that a stalled log consumer never stops serving.
//! Access lines take their own, cheaper path to the same writer ([`crate::access_log`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::access_log::{self, Style};
use crate::config::{Config, LogFormat};
use crate::log_writer::{CAPACITY, FlushGuard, LogWriter};

/// Installs the global subscriber. Logs go to stdout, where `docker service logs` reads them.
/// Keep the guard until exit: dropping it writes out what is still queued.
pub fn init(config: &Config) -> Option<FlushGuard> {
    // config validated the filter already; fall back to info rather than fail twice.
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let on_dropped = Box::new(|dropped: u64| {
        tracing::warn!(
            dropped,
            "log lines were dropped: stdout did not keep up (colorproxy_log_lines_dropped_total)"
        );
    });
    let (writer, guard) = match LogWriter::spawn(std::io::stdout(), CAPACITY, on_dropped) {
        Ok((writer, guard)) => (writer, Some(guard)),
        Err(e) => {
            // Without a thread there is no queue: log lines go nowhere rather than block.
            eprintln!("colorproxy: cannot start the log writer thread: {e}");
            return None;
        }
    };
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(ansi);
    let style = match config.log_format {
        LogFormat::Text => {
            builder.init();
            Style::Text { ansi }
        }
        LogFormat::Json => {
            builder.json().flatten_event(true).init();
            Style::Json
        }
    };
    access_log::install(writer, style);
    guard
}
