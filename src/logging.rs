//! Log output: human-readable text or one JSON object per line, filtered by RUST_LOG.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Logs go to stdout, where `docker service logs` reads them,
/// through a writer thread: a request never waits for a `write` to stdout, and lines written
/// close together leave in one. Nothing is dropped (a full buffer makes logging wait instead).
/// Keep the guard until exit: dropping it flushes what is left.
pub fn init(config: &Config) -> WorkerGuard {
    // config validated the filter already; fall back to info rather than fail twice.
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("colorproxy-log")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
