//! Prometheus metrics, per color: the numbers an operator judges a canary by.

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use crate::config::Config;

/// The `color` label of requests that no color took (nothing configured).
pub const NO_COLOR: &str = "none";

/// Seconds; from 1 ms (a fast upstream on the same host) to a minute (the default
/// REQUEST_TIMEOUT).
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

struct ColorMetrics {
    duration: Histogram,
    /// Indexed by status code; filled on first use.
    requests: Box<[OnceLock<Counter>]>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub color: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColorLabels {
    pub color: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub color: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub color: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    config_hash: String,
}

pub struct Metrics {
    registry: Registry,
    /// Color names in configuration order, interned for labels.
    color_names: Vec<&'static str>,
    /// Per color, the metric handles every request touches, looked up once rather than per
    /// request (a family lookup hashes the labels under a lock).
    per_color: Vec<ColorMetrics>,
    endpoints: Family<EndpointLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<ColorLabels, Histogram>,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    pub connections_open: Gauge,
    pub in_flight: Gauge,
}

impl Metrics {
    /// Color names are labels on every request; they are interned once here (`&'static str`)
    /// so that counting a request allocates nothing.
    pub fn new(config: &Config) -> Metrics {
        let mut registry = Registry::with_prefix("colorproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by color and status code",
            requests.clone(),
        );
        let duration = Family::<ColorLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request to the end of the response body, by color",
            duration.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream requests that got no response, by color and kind (dns, connect, timeout, reset)",
            upstream_errors.clone(),
        );
        let weight = Family::<ColorLabels, Gauge>::default();
        registry.register(
            "backend_weight",
            "Configured weight of each color",
            weight.clone(),
        );
        let share = Family::<ColorLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "backend_share",
            "Configured share of new requests of each color (0 to 1)",
            share.clone(),
        );
        let color_names: Vec<&'static str> =
            config.colors.iter().map(|c| intern(&c.name)).collect();
        for (color, &name) in config.colors.iter().zip(&color_names) {
            let labels = ColorLabels { color: name };
            weight.get_or_create(&labels).set(i64::from(color.weight));
            share
                .get_or_create(&labels)
                .set(config.share(color) / 100.0);
        }
        let endpoints = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoints",
            "Endpoints of each color by state: live, or ejected after failing",
            endpoints.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections currently open",
            connections_open.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests received and not yet completely answered",
            in_flight.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stdout did not keep up",
            crate::log_writer::dropped_lines(),
        );
        registry.register(
            "build",
            "Version and routing configuration hash of this process",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                config_hash: config.config_hash(),
            }),
        );
        let per_color = color_names
            .iter()
            .map(|&color| ColorMetrics {
                duration: duration.get_or_create(&ColorLabels { color }).clone(),
                requests: (0..1000).map(|_| OnceLock::new()).collect(),
            })
            .collect();
        Metrics {
            registry,
            per_color,
            color_names,
            endpoints,
            requests,
            duration,
            upstream_errors,
            connections_open,
            in_flight,
        }
    }

    /// Counts one answered request of the color at `color` (an index into the configured
    /// colors; anything else counts as no color).
    pub fn record(&self, color: usize, status: u16, seconds: f64) {
        let Some(per_color) = self.per_color.get(color) else {
            let labels = RequestLabels {
                color: NO_COLOR,
                code: status,
            };
            self.requests.get_or_create(&labels).inc();
            self.duration
                .get_or_create(&ColorLabels { color: NO_COLOR })
                .observe(seconds);
            return;
        };
        per_color.duration.observe(seconds);
        let name = self.color_names[color];
        match per_color.requests.get(usize::from(status)) {
            Some(cell) => cell
                .get_or_init(|| {
                    let labels = RequestLabels {
                        color: name,
                        code: status,
                    };
                    self.requests.get_or_create(&labels).clone()
                })
                .inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels {
                    color: name,
                    code: status,
                })
                .inc(),
        };
    }

    pub fn color_names(&self) -> &[&'static str] {
        &self.color_names
    }

    /// Sets the endpoint gauges of a color (they change with time, so they are set per scrape).
    pub fn set_endpoints(&self, color: &'static str, live: usize, ejected: usize) {
        for (state, n) in [("live", live), ("ejected", ejected)] {
            self.endpoints
                .get_or_create(&EndpointLabels { color, state })
                .set(n as i64);
        }
    }

    /// The OpenMetrics text exposition, which Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Gives a color name the `'static` lifetime labels need. Color names are few and live as long
/// as the process, so leaking them costs a few bytes once.
pub fn intern(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}
