//! Progressive delivery at run time: the share each ramped color gets now. It follows the
//! color's schedule ([`crate::ramp`]), is held back while this replica has not seen enough
//! healthy canary requests on the current step, and drops to 0 for good (until a new
//! configuration) when the guard ([`crate::guard`]) trips, here or on a peer. It owns the
//! balancers of ramped routes, which the proxy reads for every request.
//!
//! Times are passed in (wall clock for the schedule, milliseconds of a monotonic clock for the
//! guard's window), so every rule is tested without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::balancer::{Balancer, Shared, ramped_weights};
use crate::config::{BUCKETS, Config};
use crate::guard::{self, Figures, Trip, Window};
use crate::metrics::{ColorLabels, DeliveryMetrics, Outcomes};
use crate::ramp::{Ramp, format_time};

/// Steps start on time to within a few milliseconds; this is how often the window and the
/// holds are looked at in between.
pub const TICK: Duration = Duration::from_secs(1);

pub struct Delivery {
    config_hash: String,
    settings: guard::Settings,
    routes: Vec<Ramped>,
    /// Per configured color: its ramped route, and its position in that route's window (0 for
    /// the ramped color itself).
    by_color: Vec<Option<(usize, usize)>>,
    epoch: Instant,
}

/// A route with a ramped color.
struct Ramped {
    prefix: String,
    ramp: Ramp,
    /// Color names in window order: the ramped color first, then the stable ones.
    names: Vec<&'static str>,
    /// Configured weights in route order, and the ramped color's position there.
    weights: Vec<u32>,
    position: usize,
    balancer: Arc<Shared>,
    tripped: AtomicBool,
    state: Mutex<State>,
}

struct State {
    window: Window,
    /// Canary failures in a row.
    consecutive: u32,
    /// The step in force on this replica (0 before START).
    step: usize,
    /// Healthy canary requests seen on `step`.
    evidence: u64,
    /// Whether `step` is behind the schedule for want of evidence.
    held: bool,
    trip: Option<Trip>,
    /// The stable colors' last figures with enough requests to compare: what the canary is
    /// judged against once they get too little traffic (a last step at 100%).
    baseline: Option<Figures>,
}

impl State {
    /// The stable figures to judge the canary against.
    fn stable(&mut self, min_requests: u64) -> Figures {
        let now = self.window.stable();
        if now.requests >= min_requests {
            self.baseline = Some(now);
        }
        match self.baseline {
            Some(b) if now.requests < min_requests => b,
            _ => now,
        }
    }
}

impl Ramped {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn canary(&self) -> &'static str {
        self.names[0]
    }

    /// The ramped color's share in percent with `step` in force.
    fn share(&self, step: usize) -> u32 {
        if self.tripped.load(Ordering::SeqCst) {
            0
        } else {
            self.ramp.step_share(step)
        }
    }

    fn apply(&self, step: usize) {
        let share = self.share(step) * (BUCKETS / 100);
        self.balancer.set(Balancer::new(ramped_weights(
            &self.weights,
            self.position,
            share,
        )));
    }

    /// Each color's share of the route in percent, window order.
    fn shares(&self, step: usize) -> Vec<f64> {
        let canary = f64::from(self.share(step));
        let total: u32 = (0..self.weights.len())
            .filter(|&i| i != self.position)
            .map(|i| self.weights[i])
            .sum();
        let mut out = vec![canary];
        for (i, &w) in self.weights.iter().enumerate() {
            if i != self.position {
                out.push((100.0 - canary) * f64::from(w) / f64::from(total.max(1)));
            }
        }
        out
    }
}

impl Delivery {
    /// `names`: the configured colors' interned names, in configuration order. A process that
    /// starts mid-ramp starts at the step the schedule is at, like the replicas already running.
    pub fn new(config: &Config, names: &[&'static str], now: SystemTime) -> Delivery {
        let mut routes = Vec::new();
        let mut by_color = vec![None; config.colors.len()];
        for (prefix, group) in config.routes() {
            let Some(position) = group.iter().position(|&i| config.colors[i].ramp.is_some()) else {
                continue;
            };
            let canary = group[position];
            let ramp = config.colors[canary].ramp.clone().expect("a ramped color");
            let r = routes.len();
            let mut window_order = vec![canary];
            window_order.extend(group.iter().copied().filter(|&i| i != canary));
            for (k, &i) in window_order.iter().enumerate() {
                by_color[i] = Some((r, k));
            }
            let weights: Vec<u32> = group.iter().map(|&i| config.colors[i].weight).collect();
            let step = ramp.step_at(now);
            let ramped = Ramped {
                prefix: prefix.to_string(),
                names: window_order.iter().map(|&i| names[i]).collect(),
                weights,
                position,
                balancer: Arc::new(Shared::new(Balancer::new([]))),
                tripped: AtomicBool::new(false),
                state: Mutex::new(State {
                    window: Window::new(config.guard.window, group.len()),
                    consecutive: 0,
                    step,
                    evidence: 0,
                    held: false,
                    trip: None,
                    baseline: None,
                }),
                ramp,
            };
            ramped.apply(step);
            routes.push(ramped);
        }
        Delivery {
            config_hash: config.config_hash(),
            settings: config.guard.clone(),
            routes,
            by_color,
            epoch: Instant::now(),
        }
    }

    /// Whether no route is ramped.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The balancer of the ramped route at `prefix`.
    pub fn balancer(&self, prefix: &str) -> Option<Arc<Shared>> {
        self.routes
            .iter()
            .find(|r| r.prefix == prefix)
            .map(|r| r.balancer.clone())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One finished exchange of color `color`. Client-caused outcomes (4xx, and 499 for a
    /// client that left) are not failures; 499s are not counted at all, since their time is
    /// the client's. Failures are answers of 500 and above, which include colorproxy's own
    /// 502/504 for an upstream that failed.
    ///
    /// `clock` gives the wall time and the window's milliseconds. It is asked only for a
    /// color on a ramped route: the other colors, most of them, read no clock per request.
    pub fn record_at(
        &self,
        color: usize,
        status: u16,
        headers: Duration,
        clock: impl FnOnce() -> (SystemTime, u64),
    ) {
        let Some(&Some((r, k))) = self.by_color.get(color) else {
            return;
        };
        if status == 499 {
            return;
        }
        let (now, now_ms) = clock();
        let route = &self.routes[r];
        let failed = status >= 500;
        let mut st = route.state();
        st.window.record(now_ms, k, failed, headers);
        if k != 0 || !self.settings.enabled || route.tripped.load(Ordering::SeqCst) {
            return;
        }
        if failed {
            st.consecutive += 1;
            if st.consecutive >= self.settings.consecutive_errors {
                let (canary, stable) = (st.window.figures(0), st.window.stable());
                let trip = Trip {
                    rule: "consecutive errors",
                    reason: format!(
                        "{} failures in a row (the last answered {status})",
                        st.consecutive
                    ),
                    canary,
                    stable,
                    peer: None,
                };
                self.trip(route, &mut st, trip);
                return;
            }
        } else {
            st.consecutive = 0;
            st.evidence += 1;
        }
        let stable = st.stable(self.settings.min_requests);
        if let Some(trip) = guard::judge(&self.settings, st.window.figures(0), stable) {
            self.trip(route, &mut st, trip);
            return;
        }
        if st.held && st.evidence >= self.settings.min_requests {
            self.advance(route, &mut st, now);
        }
    }

    /// Moves every ramp to the step in force at `now` (as far as the evidence allows), and
    /// judges each guard's window as it slides.
    pub fn tick_at(&self, now: SystemTime, now_ms: u64) {
        for route in &self.routes {
            let mut st = route.state();
            st.window.advance(now_ms);
            let stable = st.stable(self.settings.min_requests);
            if self.settings.enabled
                && !route.tripped.load(Ordering::SeqCst)
                && let Some(trip) = guard::judge(&self.settings, st.window.figures(0), stable)
            {
                self.trip(route, &mut st, trip);
            }
            self.advance(route, &mut st, now);
        }
    }

    pub fn tick(&self) {
        self.tick_at(SystemTime::now(), self.now_ms());
    }

    /// When the next step of any ramp begins after `now`, if one is still to come.
    pub fn next_step_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.routes
            .iter()
            .filter(|r| !r.tripped.load(Ordering::SeqCst))
            .filter_map(|r| r.ramp.next_start(r.state().step))
            .filter(|&t| t > now)
            .min()
    }

    /// The step the schedule says, unless this replica lacks evidence for a step it would
    /// leave: each step needs `min_requests` healthy canary requests before the next.
    fn advance(&self, route: &Ramped, st: &mut State, now: SystemTime) {
        if route.tripped.load(Ordering::SeqCst) {
            return;
        }
        let target = route.ramp.step_at(now);
        let before = st.step;
        while st.step < target {
            if self.settings.enabled && st.step > 0 && st.evidence < self.settings.min_requests {
                break;
            }
            st.step += 1;
            st.evidence = 0;
        }
        let held = st.step < target;
        if st.step != before {
            route.apply(st.step);
            info!(
                color = route.canary(),
                route = %route.prefix,
                step = %format!("{}/{}", st.step, route.ramp.steps.len()),
                share = %format!("{}%", route.share(st.step)),
                next_step_at = %route.ramp.next_start(st.step).map_or("none (last step)".into(), format_time),
                "ramp step: {} now gets {}% of {}",
                route.canary(),
                route.share(st.step),
                route.prefix
            );
        }
        if held && !st.held {
            warn!(
                color = route.canary(),
                route = %route.prefix,
                step = st.step,
                healthy_canary_requests = st.evidence,
                needed = self.settings.min_requests,
                "ramp held: {} stays at {}% until this replica has seen {} healthy canary requests on the step",
                route.canary(),
                route.share(st.step),
                self.settings.min_requests
            );
        }
        st.held = held;
    }

    fn trip(&self, route: &Ramped, st: &mut State, trip: Trip) {
        if route.tripped.swap(true, Ordering::SeqCst) {
            return;
        }
        route.apply(st.step);
        st.held = false;
        let ms = |f: &Figures| f.p90.map_or(-1.0, round_ms);
        error!(
            color = route.canary(),
            route = %route.prefix,
            rule = trip.rule,
            reason = %trip.reason,
            peer = trip.peer.as_deref().unwrap_or("-"),
            step = st.step,
            canary_requests = trip.canary.requests,
            canary_errors = trip.canary.errors,
            canary_p90_ms = ms(&trip.canary),
            stable_requests = trip.stable.requests,
            stable_errors = trip.stable.errors,
            stable_p90_ms = ms(&trip.stable),
            config_hash = %self.config_hash,
            "guard tripped: {} gets no new traffic until the configuration changes",
            route.canary()
        );
        st.trip = Some(trip);
    }

    /// A peer with the same configuration tripped `color`'s guard: so does this replica.
    pub fn trip_from_peer(&self, color: &str, reason: &str, peer: &str) {
        let Some(route) = self.routes.iter().find(|r| r.canary() == color) else {
            return;
        };
        if route.tripped.load(Ordering::SeqCst) {
            return;
        }
        let mut st = route.state();
        let trip = Trip {
            rule: "peer",
            reason: reason.to_string(),
            canary: st.window.figures(0),
            stable: st.window.stable(),
            peer: Some(peer.to_string()),
        };
        self.trip(route, &mut st, trip);
    }

    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    /// What peers ask for: the configuration hash and the tripped colors.
    pub fn peer_view(&self) -> Value {
        let tripped: Vec<Value> = self
            .routes
            .iter()
            .filter_map(|r| {
                let st = r.state();
                st.trip
                    .as_ref()
                    .map(|t| json!({ "color": r.canary(), "reason": t.reason }))
            })
            .collect();
        json!({ "config_hash": self.config_hash, "tripped": tripped })
    }

    /// Brings `/config` (the document [`Config::view`] made at startup) up to date: the
    /// shares in force, and each ramp's step, hold and guard.
    pub fn patch_view(&self, view: &mut Value, now: SystemTime) {
        let Some(routes) = view.get_mut("routes").and_then(Value::as_array_mut) else {
            return;
        };
        for route in &self.routes {
            let st = route.state();
            let shares = route.shares(st.step);
            let Some(colors) = routes
                .iter_mut()
                .find(|r| r["prefix"] == route.prefix.as_str())
                .and_then(|r| r.get_mut("colors"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in colors.iter_mut() {
                let Some(k) = route.names.iter().position(|n| c["name"] == *n) else {
                    continue;
                };
                c["share"] = json!((shares[k] * 10.0).round() / 10.0);
                if k == 0 {
                    c["ramp"]["step"] = json!(st.step);
                    c["ramp"]["scheduled_step"] = json!(route.ramp.step_at(now));
                    c["ramp"]["held"] = json!(st.held);
                    c["ramp"]["healthy_requests_on_step"] = json!(st.evidence);
                    c["ramp"]["next_step_at"] = json!(
                        (!route.tripped.load(Ordering::SeqCst))
                            .then(|| route.ramp.next_start(st.step).map(format_time))
                            .flatten()
                    );
                    c["guard"] = self.guard_view(route, &st);
                }
            }
        }
    }

    fn state_name(&self, st: &State) -> &'static str {
        match (&st.trip, self.settings.enabled, st.held) {
            (Some(_), _, _) => "tripped",
            (None, false, _) => "off",
            (None, true, true) => "holding",
            (None, true, false) => "watching",
        }
    }

    /// Each ramped color's guard state, step and share in force, in short: what the status
    /// page shows of a peer.
    pub fn guard_states(&self) -> Value {
        self.routes
            .iter()
            .map(|r| {
                let st = r.state();
                json!({
                    "color": r.canary(),
                    "route": r.prefix,
                    "state": self.state_name(&st),
                    "step": st.step,
                    "steps": r.ramp.steps.len(),
                    "share": r.share(st.step),
                })
            })
            .collect()
    }

    fn guard_view(&self, route: &Ramped, st: &State) -> Value {
        let state = self.state_name(st);
        let figures = |f: Figures| {
            json!({
                "requests": f.requests,
                "errors": f.errors,
                "error_rate": f.error_rate(),
                "p90_ms": f.p90.map(round_ms),
            })
        };
        let mut window = serde_json::Map::new();
        for (k, name) in route.names.iter().enumerate() {
            window.insert(name.to_string(), figures(st.window.figures(k)));
        }
        json!({
            "state": state,
            "rule": st.trip.as_ref().map(|t| t.rule),
            "reason": st.trip.as_ref().map(|t| t.reason.clone()),
            "peer": st.trip.as_ref().and_then(|t| t.peer.clone()),
            "consecutive_errors": st.consecutive,
            "window": window,
        })
    }

    /// Sets the shares in force and the ramp and guard figures of every ramped route.
    pub fn update_metrics(&self, m: &DeliveryMetrics) {
        for route in &self.routes {
            let st = route.state();
            let shares = route.shares(st.step);
            for (k, &color) in route.names.iter().enumerate() {
                let labels = ColorLabels { color };
                m.share.get_or_create(&labels).set(shares[k] / 100.0);
                let f = st.window.figures(k);
                m.window_requests
                    .get_or_create(&labels)
                    .set(f.requests as i64);
                m.window_errors.get_or_create(&labels).set(f.errors as i64);
                m.window_p90
                    .get_or_create(&labels)
                    .set(f.p90.map_or(0.0, |d| d.as_secs_f64()));
            }
            let labels = ColorLabels {
                color: route.canary(),
            };
            m.step.get_or_create(&labels).set(st.step as i64);
            m.held.get_or_create(&labels).set(i64::from(st.held));
            m.tripped
                .get_or_create(&labels)
                .set(i64::from(route.tripped.load(Ordering::SeqCst)));
        }
    }
}

/// Milliseconds to the microsecond, for logs and JSON.
fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Outcomes for Delivery {
    fn outcome(&self, color: usize, status: u16, headers: Duration) {
        self.record_at(color, status, headers, || {
            (SystemTime::now(), self.now_ms())
        });
    }
}

/// Moves the ramps on time: wakes at each step's start, and every TICK in between.
pub async fn run(delivery: Arc<Delivery>) {
    loop {
        delivery.tick();
        let now = SystemTime::now();
        let wait = delivery
            .next_step_at(now)
            .and_then(|t| t.duration_since(now).ok())
            .map_or(TICK, |d| d.min(TICK))
            .max(Duration::from_millis(1));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "2026-12-01T20:00:00Z";
    const MS: Duration = Duration::from_millis(1);

    fn delivery(extra: &[(&str, &str)], now: SystemTime) -> Delivery {
        let mut vars = vec![
            ("BLUE", "http://127.0.0.1:1"),
            ("GREEN", "http://127.0.0.1:2"),
            ("GREEN_RAMP", "10,50,100"),
            ("GREEN_RAMP_INTERVAL", "10s"),
            ("GREEN_RAMP_START", START),
            ("GUARD_MIN_REQUESTS", "20"),
        ];
        vars.extend_from_slice(extra);
        let config = Config::from_vars(vars).unwrap();
        Delivery::new(&config, &["blue", "green"], now)
    }

    fn start() -> SystemTime {
        crate::ramp::parse_rfc3339(START).unwrap()
    }

    fn step(d: &Delivery) -> usize {
        d.routes[0].state().step
    }

    fn green_weight(d: &Delivery) -> u32 {
        d.routes[0].balancer.read().weight(1)
    }

    /// `n` outcomes of `color` (0 blue, 1 green) at `now`.
    fn traffic(
        d: &Delivery,
        color: usize,
        n: u64,
        status: u16,
        latency: Duration,
        now: SystemTime,
    ) {
        let ms = now
            .duration_since(start())
            .map_or(0, |d| d.as_millis() as u64);
        for _ in 0..n {
            d.record_at(color, status, latency, || (now, ms));
        }
    }

    #[test]
    fn a_healthy_canary_follows_its_schedule() {
        let t0 = start();
        let d = delivery(&[], t0 - Duration::from_secs(1));
        assert_eq!((step(&d), green_weight(&d)), (0, 0));
        d.tick_at(t0, 0);
        assert_eq!((step(&d), green_weight(&d)), (1, 1000));
        traffic(&d, 1, 20, 200, MS, t0);
        traffic(&d, 0, 180, 200, MS, t0);
        d.tick_at(t0 + Duration::from_secs(10), 10_000);
        assert_eq!((step(&d), green_weight(&d)), (2, 5000));
        traffic(&d, 1, 20, 200, MS, t0 + Duration::from_secs(10));
        d.tick_at(t0 + Duration::from_secs(20), 20_000);
        assert_eq!((step(&d), green_weight(&d)), (3, 10_000));
        assert_eq!(d.next_step_at(t0 + Duration::from_secs(20)), None);
    }

    #[test]
    fn no_evidence_no_promotion() {
        let t0 = start();
        let d = delivery(&[], t0);
        traffic(&d, 1, 19, 200, MS, t0);
        // 404s are healthy answers too, but a 499 (the client left) is no evidence at all.
        traffic(&d, 1, 5, 499, MS, t0);
        d.tick_at(t0 + Duration::from_secs(25), 25_000);
        assert_eq!(step(&d), 1, "held at step 1");
        assert!(d.routes[0].state().held);
        // The 20th healthy canary request releases the hold at once, one step at a time.
        traffic(&d, 1, 1, 404, MS, t0 + Duration::from_secs(25));
        assert_eq!(step(&d), 2);
        assert!(
            d.routes[0].state().held,
            "step 3 is due but step 2 has no evidence yet"
        );
        traffic(&d, 1, 20, 200, MS, t0 + Duration::from_secs(26));
        assert_eq!((step(&d), green_weight(&d)), (3, 10_000));
        assert!(!d.routes[0].state().held);
    }

    #[test]
    fn without_a_guard_the_schedule_alone_decides() {
        let t0 = start();
        let d = delivery(&[("GUARD", "off")], t0);
        traffic(&d, 1, 100, 500, MS, t0);
        d.tick_at(t0 + Duration::from_secs(25), 25_000);
        assert_eq!((step(&d), green_weight(&d)), (3, 10_000));
        assert!(!d.routes[0].tripped.load(Ordering::SeqCst));
    }

    #[test]
    fn consecutive_failures_trip_at_once_and_the_trip_is_latched() {
        let t0 = start();
        let d = delivery(&[], t0);
        traffic(&d, 1, 4, 502, MS, t0);
        traffic(&d, 1, 1, 200, MS, t0);
        traffic(&d, 1, 4, 503, MS, t0);
        assert_eq!(green_weight(&d), 1000, "4 in a row, twice: not yet");
        traffic(&d, 1, 1, 500, MS, t0);
        assert_eq!(green_weight(&d), 0);
        let view = d.peer_view();
        assert_eq!(view["tripped"][0]["color"], "green");
        // Latched: healthy traffic and later steps change nothing.
        traffic(&d, 1, 500, 200, MS, t0);
        d.tick_at(t0 + Duration::from_secs(100), 100_000);
        assert_eq!(green_weight(&d), 0);
        assert_eq!(d.next_step_at(t0), None);
    }

    #[test]
    fn a_high_error_rate_trips_with_enough_requests() {
        let t0 = start();
        let d = delivery(&[("GUARD_CONSECUTIVE_ERRORS", "1000")], t0);
        traffic(&d, 0, 1000, 200, MS, t0);
        // One failure in three: never 5 in a row, but 33% against 0%.
        for i in 0..19 {
            traffic(&d, 1, 1, if i % 3 == 0 { 500 } else { 200 }, MS, t0);
        }
        assert_eq!(
            green_weight(&d),
            1000,
            "19 canary requests are too few to judge"
        );
        traffic(&d, 1, 1, 200, MS, t0);
        assert_eq!(green_weight(&d), 0, "the 20th is enough");
        let st = d.routes[0].state();
        let trip = st.trip.as_ref().unwrap();
        assert_eq!(trip.rule, "error rate");
        assert_eq!((trip.canary.requests, trip.canary.errors), (20, 7));
    }

    #[test]
    fn a_slow_canary_trips_and_client_errors_do_not() {
        let t0 = start();
        let d = delivery(&[], t0);
        traffic(&d, 0, 100, 200, 20 * MS, t0);
        traffic(&d, 1, 100, 404, 20 * MS, t0);
        traffic(&d, 1, 100, 400, 25 * MS, t0);
        assert_eq!(green_weight(&d), 1000, "4xx are the client's");
        traffic(&d, 1, 400, 200, 60 * MS, t0);
        let st = d.routes[0].state();
        assert_eq!(st.trip.as_ref().map(|t| t.rule), Some("latency"));
    }

    #[test]
    fn at_100_percent_the_canary_is_judged_against_the_last_stable_figures() {
        let t0 = start();
        let d = delivery(&[("GUARD_CONSECUTIVE_ERRORS", "1000")], t0);
        // Stable colors fail 4% of the time; the canary 2%: healthy.
        for i in 0..100 {
            traffic(&d, 0, 1, if i % 33 == 0 { 500 } else { 200 }, MS, t0);
        }
        // Each tick notes the stable figures while there are enough.
        d.tick_at(t0, 0);
        // A minute later the stable colors have left the window (100%), the canary has not.
        let later = t0 + Duration::from_secs(61);
        for i in 0..100 {
            traffic(&d, 1, 1, if i % 50 == 49 { 500 } else { 200 }, MS, later);
        }
        assert_eq!(d.routes[0].state().window.stable().requests, 0);
        let trip = d.routes[0].state().trip.clone();
        assert!(trip.is_none(), "2% against the last 4%: {trip:?}");
        // 10% is more than a point above the last baseline.
        for i in 0..100 {
            traffic(&d, 1, 1, if i % 5 == 0 { 500 } else { 200 }, MS, later);
        }
        assert!(d.routes[0].tripped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_peer_trip_is_learnt_once() {
        let t0 = start();
        let d = delivery(&[], t0);
        d.trip_from_peer("blue", "not ramped", "10.0.0.2:9901");
        assert_eq!(green_weight(&d), 1000);
        d.trip_from_peer("green", "5 failures in a row", "10.0.0.2:9901");
        assert_eq!(green_weight(&d), 0);
        d.trip_from_peer("green", "again", "10.0.0.3:9901");
        let view = d.peer_view();
        assert_eq!(view["tripped"][0]["reason"], "5 failures in a row");
    }

    #[test]
    fn config_view_follows_the_step() {
        let t0 = start();
        let config = Config::from_vars([
            ("BLUE", "http://127.0.0.1:1"),
            ("GREEN", "http://127.0.0.1:2"),
            ("GREEN_RAMP", "10,50,100"),
            ("GREEN_RAMP_INTERVAL", "10s"),
            ("GREEN_RAMP_START", START),
            ("GUARD", "off"),
        ])
        .unwrap();
        let d = Delivery::new(&config, &["blue", "green"], t0);
        d.tick_at(t0 + Duration::from_secs(10), 10_000);
        let mut view = config.view();
        d.patch_view(&mut view, t0 + Duration::from_secs(10));
        let colors = &view["routes"][0]["colors"];
        assert_eq!(colors[0]["share"], 50.0);
        assert_eq!(colors[1]["share"], 50.0);
        assert_eq!(colors[1]["ramp"]["step"], 2);
        assert_eq!(colors[1]["ramp"]["next_step_at"], "2026-12-01T20:00:20Z");
        assert_eq!(colors[1]["guard"]["state"], "off");
    }
}
