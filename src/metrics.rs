//! Prometheus metrics, per color: the numbers an operator judges a canary by.

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;

/// The `color` label of requests that no color took (nothing configured).
pub const NO_COLOR: &str = "none";

/// Seconds; from 1 ms (a fast upstream on the same host) to a minute (the default
/// REQUEST_TIMEOUT).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

struct ColorMetrics {
    duration: Histogram,
    /// The same observations as `duration`, per bucket (not cumulative; the last one is above
    /// every bound), which the histogram does not let us read back: the status page's
    /// percentiles ([`crate::history`]).
    latency: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Indexed by status code; filled on first use.
    requests: Box<[OnceLock<Counter>]>,
}

/// What a color has answered since the start: the status page's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColorTotals {
    pub requests: u64,
    /// Answers of 500 and above (colorproxy's own 502/504 for a failed upstream included).
    pub errors: u64,
    /// Requests per [`DURATION_BUCKETS`] bucket, then above the last bound.
    pub latency: Vec<u64>,
    pub live: u64,
    pub ejected: u64,
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
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
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

/// Told of every finished exchange, for the canary guard.
pub trait Outcomes: Send + Sync {
    /// `color`: the index of the color that answered (anything else: none); `status`: what the
    /// client got (499 when it left first); `headers`: the time to response headers.
    fn outcome(&self, color: usize, status: u16, headers: Duration);
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The ramp and guard figures of ramped routes, set by [`crate::delivery`].
pub struct DeliveryMetrics {
    pub share: Family<ColorLabels, FloatGauge>,
    pub step: Family<ColorLabels, Gauge>,
    pub held: Family<ColorLabels, Gauge>,
    pub tripped: Family<ColorLabels, Gauge>,
    pub window_requests: Family<ColorLabels, Gauge>,
    pub window_errors: Family<ColorLabels, Gauge>,
    pub window_p90: Family<ColorLabels, FloatGauge>,
}

impl DeliveryMetrics {
    fn register(registry: &mut Registry, share: Family<ColorLabels, FloatGauge>) -> Self {
        let m = DeliveryMetrics {
            share,
            step: Family::default(),
            held: Family::default(),
            tripped: Family::default(),
            window_requests: Family::default(),
            window_errors: Family::default(),
            window_p90: Family::default(),
        };
        registry.register(
            "ramp_step",
            "The ramp step in force for a ramped color (0 before its start)",
            m.step.clone(),
        );
        registry.register(
            "ramp_held",
            "1 while a ramped color holds its step for want of enough healthy canary requests on it",
            m.held.clone(),
        );
        registry.register(
            "guard_tripped",
            "1 once the guard has tripped for a ramped color: it gets no new traffic until the configuration changes",
            m.tripped.clone(),
        );
        registry.register(
            "guard_window_requests",
            "Requests of each color of a ramped route in the guard's window",
            m.window_requests.clone(),
        );
        registry.register(
            "guard_window_errors",
            "Failures (status 500 and above, upstream failures) of each color of a ramped route in the guard's window",
            m.window_errors.clone(),
        );
        registry.register(
            "guard_window_latency_p90_seconds",
            "p90 time to response headers of each color of a ramped route in the guard's window",
            m.window_p90.clone(),
        );
        m
    }
}

pub struct Metrics {
    registry: Registry,
    outcomes: OnceLock<Arc<dyn Outcomes>>,
    pub delivery: DeliveryMetrics,
    /// Color names in configuration order, interned for labels.
    color_names: Vec<&'static str>,
    /// Per color, the metric handles every request touches, looked up once rather than per
    /// request (a family lookup hashes the labels under a lock).
    per_color: Vec<ColorMetrics>,
    endpoints: Family<EndpointLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<ColorLabels, Histogram>,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    client_errors: Family<KindLabels, Counter>,
    buffer_overflows: Family<DirectionLabels, Counter>,
    buffered: Family<StoreLabels, Gauge>,
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
        let client_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "client_errors",
            "Requests the client broke, by kind (malformed_body, client_gone, body_timeout); never counted against a color or upstream",
            client_errors.clone(),
        );
        let buffer_overflows = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "buffer_overflow",
            "Bodies streamed unbuffered because the process-wide buffer budget was full, by direction (request, response)",
            buffer_overflows.clone(),
        );
        let buffered = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "buffered_bytes",
            "Body bytes held ahead of the slower side, by store (memory: REQUEST_BUFFER and RESPONSE_BUFFER; disk: RESPONSE_SPILL)",
            buffered.clone(),
        );
        let weight = Family::<ColorLabels, Gauge>::default();
        registry.register(
            "backend_weight",
            "Configured weight of each color",
            weight.clone(),
        );
        let share = Family::<ColorLabels, FloatGauge>::default();
        registry.register(
            "backend_share",
            "Share of its route's new requests each color gets now, by weight or ramp step (0 to 1)",
            share.clone(),
        );
        let color_names: Vec<&'static str> =
            config.colors.iter().map(|c| intern(&c.name)).collect();
        for (color, &name) in config.colors.iter().zip(&color_names) {
            let labels = ColorLabels { color: name };
            // A ramped color's weight is not used: its share says it all.
            if color.ramp.is_none() {
                weight.get_or_create(&labels).set(i64::from(color.weight));
            }
            share
                .get_or_create(&labels)
                .set(config.share(color) / 100.0);
        }
        let delivery = DeliveryMetrics::register(&mut registry, share);
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
                latency: std::array::from_fn(|_| AtomicU64::new(0)),
                requests: (0..1000).map(|_| OnceLock::new()).collect(),
            })
            .collect();
        Metrics {
            registry,
            outcomes: OnceLock::new(),
            delivery,
            per_color,
            color_names,
            endpoints,
            requests,
            duration,
            upstream_errors,
            client_errors,
            buffer_overflows,
            buffered,
            connections_open,
            in_flight,
        }
    }

    pub fn client_error(&self, kind: &'static str) {
        self.client_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn buffer_overflow(&self, direction: &'static str) {
        self.buffer_overflows
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    pub fn set_buffered(&self, memory: u64, disk: u64) {
        for (store, n) in [("memory", memory), ("disk", disk)] {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.buffered.get_or_create(&StoreLabels { store }).set(n);
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
        // Prometheus buckets are upper bounds, inclusive.
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        per_color.latency[bucket].fetch_add(1, Ordering::Relaxed);
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

    /// From now on every finished exchange is also told to `outcomes` (once; later calls are
    /// ignored).
    pub fn observe(&self, outcomes: Arc<dyn Outcomes>) {
        let _ = self.outcomes.set(outcomes);
    }

    /// One finished exchange, for the observer set with [`Metrics::observe`].
    pub fn outcome(&self, color: usize, status: u16, headers: Duration) {
        if let Some(o) = self.outcomes.get() {
            o.outcome(color, status, headers);
        }
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

    /// What the color at `color` (configuration order) has answered so far, and its endpoints
    /// as last set by [`Metrics::set_endpoints`].
    pub fn totals(&self, color: usize) -> ColorTotals {
        let (Some(per_color), Some(&name)) =
            (self.per_color.get(color), self.color_names.get(color))
        else {
            return ColorTotals::default();
        };
        let mut t = ColorTotals::default();
        for (code, cell) in per_color.requests.iter().enumerate() {
            if let Some(counter) = cell.get() {
                let n = counter.get();
                t.requests += n;
                if code >= 500 {
                    t.errors += n;
                }
            }
        }
        t.latency = per_color
            .latency
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let gauge = |state| {
            self.endpoints
                .get(&EndpointLabels { color: name, state })
                .map_or(0, |g| g.get().max(0) as u64)
        };
        t.live = gauge("live");
        t.ejected = gauge("ejected");
        t
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_answers_errors_and_latency_buckets_as_the_histogram_does() {
        let config = Config::from_vars([
            ("BLUE", "http://127.0.0.1:1"),
            ("GREEN", "http://127.0.0.1:2"),
        ])
        .unwrap();
        let m = Metrics::new(&config);
        // A bound is inclusive (le="0.001" counts 1 ms), as in the exposition.
        for (status, seconds) in [
            (200, 0.0005),
            (200, 0.001),
            (404, 0.0011),
            (502, 0.3),
            (503, 61.0),
        ] {
            m.record(0, status, seconds);
        }
        m.record(1, 200, 0.002);
        m.record(usize::MAX, 503, 0.002);
        m.set_endpoints(m.color_names()[0], 2, 1);
        let blue = m.totals(0);
        assert_eq!((blue.requests, blue.errors), (5, 2));
        assert_eq!((blue.live, blue.ejected), (2, 1));
        assert_eq!(blue.latency.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(blue.latency[0], 2, "{:?}", blue.latency);
        assert_eq!(blue.latency[1], 1);
        assert_eq!(blue.latency[8], 1, "0.3 s is in the 0.25-0.5 bucket");
        assert_eq!(blue.latency[DURATION_BUCKETS.len()], 1, "above every bound");
        assert_eq!(blue.latency.iter().sum::<u64>(), 5);
        let green = m.totals(1);
        assert_eq!((green.requests, green.errors, green.live), (1, 0, 0));
        assert_eq!(m.totals(7), ColorTotals::default());
        // The same counts as the exposition.
        let text = m.encode();
        assert!(
            text.contains(
                r#"colorproxy_request_duration_seconds_bucket{le="0.001",color="blue"} 2"#
            ),
            "{text}"
        );
    }
}
