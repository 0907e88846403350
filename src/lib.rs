//! colorproxy: a reverse proxy that splits traffic between versions ("colors") of an app by
//! weight, configured entirely through environment variables so that a rolling
//! `docker service update` is the way to change it.
//!
//! The binary (`main.rs`) only parses arguments; everything it runs lives here so that tests
//! can drive the same code in-process.

pub mod access_log;
pub mod activity;
pub mod admin;
pub mod balancer;
pub mod blame;
pub mod budget;
pub mod buffering;
pub mod client_socket;
pub mod clock;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod discovery;
pub mod endpoints;
pub mod exchange;
pub mod fd_limit;
pub mod guard;
pub mod history;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod proxy;
pub mod ramp;
pub mod request_checks;
pub mod server;
pub mod signal;
pub mod spill;
pub mod status;
pub mod typos;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;

/// How long startup waits for the peers' first answers (PEERS).
const FIRST_PEER_POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long startup waits for the first DNS answers.
const INITIAL_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Logs the effective configuration the way `colorproxy check` prints it.
pub fn log_config(config: &Config) {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen,
        connect_timeout = %humantime::format_duration(config.connect_timeout),
        request_timeout = %humantime::format_duration(config.request_timeout),
        drain_timeout = %humantime::format_duration(config.drain_timeout),
        config_hash = %config.config_hash(),
        sticky = %config.sticky.describe(),
        override_header = config.override_header.as_deref().unwrap_or("off"),
        "colorproxy starting"
    );
    if config.colors.is_empty() {
        warn!("no color is configured (set BLUE=http://host:port): every request gets 503");
    }
    for color in &config.colors {
        info!(
            route = %color.prefix,
            color = %color.name,
            upstream = %color.upstream.url,
            discovery = color.discovery.as_str(),
            weight = color.weight,
            ramped = color.ramp.is_some(),
            share = %format!("{:.1}%", config.share(color)),
            "route"
        );
    }
    let now = std::time::SystemTime::now();
    for color in &config.colors {
        let Some(ramp) = &color.ramp else { continue };
        let step = ramp.step_at(now);
        info!(
            route = %color.prefix,
            color = %color.name,
            ramp = %ramp.describe(),
            step = %format!("{step}/{}", ramp.steps.len()),
            share = %format!("{}%", ramp.step_share(step)),
            next_step_at = %ramp.next_start(step).map_or("none (last step)".into(), ramp::format_time),
            guard = %config.guard.describe(),
            "ramp: {} starts at {}% of {}",
            color.name,
            ramp.step_share(step),
            color.prefix
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

    let resolver = resolver(&config)?;
    let metrics = Arc::new(metrics::Metrics::new(&config));
    let proxy = Arc::new(proxy::Proxy::new(&config, metrics, resolver.clone()));
    discover(&proxy, &resolver, config.dns_refresh).await;
    tokio::spawn(expire_idle_connections(proxy.clone()));
    let delivery = proxy.delivery().clone();
    if !delivery.is_empty() {
        tokio::spawn(delivery::run(delivery.clone()));
    }

    // The admin port here is the one bound; peers listen on the configured one.
    let peers = match (&config.guard.peers, config.admin_listen) {
        (Some((host, port)), Some(admin)) => Some((host.clone(), port.unwrap_or(admin.port()))),
        _ => None,
    };
    let roster = Arc::new(peers::Roster::default());
    let status = Arc::new(status::Status::new(peers.as_ref().map(|(host, port)| {
        status::PeerList {
            name: format!("{host}:{port}"),
            roster: roster.clone(),
        }
    })));
    let admin_state = Arc::new(admin::AdminState::new(
        proxy.clone(),
        &config.view(),
        status.clone(),
    ));
    let addr = local_addr(&listener)?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(workers, "listening on {addr}");
    if let Some(admin_listener) = admin_listener {
        info!("admin endpoints on {}", local_addr(&admin_listener)?);
        tokio::spawn(status::run(status, proxy.clone()));
        tokio::spawn(admin::serve(admin_listener, admin_state.clone()));
    }
    // Without a ramp there is no trip to learn, but the status page still shows whether the
    // replicas run the same configuration.
    if let Some((host, port)) = peers {
        if !delivery.is_empty() {
            let first = peers::poll(&delivery, &roster, &resolver, &host, port, false);
            if tokio::time::timeout(FIRST_PEER_POLL_TIMEOUT, first)
                .await
                .is_err()
            {
                warn!("PEERS are slow to answer: serving before knowing of their trips");
            }
        }
        tokio::spawn(peers::run(delivery, roster, resolver.clone(), host, port));
    }
    let shutdown = async move {
        let name = signals.recv().await;
        admin_state.start_draining();
        info!(signal = name, "stop signal received");
    };
    server::serve(listener, proxy, config.drain_timeout, shutdown).await;
    Ok(())
}

/// The DNS resolver; without a readable system configuration, only a process whose upstreams
/// are all IP addresses may start.
fn resolver(config: &Config) -> Result<discovery::Resolver, String> {
    match discovery::Resolver::new(config.resolver) {
        Ok(r) => Ok(r),
        Err(e)
            if config.guard.peers.is_none() && config.colors.iter().all(|c| c.upstream.is_ip()) =>
        {
            warn!("{e}; no upstream needs DNS");
            Ok(discovery::Resolver::none())
        }
        Err(e) => Err(e),
    }
}

/// Resolves every color that needs it before serving (bounded, so a DNS outage does not stop
/// the start), then keeps refreshing in the background.
async fn discover(proxy: &proxy::Proxy, resolver: &discovery::Resolver, interval: Duration) {
    let mut first_rounds = Vec::new();
    for watch in proxy.watches() {
        let (done, first) = tokio::sync::oneshot::channel();
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let ok = watch.refresh(&resolver, false).await;
            let _ = done.send(());
            watch.run(resolver, interval, !ok).await;
        });
        first_rounds.push(first);
    }
    let all = async {
        for first in first_rounds {
            let _ = first.await;
        }
    };
    if tokio::time::timeout(INITIAL_DISCOVERY_TIMEOUT, all)
        .await
        .is_err()
    {
        warn!("DNS is slow: serving before every color has endpoints");
    }
}

/// Idle upstream connections live between IDLE_TIMEOUT and 1.2 × IDLE_TIMEOUT.
async fn expire_idle_connections(proxy: Arc<proxy::Proxy>) {
    let mut ticks = tokio::time::interval(pool::IDLE_TIMEOUT / 5);
    loop {
        ticks.tick().await;
        proxy.expire_idle_connections();
    }
}

fn local_addr(listener: &tokio::net::TcpListener) -> Result<std::net::SocketAddr, String> {
    listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))
}
