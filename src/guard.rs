//! The canary guard: judges a ramped color against the stable colors of its route from this
//! replica's own traffic, over a sliding window, and says when it must trip.
//!
//! It only counts and judges; what a trip does (the share drops to 0, latched) belongs to
//! [`crate::delivery`]. Time is passed in as milliseconds of a monotonic clock, so the window
//! is tested without waiting.

use std::collections::BTreeMap;
use std::time::Duration;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Kayenta will not judge on fewer than 50 samples per group.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// Percentage points above the stable colors' error rate: Flagger's example asks for 99% success.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 1.0;
pub const DEFAULT_MAX_LATENCY_RATIO: f64 = 2.0;
/// Envoy's outlier detection ejects after 5 consecutive 5xx (`consecutive_5xx`).
pub const DEFAULT_CONSECUTIVE_ERRORS: u32 = 5;
/// The percentile of the time to response headers that is compared.
pub const PERCENTILE: f64 = 0.9;
/// Latencies below this count as this much when compared: on a fast app, a ratio of two
/// sub-millisecond figures is noise, not a slower canary.
pub const LATENCY_FLOOR: Duration = Duration::from_millis(5);
/// The window moves in this many slots.
const SLOTS: u64 = 10;

/// The variables of the guard, all global (the guard watches every ramped color).
pub const VARIABLES: &[&str] = &[
    "GUARD",
    "GUARD_WINDOW",
    "GUARD_MIN_REQUESTS",
    "GUARD_MAX_ERROR_RATE",
    "GUARD_MAX_LATENCY_RATIO",
    "GUARD_CONSECUTIVE_ERRORS",
    "PEERS",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `GUARD=off` leaves a ramp to its schedule alone.
    pub enabled: bool,
    pub window: Duration,
    pub min_requests: u64,
    /// In percentage points.
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
    pub consecutive_errors: u32,
    /// The name (and port, default the admin port) that resolves to every replica's admin
    /// listener, e.g. `tasks.proxy`.
    pub peers: Option<(String, Option<u16>)>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            enabled: true,
            window: DEFAULT_WINDOW,
            min_requests: DEFAULT_MIN_REQUESTS,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            max_latency_ratio: DEFAULT_MAX_LATENCY_RATIO,
            consecutive_errors: DEFAULT_CONSECUTIVE_ERRORS,
            peers: None,
        }
    }
}

/// The parsed numbers are never NaN (such values are rejected), so equality is total.
impl Eq for Settings {}

impl Settings {
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled,
            "window": humantime::format_duration(self.window).to_string(),
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "max_latency_ratio": self.max_latency_ratio,
            "consecutive_errors": self.consecutive_errors,
            "peers": self.peers.as_ref().map(|(host, port)| match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            }),
        })
    }

    /// Reads the guard variables; `problem(var, value, expected)` is told of each invalid one.
    pub fn parse(
        env: &BTreeMap<String, String>,
        problem: &mut dyn FnMut(&str, &str, &str),
    ) -> Settings {
        let mut s = Settings::default();
        let get = |name: &str| env.get(name).map(|v| (v.as_str(), v.trim()));
        if let Some((raw, v)) = get("GUARD") {
            match v.to_ascii_lowercase().as_str() {
                "on" => s.enabled = true,
                "off" => s.enabled = false,
                _ => problem("GUARD", raw, "expected on or off"),
            }
        }
        if let Some((raw, v)) = get("GUARD_WINDOW") {
            match humantime::parse_duration(v) {
                Ok(d) if d >= Duration::from_secs(1) => s.window = d,
                _ => problem(
                    "GUARD_WINDOW",
                    raw,
                    "expected a duration of at least 1s, e.g. 60s",
                ),
            }
        }
        if let Some((raw, v)) = get("GUARD_MIN_REQUESTS") {
            match v.parse::<u64>() {
                Ok(n) if n >= 1 => s.min_requests = n,
                _ => problem(
                    "GUARD_MIN_REQUESTS",
                    raw,
                    "expected a whole number of requests of at least 1, e.g. 50",
                ),
            }
        }
        if let Some((raw, v)) = get("GUARD_MAX_ERROR_RATE") {
            match v.trim_end_matches('%').trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => s.max_error_rate = p,
                _ => problem(
                    "GUARD_MAX_ERROR_RATE",
                    raw,
                    "expected percentage points from 0 to 100 above the stable colors' error rate, e.g. 1 or 0.5",
                ),
            }
        }
        if let Some((raw, v)) = get("GUARD_MAX_LATENCY_RATIO") {
            match v.parse::<f64>() {
                Ok(r) if r >= 1.0 && r.is_finite() => s.max_latency_ratio = r,
                _ => problem(
                    "GUARD_MAX_LATENCY_RATIO",
                    raw,
                    "expected a ratio of at least 1 to the stable colors' p90 latency, e.g. 2 or 1.5",
                ),
            }
        }
        if let Some((raw, v)) = get("GUARD_CONSECUTIVE_ERRORS") {
            match v.parse::<u32>() {
                Ok(n) if n >= 1 => s.consecutive_errors = n,
                _ => problem(
                    "GUARD_CONSECUTIVE_ERRORS",
                    raw,
                    "expected a whole number of failures in a row of at least 1, e.g. 5",
                ),
            }
        }
        if let Some((raw, v)) = get("PEERS") {
            match peers(v) {
                Some(p) => s.peers = Some(p),
                None => problem(
                    "PEERS",
                    raw,
                    "expected the name of every proxy replica, e.g. tasks.proxy (optionally :port, default the ADMIN_LISTEN port)",
                ),
            }
        }
        s
    }

    /// One line for `check` and the startup log.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "guard off".into();
        }
        format!(
            "guard on: window {}, at least {} canary requests, error rate at most +{} points, p90 latency at most {}x, {} consecutive errors{}",
            humantime::format_duration(self.window),
            self.min_requests,
            self.max_error_rate,
            self.max_latency_ratio,
            self.consecutive_errors,
            match &self.peers {
                Some((host, Some(port))) => format!(", peers {host}:{port}"),
                Some((host, None)) => format!(", peers {host}"),
                None => String::new(),
            }
        )
    }
}

fn peers(v: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)),
        None => (v, None),
    };
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| (host.to_ascii_lowercase(), port))
}

/// Latency buckets: upper bounds from 100 µs growing by a quarter each, up to about two
/// minutes; a percentile is reported as its bucket's upper bound (within 25%).
const BUCKETS: usize = 64;
const FIRST_BOUND_US: f64 = 100.0;
const GROWTH: f64 = 1.25;

fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    ((us / FIRST_BOUND_US).ln() / GROWTH.ln())
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

fn bucket_bound(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_US * GROWTH.powi(i as i32) / 1e6)
}

#[derive(Clone)]
struct Counts {
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    fn sub(&mut self, other: &Counts) {
        self.requests -= other.requests;
        self.errors -= other.errors;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a -= b;
        }
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.requests == 0 {
            return None;
        }
        let rank = (p * self.requests as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(BUCKETS - 1))
    }

    fn figures(&self) -> Figures {
        Figures {
            requests: self.requests,
            errors: self.errors,
            p90: self.percentile(PERCENTILE),
        }
    }
}

/// What the window holds for one color, or for the stable colors together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// The 90th percentile of the time to response headers; `None` without requests.
    pub p90: Option<Duration>,
}

impl Figures {
    /// Errors over requests, 0 to 1 (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The last `window` of outcomes of a route's colors (position 0 is the canary), in SLOTS
/// slots: an outcome leaves the window between `window` and `window` + one slot after it came.
pub struct Window {
    slot_ms: u64,
    /// The slot `current` is, counted from the clock's zero.
    current: u64,
    /// `slots[slot % SLOTS][color]`.
    slots: Vec<Vec<Counts>>,
    totals: Vec<Counts>,
}

impl Window {
    pub fn new(window: Duration, colors: usize) -> Window {
        Window {
            slot_ms: (window.as_millis() as u64 / SLOTS).max(1),
            current: 0,
            slots: vec![vec![Counts::default(); colors]; SLOTS as usize],
            totals: vec![Counts::default(); colors],
        }
    }

    /// Moves the window to `now_ms`, dropping what fell out of it.
    pub fn advance(&mut self, now_ms: u64) {
        let slot = now_ms / self.slot_ms;
        if slot <= self.current {
            return;
        }
        let passed = (slot - self.current).min(SLOTS);
        for s in 1..=passed {
            let i = ((self.current + s) % SLOTS) as usize;
            for (total, counts) in self.totals.iter_mut().zip(&mut self.slots[i]) {
                total.sub(counts);
                *counts = Counts::default();
            }
        }
        self.current = slot;
    }

    pub fn record(&mut self, now_ms: u64, color: usize, failed: bool, headers: Duration) {
        self.advance(now_ms);
        let i = (self.current % SLOTS) as usize;
        let b = bucket_of(headers);
        for counts in [&mut self.slots[i][color], &mut self.totals[color]] {
            counts.requests += 1;
            counts.errors += u64::from(failed);
            counts.latency[b] += 1;
        }
    }

    pub fn figures(&self, color: usize) -> Figures {
        self.totals[color].figures()
    }

    /// Every color but the canary, together.
    pub fn stable(&self) -> Figures {
        let mut all = Counts::default();
        for c in &self.totals[1..] {
            all.add(c);
        }
        all.figures()
    }
}

/// Why the guard tripped, with the figures compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// `error rate`, `latency`, `consecutive errors`, or `peer`.
    pub rule: &'static str,
    pub reason: String,
    pub canary: Figures,
    pub stable: Figures,
    /// The peer this replica learnt the trip from; the reason is then the peer's.
    pub peer: Option<String>,
}

/// The window-based rules: with at least `min_requests` canary requests in the window, its
/// error rate against the stable colors', and its p90 latency against theirs.
pub fn judge(settings: &Settings, canary: Figures, stable: Figures) -> Option<Trip> {
    if canary.requests < settings.min_requests {
        return None;
    }
    // Without enough stable traffic to compare (the last step at 100%), a canary error rate
    // is compared with zero.
    let baseline = if stable.requests >= settings.min_requests {
        stable.error_rate()
    } else {
        0.0
    };
    let excess = (canary.error_rate() - baseline) * 100.0;
    // Rates of whole counts: exactly the limit is allowed, rounding error aside.
    if excess > settings.max_error_rate + 1e-9 {
        return Some(Trip {
            rule: "error rate",
            reason: format!(
                "error rate {:.1}% ({} of {} requests) against {:.1}% for the stable colors, more than {} points above",
                canary.error_rate() * 100.0,
                canary.errors,
                canary.requests,
                baseline * 100.0,
                settings.max_error_rate
            ),
            canary,
            stable,
            peer: None,
        });
    }
    if stable.requests >= settings.min_requests
        && let (Some(c), Some(s)) = (canary.p90, stable.p90)
    {
        let (cf, sf) = (c.max(LATENCY_FLOOR), s.max(LATENCY_FLOOR));
        if cf.as_secs_f64() > settings.max_latency_ratio * sf.as_secs_f64() {
            return Some(Trip {
                rule: "latency",
                reason: format!(
                    "p90 latency {:.1} ms against {:.1} ms for the stable colors, more than {}x",
                    c.as_secs_f64() * 1e3,
                    s.as_secs_f64() * 1e3,
                    settings.max_latency_ratio
                ),
                canary,
                stable,
                peer: None,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Vec::new();
        let s = Settings::parse(&env, &mut |var, _, _| problems.push(var.to_string()));
        (s, problems)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults_and_settings() {
        let (s, p) = parse(&[]);
        assert!(p.is_empty());
        assert_eq!(s, Settings::default());
        assert!(s.enabled);
        assert_eq!((s.min_requests, s.consecutive_errors), (50, 5));
        let (s, p) = parse(&[
            ("GUARD", "off"),
            ("GUARD_WINDOW", "10s"),
            ("GUARD_MIN_REQUESTS", "20"),
            ("GUARD_MAX_ERROR_RATE", "0.5%"),
            ("GUARD_MAX_LATENCY_RATIO", "1.5"),
            ("GUARD_CONSECUTIVE_ERRORS", "3"),
            ("PEERS", "tasks.proxy:9901"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert!(!s.enabled);
        assert_eq!(s.window, Duration::from_secs(10));
        assert_eq!(s.min_requests, 20);
        assert_eq!(s.max_error_rate, 0.5);
        assert_eq!(s.max_latency_ratio, 1.5);
        assert_eq!(s.consecutive_errors, 3);
        assert_eq!(s.peers, Some(("tasks.proxy".into(), Some(9901))));
        assert_eq!(
            parse(&[("PEERS", "tasks.proxy")]).0.peers,
            Some(("tasks.proxy".into(), None))
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            ("GUARD", "maybe"),
            ("GUARD_WINDOW", "500ms"),
            ("GUARD_WINDOW", "soon"),
            ("GUARD_MIN_REQUESTS", "0"),
            ("GUARD_MIN_REQUESTS", "many"),
            ("GUARD_MAX_ERROR_RATE", "101"),
            ("GUARD_MAX_ERROR_RATE", "-1"),
            ("GUARD_MAX_LATENCY_RATIO", "0.5"),
            ("GUARD_MAX_LATENCY_RATIO", "inf"),
            ("GUARD_CONSECUTIVE_ERRORS", "0"),
            ("PEERS", "http://tasks.proxy"),
            ("PEERS", "tasks.proxy:0"),
            ("PEERS", "a..b"),
        ] {
            assert_eq!(parse(&[(var, value)]).1, [var], "{var}={value}");
        }
    }

    #[test]
    fn latency_buckets_round_up_by_at_most_a_quarter() {
        for us in [50u64, 100, 101, 999, 1_000, 4_321, 60_000, 2_500_000] {
            let d = Duration::from_micros(us);
            let bound = bucket_bound(bucket_of(d));
            assert!(bound >= d.max(Duration::from_micros(100)) - Duration::from_nanos(1));
            assert!(bound.as_secs_f64() <= d.as_secs_f64().max(1e-4) * GROWTH * 1.0001);
        }
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn the_window_forgets_what_is_older_than_it() {
        let mut w = Window::new(Duration::from_secs(10), 2);
        for t in 0..100u64 {
            w.record(t * 10, 0, t % 10 == 0, 2 * MS);
        }
        assert_eq!(w.figures(0).requests, 100);
        assert_eq!(w.figures(0).errors, 10);
        assert_eq!(w.figures(1).requests, 0);
        // Still inside the window just before the first slot leaves it.
        w.advance(9_999);
        assert_eq!(w.figures(0).requests, 100);
        w.advance(10_000);
        assert_eq!(w.figures(0).requests, 0, "slot 0 (0-999 ms) left at 10 s");
        w.record(10_500, 1, true, MS);
        w.advance(1_000_000);
        assert_eq!(w.figures(1).requests, 0);
        // A clock that stands still or goes back does not move the window.
        w.record(5, 1, false, MS);
        assert_eq!(w.figures(1).requests, 1);
    }

    #[test]
    fn percentile_of_the_window() {
        let mut w = Window::new(Duration::from_secs(60), 3);
        for i in 0..100u64 {
            // 90 fast, 10 slow: p90 is the fast ones' bucket.
            let d = if i < 90 { 10 * MS } else { 500 * MS };
            w.record(0, 1, false, d);
            w.record(0, 2, false, 30 * MS);
        }
        let p90 = w.figures(1).p90.unwrap();
        assert!(p90 >= 10 * MS && p90 < 13 * MS, "{p90:?}");
        let stable = w.stable();
        assert_eq!(stable.requests, 200);
        assert!(stable.p90.unwrap() >= 30 * MS, "{stable:?}");
        assert_eq!(w.figures(0).p90, None);
    }

    fn figures(requests: u64, errors: u64, p90_ms: u64) -> Figures {
        Figures {
            requests,
            errors,
            p90: Some(Duration::from_millis(p90_ms)),
        }
    }

    #[test]
    fn judging() {
        let s = Settings::default();
        // Too few canary requests: no verdict, however bad.
        assert_eq!(judge(&s, figures(49, 49, 900), figures(5000, 0, 10)), None);
        // 1 point above is allowed, above 1 point trips.
        assert_eq!(judge(&s, figures(100, 2, 10), figures(1000, 10, 10)), None);
        let t = judge(&s, figures(100, 3, 10), figures(1000, 10, 10)).unwrap();
        assert_eq!(t.rule, "error rate");
        assert!(
            t.reason.contains("3.0% (3 of 100 requests) against 1.0%"),
            "{}",
            t.reason
        );
        // Without stable traffic the canary is compared with zero errors.
        assert!(judge(&s, figures(100, 2, 10), figures(3, 0, 10)).is_some());
        assert!(judge(&s, figures(100, 1, 10), figures(3, 0, 10)).is_none());
        // Latency: more than twice the stable p90 trips; twice does not.
        assert_eq!(judge(&s, figures(100, 0, 40), figures(1000, 0, 20)), None);
        let t = judge(&s, figures(100, 0, 61), figures(1000, 0, 20)).unwrap();
        assert_eq!(t.rule, "latency");
        // Sub-floor latencies are not compared as ratios.
        assert_eq!(judge(&s, figures(100, 0, 4), figures(1000, 0, 1)), None);
        // Without enough stable traffic, no latency verdict.
        assert_eq!(judge(&s, figures(100, 0, 900), figures(10, 0, 10)), None);
    }
}
