//! colorproxy: a reverse proxy that splits traffic between versions ("colors") of an app by
//! weight, configured entirely through environment variables so that a rolling
//! `docker service update` is the way to change it.
//!
//! The binary (`main.rs`) only parses arguments; everything it runs lives here so that tests
//! can drive the same code in-process.

pub mod balancer;
pub mod config;
pub mod logging;
pub mod proxy;
pub mod server;
pub mod signal;
pub mod upstream;

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Config;

/// Logs the effective configuration the way `colorproxy check` prints it.
pub fn log_config(config: &Config) {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen,
        connect_timeout = %humantime::format_duration(config.connect_timeout),
        request_timeout = %humantime::format_duration(config.request_timeout),
        drain_timeout = %humantime::format_duration(config.drain_timeout),
        "colorproxy starting"
    );
    if config.colors.is_empty() {
        warn!("no color is configured (set BLUE=http://host:port): every request gets 503");
    }
    for color in &config.colors {
        info!(
            color = %color.name,
            upstream = %color.upstream.url,
            weight = color.weight,
            share = %format!("{:.1}%", config.share(color)),
            "route"
        );
    }
    for warning in &config.warnings {
        warn!("{warning}");
    }
}

/// Binds the listener and serves until a stop signal, then drains.
pub async fn run(config: Config) -> Result<(), String> {
    let mut signals =
        signal::Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener = server::bind(config.listen)
        .map_err(|e| format!("cannot listen on LISTEN={}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    info!("listening on {addr}");
    let proxy = Arc::new(proxy::Proxy::new(&config));
    let shutdown = async move {
        let name = signals.recv().await;
        info!(signal = name, "stop signal received");
    };
    server::serve(listener, proxy, config.drain_timeout, shutdown).await;
    Ok(())
}
