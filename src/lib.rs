//! colorproxy: a reverse proxy that splits traffic between versions ("colors") of an app by
//! weight, configured entirely through environment variables so that a rolling
//! `docker service update` is the way to change it.
//!
//! The binary (`main.rs`) only parses arguments; everything it runs lives here so that tests
//! can drive the same code in-process.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod exchange;
pub mod logging;
pub mod metrics;
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
        config_hash = %config.config_hash(),
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

/// Binds the listeners and serves until a stop signal, then drains.
pub async fn run(config: Config) -> Result<(), String> {
    let mut signals =
        signal::Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Both listeners are bound before either serves: a port conflict fails the start, which
    // is what lets Swarm roll a bad update back.
    let listener = server::bind(config.listen)
        .map_err(|e| format!("cannot listen on LISTEN={}: {e}", config.listen))?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(
            server::bind(addr).map_err(|e| format!("cannot listen on ADMIN_LISTEN={addr}: {e}"))?,
        ),
        None => None,
    };

    let metrics = Arc::new(metrics::Metrics::new(&config));
    let admin_state = Arc::new(admin::AdminState::new(metrics.clone(), &config.view()));
    let addr = local_addr(&listener)?;
    info!("listening on {addr}");
    if let Some(admin_listener) = admin_listener {
        info!("admin endpoints on {}", local_addr(&admin_listener)?);
        tokio::spawn(admin::serve(admin_listener, admin_state.clone()));
    }
    let proxy = Arc::new(proxy::Proxy::new(&config, metrics));
    let shutdown = async move {
        let name = signals.recv().await;
        admin_state.start_draining();
        info!(signal = name, "stop signal received");
    };
    server::serve(listener, proxy, config.drain_timeout, shutdown).await;
    Ok(())
}

fn local_addr(listener: &tokio::net::TcpListener) -> Result<std::net::SocketAddr, String> {
    listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))
}
