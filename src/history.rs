//! The last few minutes of each color, for the status page's charts: a ring buffer of points,
//! each the difference between two samples of the process's counters (requests/s, error rate,
//! p50/p90 latency) and the gauges at the time (endpoints, share).
//!
//! It is kept here, in the process, rather than in the browser, so that a page opened in the
//! middle of a canary shows the minutes before it was opened. Samples come with their time,
//! so every rule is tested without waiting; [`crate::status`] takes them.

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::metrics::{ColorTotals, DURATION_BUCKETS};

/// How often the counters are sampled.
pub const INTERVAL_MS: u64 = 2_000;
/// Points kept: five minutes at [`INTERVAL_MS`].
pub const CAPACITY: usize = 150;

/// One color between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorPoint {
    pub requests_per_second: f64,
    /// Answers of 500 and above over all answers, 0 to 1; `None` without requests.
    pub error_rate: Option<f64>,
    /// Seconds, interpolated within the duration histogram's buckets as Prometheus's
    /// `histogram_quantile` does, so the page and a Grafana panel agree.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub live: u64,
    pub ejected: u64,
    /// The share in force at the sample, 0 to 1.
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Milliseconds since the Unix epoch, at the end of the interval.
    pub at_ms: u64,
    /// Per color, in configuration order.
    pub colors: Vec<ColorPoint>,
}

/// A sample of one color: its counters so far and its share in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub totals: ColorTotals,
    pub share: f64,
}

pub struct History {
    points: VecDeque<Point>,
    capacity: usize,
    last: Option<(u64, Vec<Sample>)>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            points: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            last: None,
        }
    }

    /// Takes the counters of every color at `at_ms` (milliseconds since the Unix epoch). The
    /// first sample only sets the baseline; a clock that did not move adds no point.
    pub fn record(&mut self, at_ms: u64, samples: Vec<Sample>) {
        let Some((last_ms, last)) = self.last.take() else {
            self.last = Some((at_ms, samples));
            return;
        };
        if at_ms <= last_ms || last.len() != samples.len() {
            // Keep the older baseline when the clock went back: the next sample spans both.
            let keep = if at_ms <= last_ms && last.len() == samples.len() {
                (last_ms, last)
            } else {
                (at_ms, samples)
            };
            self.last = Some(keep);
            return;
        }
        let seconds = (at_ms - last_ms) as f64 / 1e3;
        let colors = last
            .iter()
            .zip(&samples)
            .map(|(before, now)| point(before, now, seconds))
            .collect();
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(Point { at_ms, colors });
        self.last = Some((at_ms, samples));
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The series as the status page draws them: one array per figure and color, times apart.
    pub fn view(&self, names: &[&str]) -> Value {
        let round = |v: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (v * f).round() / f
        };
        let ms = |v: Option<f64>| v.map(|s| round(s * 1e3, 3));
        let colors: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let series = |f: &dyn Fn(&ColorPoint) -> Value| -> Vec<Value> {
                    self.points
                        .iter()
                        .map(|p| p.colors.get(i).map_or(Value::Null, f))
                        .collect()
                };
                json!({
                    "name": name,
                    "requests_per_second": series(&|c| json!(round(c.requests_per_second, 2))),
                    "error_rate": series(&|c| json!(c.error_rate.map(|r| round(r, 5)))),
                    "p50_ms": series(&|c| json!(ms(c.p50))),
                    "p90_ms": series(&|c| json!(ms(c.p90))),
                    "live": series(&|c| json!(c.live)),
                    "ejected": series(&|c| json!(c.ejected)),
                    "share": series(&|c| json!(round(c.share, 4))),
                })
            })
            .collect();
        json!({
            "interval_ms": INTERVAL_MS,
            "times": self.points.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            "colors": colors,
        })
    }
}

fn point(before: &Sample, now: &Sample, seconds: f64) -> ColorPoint {
    let requests = now.totals.requests.saturating_sub(before.totals.requests);
    let errors = now.totals.errors.saturating_sub(before.totals.errors);
    let buckets: Vec<u64> = now
        .totals
        .latency
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.totals.latency.get(i).copied().unwrap_or(0)))
        .collect();
    ColorPoint {
        requests_per_second: requests as f64 / seconds,
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p50: quantile(0.5, &buckets),
        p90: quantile(0.9, &buckets),
        live: now.totals.live,
        ejected: now.totals.ejected,
        share: now.share,
    }
}

/// The `q` quantile of observations counted per [`DURATION_BUCKETS`] bucket (the last count
/// above every bound), interpolated linearly within its bucket from the bucket below's bound
/// (0 for the first), as `histogram_quantile` does; above the last bound it is that bound.
pub fn quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        let below = seen;
        seen += n;
        if n > 0 && seen as f64 >= rank {
            let Some(&upper) = DURATION_BUCKETS.get(i) else {
                return DURATION_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
    }
    DURATION_BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64, latency: &[(usize, u64)], share: f64) -> Sample {
        let mut buckets = vec![0; DURATION_BUCKETS.len() + 1];
        for &(i, n) in latency {
            buckets[i] = n;
        }
        Sample {
            totals: ColorTotals {
                requests,
                errors,
                latency: buckets,
                live: 2,
                ejected: 1,
            },
            share,
        }
    }

    #[test]
    fn the_first_sample_is_a_baseline_and_later_ones_are_rates() {
        let mut h = History::new(10);
        h.record(1_000, vec![sample(100, 0, &[(3, 100)], 0.1)]);
        assert!(h.is_empty());
        // 2 s later: 50 more requests, 5 of them failures, all in bucket 3 (5-10 ms).
        h.record(3_000, vec![sample(150, 5, &[(3, 150)], 0.25)]);
        assert_eq!(h.len(), 1);
        let p = h.points().next().unwrap();
        assert_eq!(p.at_ms, 3_000);
        let c = &p.colors[0];
        assert_eq!(c.requests_per_second, 25.0);
        assert_eq!(c.error_rate, Some(0.1));
        // Half of the 50 within 5-10 ms: 7.5 ms; 90%: 9.5 ms.
        assert!((c.p50.unwrap() - 0.0075).abs() < 1e-12, "{c:?}");
        assert!((c.p90.unwrap() - 0.0095).abs() < 1e-12, "{c:?}");
        assert_eq!((c.live, c.ejected, c.share), (2, 1, 0.25));
        // Nothing new: no rate, no error rate, no latency.
        h.record(5_000, vec![sample(150, 5, &[(3, 150)], 0.25)]);
        let c = &h.points().nth(1).unwrap().colors[0];
        assert_eq!(
            (c.requests_per_second, c.error_rate, c.p50),
            (0.0, None, None)
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_points() {
        let mut h = History::new(3);
        for k in 0..10u64 {
            h.record(k * 2_000, vec![sample(k * 10, 0, &[], 1.0)]);
        }
        let times: Vec<u64> = h.points().map(|p| p.at_ms).collect();
        assert_eq!(times, [14_000, 16_000, 18_000]);
        let view = h.view(&["blue"]);
        assert_eq!(view["times"], json!([14_000, 16_000, 18_000]));
        assert_eq!(
            view["colors"][0]["requests_per_second"],
            json!([5.0, 5.0, 5.0])
        );
        assert_eq!(view["colors"][0]["name"], "blue");
    }

    #[test]
    fn a_clock_that_stands_still_or_goes_back_adds_nothing() {
        let mut h = History::new(10);
        h.record(10_000, vec![sample(0, 0, &[], 1.0)]);
        h.record(10_000, vec![sample(10, 0, &[], 1.0)]);
        h.record(9_000, vec![sample(20, 0, &[], 1.0)]);
        assert!(h.is_empty());
        // The next sample spans from the first one.
        h.record(12_000, vec![sample(40, 0, &[], 1.0)]);
        assert_eq!(
            h.points().next().unwrap().colors[0].requests_per_second,
            20.0
        );
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let n = DURATION_BUCKETS.len() + 1;
        let mut b = vec![0u64; n];
        assert_eq!(quantile(0.5, &b), None);
        // All in the first bucket (0-1 ms): interpolated from 0.
        b[0] = 10;
        assert!((quantile(0.5, &b).unwrap() - 0.0005).abs() < 1e-12);
        // Above every bound: the last bound.
        let mut b = vec![0u64; n];
        b[n - 1] = 3;
        assert_eq!(quantile(0.9, &b), Some(60.0));
        // 90 fast (1-2.5 ms), 10 slow (0.5-1 s): p50 fast, p90 at the fast bucket's top.
        let mut b = vec![0u64; n];
        b[1] = 90;
        b[9] = 10;
        let p50 = quantile(0.5, &b).unwrap();
        assert!(p50 > 0.001 && p50 < 0.0025, "{p50}");
        assert!((quantile(0.9, &b).unwrap() - 0.0025).abs() < 1e-12);
        assert!(quantile(0.95, &b).unwrap() > 0.5);
    }
}
